"""A second reader of `.press` files (format version 4), written from docs/format.md alone.

It exists to keep the spec honest: tests/test_format_spec.py decodes files written by
``netpress.codec.to_bytes`` with this reader and with ``netpress.codec.from_bytes`` and requires
bit-identical tensors, so any drift between docs/format.md and the code fails CI. For that to mean
anything it must stay independent: do not import ``netpress.codec`` (or anything from netpress)
here, and when it disagrees with the codec, fix whichever of docs/format.md and the code is wrong,
not this file to match the code. Section numbers (§) refer to docs/format.md.

It only decodes; the range coder and its probability models come from constriction, which the
spec names as part of the format (§5).
"""

import json
import lzma
import math
import struct
import zlib
from typing import NamedTuple

import constriction
import numpy as np
import torch

Categorical = constriction.stream.model.Categorical
RangeDecoder = constriction.stream.queue.RangeDecoder

LAYOUTS = ("symbols", "runs", "rank1", "context")  # §4.1 - §4.4
LEVEL_FORMS = ("table", "uniform", "uniform16", "deadzone")  # §3.1
VALUE_CODINGS = ("plain", "planes")  # §3.3, §3.4

# §4.3: E[t] = 2^(t/8), hard-coded binary64 constants
E8 = [
    float.fromhex(h)
    for h in (
        "0x1.0000000000000p+0",
        "0x1.172b83c7d517bp+0",
        "0x1.306fe0a31b715p+0",
        "0x1.4bfdad5362a27p+0",
        "0x1.6a09e667f3bcdp+0",
        "0x1.8ace5422aa0dbp+0",
        "0x1.ae89f995ad3adp+0",
        "0x1.d5818dcfba487p+0",
    )
]
FLOAT_BITS = {"float16": (5, 10), "bfloat16": (8, 7), "float32": (8, 23), "float64": (11, 52)}  # §3.4: (E, F)
ITEMSIZE = {"float32": 4, "float64": 8, "float16": 2, "bfloat16": 2, "int32": 4, "int64": 8, "uint8": 1, "bool": 1}
LITTLE_ENDIAN = {"float32": "<f4", "float64": "<f8", "float16": "<f2", "bfloat16": "<i2", "int32": "<i4", "int64": "<i8"}
UNSIGNED = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}


class SpecError(Exception):
    """The bytes break a rule of docs/format.md."""


class Layout(NamedTuple):
    """One decoded symbol array, so a test can check which layouts and options its files reached."""

    tensor: str
    layout: str  # one of LAYOUTS, or "planes"
    details: dict


class Decoded(NamedTuple):
    tensors: dict[str, torch.Tensor]
    manifest: dict
    layouts: list[Layout]


def P(q: int) -> float:
    """2^(q/8), exactly as §4.3 fixes it (not with pow/exp2)."""
    q = int(q)
    return math.ldexp(E8[q % 8], q // 8)


# ---------------------------------------------------------------- bytes


class Reader:
    """A cursor over ``data[pos:end]`` that refuses to read past ``end``."""

    def __init__(self, data: bytes, pos: int = 0, end: int | None = None):
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def take(self, k: int) -> bytes:
        if k < 0 or self.pos + k > self.end:
            raise SpecError("stream cut short")
        b = self.data[self.pos : self.pos + k]
        self.pos += k
        return b

    def u8(self) -> int:
        return self.take(1)[0]

    def i8s(self, k: int) -> np.ndarray:
        return np.frombuffer(self.take(k), dtype=np.int8).astype(np.int64)

    def f32s(self, k: int) -> np.ndarray:
        return np.frombuffer(self.take(4 * k), dtype="<f4").astype(np.float32)

    def f64(self) -> float:
        return struct.unpack("<d", self.take(8))[0]

    def varint(self) -> int:
        """Unsigned LEB128 (§4): at most 10 bytes, at most 2^40."""
        v = 0
        for i in range(10):
            b = self.u8()
            v |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if v > 2**40:
                    raise SpecError("varint too large")
                return v
        raise SpecError("varint too long")

    def rest(self) -> bytes:
        return self.take(self.end - self.pos)

    def words(self) -> np.ndarray:
        """The rest as little-endian uint32 range-coder words (§5)."""
        b = self.rest()
        if len(b) % 4:
            raise SpecError("word part not a multiple of 4")
        return np.frombuffer(b, dtype="<u4").astype(np.uint32)


class BitReader:
    """Bits most significant first, a whole byte at a time (§4.4's prior)."""

    def __init__(self, r: Reader):
        self.r = r
        self.cur = 0
        self.left = 0

    def bit(self) -> int:
        if self.left == 0:
            self.cur = self.r.u8()
            self.left = 8
        self.left -= 1
        return (self.cur >> self.left) & 1

    def bits(self, m: int) -> int:
        v = 0
        for _ in range(m):
            v = (v << 1) | self.bit()
        return v


def plain_to_tensor(raw: bytes, dtype: str, shape: list[int]) -> torch.Tensor:
    """§3.3: row-major little-endian elements, no header."""
    if len(raw) != math.prod(shape) * ITEMSIZE[dtype]:
        raise SpecError("plain length mismatch")
    if dtype in ("uint8", "bool"):
        a = np.frombuffer(raw, dtype=np.uint8)
        if dtype == "bool":
            if np.any(a > 1):
                raise SpecError("bool byte not 0/1")
            a = a.astype(np.bool_)
        t = torch.from_numpy(a.copy())
    else:
        a = np.frombuffer(raw, dtype=LITTLE_ENDIAN[dtype]).astype(np.dtype(LITTLE_ENDIAN[dtype]).newbyteorder("="))
        t = torch.from_numpy(a.copy())
        if dtype == "bfloat16":  # the upper 16 bits of binary32
            t = t.view(torch.bfloat16)
    return t.reshape(shape)


# ---------------------------------------------------------------- layouts (§4)


def decode_sequences(words: np.ndarray, seqs: list[tuple[list[int], int]]) -> list[np.ndarray]:
    """§5: (counts, length) sequences from one coder, in order; a single-symbol table codes nothing."""
    dec = RangeDecoder(words)
    out = []
    for counts, length in seqs:
        present = np.flatnonzero(counts)
        if len(present) <= 1:
            out.append(np.full(length, present[0] if len(present) else 0, dtype=np.int64))
        else:
            model = Categorical(np.asarray(counts, dtype=np.float64), perfect=False)
            out.append(np.asarray(dec.decode(model, length), dtype=np.int64))
    return out


def layout_symbols(r: Reader, n: int, A: int) -> np.ndarray:
    """§4.1: exact counts, then one sequence."""
    counts = [r.varint() for _ in range(A)]
    if any(c > n for c in counts) or sum(counts) != n:
        raise SpecError("symbols counts inconsistent")
    (s,) = decode_sequences(r.words(), [(counts, n)])
    if not np.array_equal(np.bincount(s, minlength=A), counts):
        raise SpecError("decoded symbols do not match counts")
    return s


def layout_runs(r: Reader, n: int, A: int, z: int | None, trace: dict) -> np.ndarray:
    """§4.2: zero-run lengths capped at M, then the non-zero symbols, in one coder."""
    if z is None:
        raise SpecError("runs without a zero symbol")
    M = r.varint()
    if not 1 <= M <= 4096:
        raise SpecError("bad M")
    R = r.varint()
    if R > n + n // M + 1:
        raise SpecError("bad R")
    run_counts = [r.varint() for _ in range(M + 1)]
    nz_counts = [r.varint() for _ in range(A)]
    nnz = sum(run_counts[:M])
    if sum(run_counts) != R or nnz != sum(nz_counts) or nz_counts[z] != 0:
        raise SpecError("runs counts inconsistent")
    trace["M"] = M
    runs, nonzeros = decode_sequences(r.words(), [(run_counts, R), (nz_counts, nnz)])
    if np.any(nonzeros == z):
        raise SpecError("runs decoded the zero symbol as a non-zero one")
    out = np.full(n, z, dtype=np.int64)
    p = k = 0
    for s in runs.tolist():
        if s == M:
            p += M
            continue
        p += s
        if p >= n:
            raise SpecError("run position past n")
        out[p] = nonzeros[k]
        k += 1
        p += 1
    return out


def layout_rank1(r: Reader, n: int, A: int, zero: int | None, shape: list[int], trace: dict) -> np.ndarray:
    """§4.3: offsets from a centre, each against a Gaussian/Laplace of rank-1 scale."""
    if A < 3:
        raise SpecError("unknown coding")
    rows = shape[0] if shape else 0
    if rows < 1 or n % rows:
        raise SpecError("rank1 needs shape[0] >= 1 dividing n")
    cols = n // rows
    c = zero if zero is not None else A // 2
    norm, family, k = r.f64(), r.u8(), r.u8()
    qr, qc = r.i8s(rows), r.i8s(cols)
    if not (math.isfinite(norm) and norm > 0) or family not in (0, 1) or k not in (6, 8, 10, 12, 14):
        raise SpecError("invalid rank-1 model parameters")
    trace.update(family=family, k=k)
    Pr = np.array([P(q) for q in qr])
    Pc = np.array([P(q) for q in qc])
    # binary64, rounded after the product, the division and the multiplier, in that order
    sigma = np.maximum(Pr[:, None] * Pc[None, :] / norm * (k / 8), 0.05).reshape(-1)
    family_model = constriction.stream.model.QuantizedGaussian if family == 0 else constriction.stream.model.QuantizedLaplace
    offsets = RangeDecoder(r.words()).decode(family_model(-c, A - 1 - c), np.zeros(n), np.ascontiguousarray(sigma))
    return np.asarray(offsets, dtype=np.int64) + c


def growing_blocks(total: int, first: int) -> list[int]:
    """§4.4's refresh schedule: blocks of 1 while at most `first` counted, then ⌈counted/first⌉."""
    blocks = []
    k = 0
    while k < total:
        b = min(1 if k <= first else -(-k // first), total - k)
        blocks.append(b)
        k += b
    return blocks


def read_prior(r: Reader, A: int) -> np.ndarray:
    """§4.4: A zigzagged level differences, Exp-Golomb of the stored order, padded to a byte."""
    order = r.u8()
    if order > 3:
        raise SpecError("prior order above 3")
    bits = BitReader(r)
    levels = []
    prev = 0
    for _ in range(A):
        zeros = 0
        while bits.bit() == 0:
            zeros += 1
            if zeros > 16:
                raise SpecError("prior code too long")
        w = (1 << (zeros + order)) | bits.bits(zeros + order)  # the 1 that ended the zeros leads w
        u = w - (1 << order)
        prev += u // 2 if u % 2 == 0 else -(u + 1) // 2
        if not 0 <= prev <= 127:
            raise SpecError("prior level out of range")
        levels.append(prev)
    # BitReader consumed whole bytes, so r now stands at `words`
    if not any(levels):
        raise SpecError("all prior levels are zero")
    return np.array(levels)


def layout_context(r: Reader, n: int, A: int, shape: list[int], trace: dict) -> np.ndarray:
    """§4.4: column by column, against counts learnt per left-neighbour (and period) context."""
    rows = shape[0] if shape else 0
    if rows < 1 or n % rows or A > 64:
        raise SpecError("context needs shape[0] >= 1 dividing n and A <= 64")
    cols = n // rows
    p = r.varint()
    if not (p == 0 or 2 <= p <= cols // 2):
        raise SpecError("bad period")
    prior_levels = read_prior(r, A)
    trace["period"] = p
    Pv = [P(4 * (L - 1)) if L > 0 else 0.0 for L in prior_levels]
    S = math.fsum(Pv)  # correctly rounded; absent symbols add 0.0
    pi = np.array([v / S for v in Pv])
    beta = 64.0
    X = A + 1  # contexts: the symbols, and A = "start of row"
    C = np.zeros((X, A))
    D = np.zeros((X * X, A)) if p else None

    def tables() -> tuple[np.ndarray, np.ndarray | None]:
        T = (C + beta * pi) / (C.sum(axis=1, keepdims=True) + beta)
        U = (D + beta * np.repeat(T, X, axis=0)) / (D.sum(axis=1, keepdims=True) + beta) if p else None  # row y: T[y // X]
        return T, U

    def contexts(out: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray | None]:
        x = out[:, j - 1] if j > 0 else np.full(rows, A)
        if not p:
            return x, None
        b = out[:, j - p] if j >= p else np.full(rows, A)
        return x, x * X + b

    dec = RangeDecoder(r.words())
    model = Categorical(perfect=False)
    out = np.zeros((rows, cols), dtype=np.int64)
    T, U = tables()
    j = 0
    for block in growing_blocks(cols, 8):
        for jj in range(j, j + block):  # one call per column: column jj's contexts need column jj - 1
            x, y = contexts(out, jj)
            probs = U[y] if p else T[x]
            out[:, jj] = dec.decode(model, np.ascontiguousarray(probs))
            if np.any(prior_levels[out[:, jj]] == 0):
                raise SpecError("decoded a symbol that the context prior marks absent")
        for jj in range(j, j + block):
            x, y = contexts(out, jj)
            np.add.at(C, (x, out[:, jj]), 1.0)
            if p:
                np.add.at(D, (y, out[:, jj]), 1.0)
        j += block
        T, U = tables()
    return out.reshape(-1)


def decode_layout(r: Reader, rec: dict, n: int, A: int, zero: int | None, layouts: list[Layout]) -> np.ndarray:
    """Dispatch on the record's `coding`; `rank1` and `context` exist for `codes` only (§4)."""
    coding = rec["coding"]
    trace: dict = {"kind": rec["kind"], "A": A}
    if coding == "symbols":
        s = layout_symbols(r, n, A)
    elif coding == "runs":
        s = layout_runs(r, n, A, zero, trace)
    elif coding == "rank1" and rec["kind"] == "codes":
        s = layout_rank1(r, n, A, zero, rec["shape"], trace)
    elif coding == "context" and rec["kind"] == "codes":
        s = layout_context(r, n, A, rec["shape"], trace)
    else:
        raise SpecError(f"unknown coding {coding!r}")
    layouts.append(Layout(rec["name"], coding, trace))
    return s


# ---------------------------------------------------------------- float planes (§3.4)


def planes_blocks(n: int) -> list[int]:
    """Blocks of 1, 1, 2, 4, ...: each as large as all before it, the last cut at n."""
    blocks = []
    k = 0
    while k < n:
        b = min(max(k, 1), n - k)
        blocks.append(b)
        k += b
    return blocks


def decode_planes(r: Reader, dtype: str, n: int) -> np.ndarray:
    """Sign+exponent symbols range-coded order-0 adaptively, mantissas verbatim; returns bit patterns."""
    if dtype not in FLOAT_BITS:
        raise SpecError("planes on a non-float dtype")
    E, F = FLOAT_BITS[dtype]
    first = r.varint()
    if first > 2 ** (E + 1) - 1:
        raise SpecError("planes first out of range")
    A = r.varint()
    if not 1 <= A <= 2 ** (E + 1) - first:
        raise SpecError("planes A out of range")
    W = r.varint()
    words = np.frombuffer(r.take(4 * W), dtype="<u4").astype(np.uint32)
    sym = np.zeros(n, dtype=np.int64)
    if A > 1:
        dec = RangeDecoder(words)
        counts = np.zeros(A)
        pos = 0
        for b in planes_blocks(n):
            probs = (counts + 0.5) / (counts.sum() + 0.5 * A)
            sym[pos : pos + b] = dec.decode(Categorical(probs, perfect=False), b)
            counts += np.bincount(sym[pos : pos + b], minlength=A)
            pos += b
    mantissa_bytes = r.rest()
    if len(mantissa_bytes) != (n * F + 7) // 8:
        raise SpecError("wrong number of mantissa bytes")
    bits = np.unpackbits(np.frombuffer(mantissa_bytes, dtype=np.uint8))[: n * F].reshape(n, F).astype(np.uint64)
    mantissa = bits @ (np.uint64(1) << np.arange(F - 1, -1, -1, dtype=np.uint64))
    v = (sym + first).astype(np.uint64)  # 2 * exponent + sign
    return ((v & np.uint64(1)) << np.uint64(E + F)) | ((v >> np.uint64(1)) << np.uint64(F)) | mantissa


def decode_values(r: Reader, name: str, coding: str, dtype: str, shape: list[int], layouts: list[Layout]) -> torch.Tensor:
    """§3.3 / §3.4: the values of a `raw` tensor or of a `sparse` tensor's survivors."""
    if dtype not in ITEMSIZE:
        raise SpecError(f"unsupported dtype {dtype!r}")
    if coding == "plain":
        return plain_to_tensor(r.rest(), dtype, shape)
    if coding == "planes":
        bits = decode_planes(r, dtype, math.prod(shape))
        layouts.append(Layout(name, "planes", {"dtype": dtype}))
        return plain_to_tensor(bits.astype(UNSIGNED[ITEMSIZE[dtype]]).tobytes(), dtype, shape)
    raise SpecError("unknown value coding")


# ---------------------------------------------------------------- streams (§3)


def read_levels(r: Reader, rec: dict) -> np.ndarray:
    """§3.1: the level table, rebuilt in float32 from its stored form; shape (R, L)."""
    ls, zero, form = rec["levels_shape"], rec["zero"], rec["levels_form"]
    if len(ls) not in (1, 2) or any(v <= 0 for v in ls) or ls[-1] > 65536:
        raise SpecError("bad levels_shape")
    if len(ls) == 2:
        C = rec["shape"][0] if rec["shape"] else 0
        k, n = (ls[0] // C, math.prod(rec["shape"][1:])) if C > 0 else (0, 0)
        if C <= 0 or ls[0] % C or not (k == 1 or (k <= n and k * n < 2**62)):
            raise SpecError("levels_shape G is not shape[0] times a run count in 1 .. weights per channel")
    R, L = (1, ls[0]) if len(ls) == 1 else ls
    if zero is not None and not 0 <= zero < L:
        raise SpecError("zero out of range")
    if form == "table":
        levels = r.f32s(R * L).reshape(R, L)
    elif form in ("uniform", "uniform16") and zero is not None:
        if form == "uniform16" and len(ls) != 2:
            raise SpecError("uniform16 needs a 2-D level table")
        step = r.f32s(R) if form == "uniform" else np.frombuffer(r.take(2 * R), "<f2").astype(np.float32)
        k = (np.arange(L) - zero).astype(np.float32)
        levels = k[None, :] * step[:, None]
    elif form == "deadzone" and zero is not None:
        first, step = r.f32s(2 * R).reshape(R, 2).T
        d = np.arange(L) - zero
        m = (np.abs(d) - 1).astype(np.float32)
        with np.errstate(all="ignore"):
            levels = (m[None, :] * step[:, None] + first[:, None]) * np.sign(d).astype(np.float32)
        levels[:, zero] = 0.0  # +0.0, set rather than computed
    else:
        raise SpecError("unknown level table form")
    assert levels.dtype == np.float32  # every operation above rounds to float32
    if not np.all(np.isfinite(levels)):
        raise SpecError("levels not finite")
    if zero is not None and not np.all(levels[:, zero] == 0.0):
        raise SpecError("zero level is not 0")
    return levels


def decode_codes(rec: dict, stream: bytes, layouts: list[Layout]) -> torch.Tensor:
    """§3.1: levels, then symbols; dequantised per tensor, per output channel or per group."""
    r = Reader(stream)
    levels = read_levels(r, rec)
    R, L = levels.shape
    n = math.prod(rec["shape"])
    s = decode_layout(r, rec, n, L, rec["zero"], layouts)
    if len(s) != n or (n and (s.min() < 0 or s.max() >= L)):
        raise SpecError("symbols out of range")
    if R == 1:
        W = levels[0][s]
    else:  # weight j of channel c uses table c·k + ⌊j·k / n⌋
        C = rec["shape"][0]
        k, per = R // C, n // C
        table = np.arange(C)[:, None] * k + (np.arange(per) * k) // max(per, 1)
        W = levels[table.reshape(-1), s]
    return torch.from_numpy(np.ascontiguousarray(W)).reshape(rec["shape"])


def decode_sparse(rec: dict, stream: bytes, layouts: list[Layout]) -> torch.Tensor:
    """§3.2: the coded keep-mask, then the survivors in row-major order."""
    shape, nnz = rec["shape"], rec["nnz"]
    n = math.prod(shape)
    if not 0 <= nnz <= n:
        raise SpecError("nnz out of range")
    r = Reader(stream)
    k = r.varint()
    if r.pos + k > len(stream):
        raise SpecError("mask cut short")
    mask = decode_layout(Reader(stream, r.pos, r.pos + k), rec, n, 2, 0, layouts)
    r.pos += k
    if len(mask) != n or int(mask.sum()) != nnz:
        raise SpecError("mask does not hold nnz ones")
    values = decode_values(r, rec["name"], rec["values_coding"], rec["dtype"], [nnz], layouts)
    out = torch.zeros(n, dtype=values.dtype)
    out[torch.from_numpy(np.flatnonzero(mask))] = values
    return out.reshape(shape)


# ---------------------------------------------------------------- container (§1, §2)


def read_container(data: bytes) -> tuple[dict, bytes]:
    """§1-§2: the safetensors wrapper, the checked and inflated manifest, and the payload bytes."""
    if len(data) < 8:
        raise SpecError("too short")
    (N,) = struct.unpack("<Q", data[:8])
    if N > len(data) - 8:
        raise SpecError("header length past the end")
    header = json.loads(data[8 : 8 + N].decode("utf-8"))
    meta = header.get("__metadata__", {})
    if meta.get("format") != "netpress":
        raise SpecError("not a .press file")
    if meta.get("version") != "4":
        raise SpecError(f"version {meta.get('version')!r}")
    if set(header) != {"__metadata__", "netpress.manifest", "netpress.payload"}:
        raise SpecError("unexpected tensor names")
    base = 8 + N
    parts = {}
    for key in ("netpress.manifest", "netpress.payload"):
        h = header[key]
        b, e = h["data_offsets"]
        if h["dtype"] != "U8" or not 0 <= b <= e or base + e > len(data) or h["shape"] != [e - b]:
            raise SpecError("damaged or truncated")
        parts[key] = data[base + b : base + e]
    compressed = parts["netpress.manifest"]
    if zlib.crc32(compressed) != int(meta["manifest_crc32"]):
        raise SpecError("manifest crc mismatch")
    inflate = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}])
    text = inflate.decompress(compressed, max_length=64 << 20)
    if not inflate.eof:
        raise SpecError("manifest truncated or over 64 MiB")
    manifest = json.loads(text.decode("utf-8"))
    if manifest.get("version") != 4:
        raise SpecError("manifest version")
    return manifest, parts["netpress.payload"]


def decode_bytes(data: bytes) -> Decoded:
    """Decode a whole `.press` file; raise SpecError on anything docs/format.md rules out."""
    manifest, payload = read_container(data)
    tensors: dict[str, torch.Tensor] = {}
    layouts: list[Layout] = []
    offset = 0
    for rec in manifest["tensors"]:
        name, length = rec["name"], rec["length"]
        if name in tensors:
            raise SpecError(f"duplicate tensor {name}")
        if offset + length > len(payload):
            raise SpecError(f"{name}: stream past the payload")
        stream = payload[offset : offset + length]  # streams lie back to back, no offsets stored (§2)
        offset += length
        if zlib.crc32(stream) != rec["crc32"]:
            raise SpecError(f"{name}: crc mismatch")
        try:
            if rec["kind"] == "codes":
                tensors[name] = decode_codes(rec, stream, layouts)
            elif rec["kind"] == "sparse":
                tensors[name] = decode_sparse(rec, stream, layouts)
            elif rec["kind"] == "raw":
                tensors[name] = decode_values(Reader(stream), name, rec["coding"], rec["dtype"], rec["shape"], layouts)
            else:
                raise SpecError("unknown kind")
        except SpecError as e:
            raise SpecError(f"{name}: {e}") from None
    if offset != len(payload):
        raise SpecError("stream lengths do not add up to the payload size")
    return Decoded(tensors, manifest, layouts)
