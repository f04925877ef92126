"""Lossless coding of float tensors: sign and exponent entropy-coded, mantissa bits verbatim.

Biases, norms and the surviving values of a sparse tensor are stored exactly. Their exponents take
few distinct values and their signs are often skewed (variances are positive), while mantissa bits
are close to random. So each value's (exponent, sign) pair becomes one symbol, coded with counts
learned as coding proceeds (``AdaptiveCounts``: no table), in blocks that double in size so decoding
takes O(log n) vectorised steps; the mantissas follow as a packed bit field. Every bit pattern
(±0, subnormals, ±inf, NaN payloads) comes back exactly.
"""

from __future__ import annotations

import constriction
import numpy as np
import torch

from netpress.codec.entropy import AdaptiveCounts, ByteReader, ByteWriter, decode_words, encode_words, growing_blocks
from netpress.errors import FormatError

# dtype → (exponent bits, mantissa bits) of IEEE-style floats.
FLOAT_FIELDS: dict[torch.dtype, tuple[int, int]] = {
    torch.float16: (5, 10),
    torch.bfloat16: (8, 7),
    torch.float32: (8, 23),
    torch.float64: (11, 52),
}
_INTS = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_CHUNK = 1 << 16  # values packed at a time: a multiple of 8, so chunks join at byte boundaries


def _bit_patterns(values: torch.Tensor) -> np.ndarray:
    bits = values.detach().contiguous().cpu().reshape(-1).view(_INTS[values.element_size()]).numpy()
    return bits.astype(np.uint64) & np.uint64((1 << 8 * values.element_size()) - 1)


def _pack_bits(values: np.ndarray, width: int) -> bytes:
    """The low ``width`` bits of each value, most significant first, as one bit string."""
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    return b"".join(
        np.packbits(((values[i : i + _CHUNK, None] >> shifts) & np.uint64(1)).astype(np.uint8)).tobytes()
        for i in range(0, values.size, _CHUNK)
    )


def _unpack_bits(data: bytes, count: int, width: int) -> np.ndarray:
    weights = np.uint64(1) << np.arange(width - 1, -1, -1, dtype=np.uint64)
    out = np.empty(count, dtype=np.uint64)
    chunk_bytes = _CHUNK * width // 8
    for k, i in enumerate(range(0, count, _CHUNK)):
        n = min(_CHUNK, count - i)
        bits = np.unpackbits(np.frombuffer(data[k * chunk_bytes : k * chunk_bytes + (n * width + 7) // 8], dtype=np.uint8))
        out[i : i + n] = (bits[: n * width].reshape(n, width).astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return out


def encode_floats(values: torch.Tensor) -> bytes:
    """The stream of a float tensor (dtype in ``FLOAT_FIELDS``), to be decoded by ``decode_floats``."""
    exponent_bits, mantissa_bits = FLOAT_FIELDS[values.dtype]
    bits = _bit_patterns(values)
    mantissa = bits & np.uint64((1 << mantissa_bits) - 1)
    high = (bits >> np.uint64(mantissa_bits)).astype(np.int64)  # sign bit above the exponent
    symbols = 2 * (high & ((1 << exponent_bits) - 1)) + (high >> exponent_bits)
    first = int(symbols.min()) if symbols.size else 0
    symbols = (symbols - first).astype(np.int32)
    alphabet = int(symbols.max()) + 1 if symbols.size else 1
    encoder = constriction.stream.queue.RangeEncoder()
    model = AdaptiveCounts(alphabet)
    for block in growing_blocks(symbols.size, 1):
        if alphabet > 1:
            encoder.encode(symbols[block], constriction.stream.model.Categorical(model.order0(), perfect=False))
        model.count(symbols[block])
    out = ByteWriter()
    out.varint(first)
    out.varint(alphabet)
    encode_words(out, encoder)
    out.parts.append(_pack_bits(mantissa, mantissa_bits))
    return out.getvalue()


def decode_floats(data: bytes, dtype: torch.dtype, numel: int, what: str) -> torch.Tensor:
    """Inverse of ``encode_floats``: a flat tensor of ``numel`` values, or a ``FormatError``."""
    exponent_bits, mantissa_bits = FLOAT_FIELDS[dtype]
    reader = ByteReader(data, what)
    symbol_limit = 1 << (exponent_bits + 1)
    first = reader.varint(limit=symbol_limit - 1)
    alphabet = reader.varint(limit=symbol_limit - first)
    if alphabet < 1:
        raise FormatError(f"{what}: empty exponent alphabet")
    decoder = constriction.stream.queue.RangeDecoder(decode_words(reader))
    symbols = np.zeros(numel, dtype=np.int64)
    model = AdaptiveCounts(alphabet)
    for block in growing_blocks(numel, 1):
        if alphabet > 1:
            model_block = constriction.stream.model.Categorical(model.order0(), perfect=False)
            symbols[block] = decoder.decode(model_block, block.stop - block.start)
        model.count(symbols[block])
    packed = reader.rest()
    if len(packed) != (numel * mantissa_bits + 7) // 8:
        raise FormatError(f"{what}: {len(packed)} bytes of mantissas, expected {(numel * mantissa_bits + 7) // 8}")
    mantissa = _unpack_bits(packed, numel, mantissa_bits)
    symbols += first
    high = ((symbols & 1) << exponent_bits) | (symbols >> 1)
    bits = (high.astype(np.uint64) << np.uint64(mantissa_bits)) | mantissa
    width = torch.empty(0, dtype=dtype).element_size()
    signed = bits.astype(np.dtype(f"u{width}")).view(np.dtype(f"i{width}"))
    return torch.from_numpy(signed.copy()).view(dtype)
