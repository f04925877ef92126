"""The .press container: a safetensors file with two uint8 tensors and a small metadata header.

* ``netpress.manifest``: LZMA2-compressed JSON: source-model identity, one record per tensor (shape,
  dtype, coding, length/CRC32 of its stream in the payload) and the report summary.
* ``netpress.payload``: every tensor's stream, back to back in record order.
* safetensors metadata: ``format`` = "netpress", ``version``, and the manifest's CRC32.

docs/format.md specifies every byte. Reading checks the format, version and every CRC before
decoding, and validates every field it uses, so damage raises ``FormatError`` naming the problem.
"""

from __future__ import annotations

import json
import lzma
import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as safetensors_load

from netpress.codec.codes import Codes, Encoded, SparseValues, deadzone_grid, deadzone_params, is_table_count
from netpress.codec.entropy import ByteReader, ByteWriter, decode_symbols, encode_symbols
from netpress.codec.floats import FLOAT_FIELDS, decode_floats, encode_floats
from netpress.compressed import CompressedModel
from netpress.errors import FormatError, OutputError, file_problem, output_mode, output_target
from netpress.progress import progress_bar

FORMAT_NAME = "netpress"
FORMAT_VERSION = 4
MANIFEST_KEY, PAYLOAD_KEY = "netpress.manifest", "netpress.payload"
MAX_NUMEL = 1 << 34
MAX_MANIFEST_BYTES = 1 << 26  # a manifest that inflates past this is damage, not a model
# A raw LZMA2 stream (no .xz framing: the safetensors header already says what this is).
_MANIFEST_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 20}]

# Raw tensor dtypes and their names in the file.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


# Integer types of each item size: raw values travel as their bit patterns, so byte order is explicit
# for every dtype (numpy has no bfloat16).
_BIT_PATTERNS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _tensor_bytes(t: torch.Tensor) -> bytes:
    """A tensor's values as little-endian bytes, whatever the host's byte order."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bool:
        t = t.to(torch.uint8)
    bits = t.reshape(-1).view(_BIT_PATTERNS[t.element_size()]).numpy()
    return bits.astype(bits.dtype.newbyteorder("<")).tobytes() if t.numel() else b""


def _bytes_tensor(data: bytes, dtype: str, shape: list[int], what: str) -> torch.Tensor:
    torch_dtype = DTYPES[dtype]
    storage = torch.uint8 if torch_dtype == torch.bool else torch_dtype
    container = _BIT_PATTERNS[torch.empty(0, dtype=storage).element_size()]
    bits = np.dtype(torch.empty(0, dtype=container).numpy().dtype)
    numel = int(np.prod(shape, dtype=np.int64))
    if len(data) != numel * bits.itemsize:
        raise FormatError(f"{what}: {len(data)} bytes of {dtype}, expected {numel * bits.itemsize}")
    flat = np.frombuffer(data, dtype=bits.newbyteorder("<")).astype(bits)
    return torch.from_numpy(flat).view(storage).to(torch_dtype).reshape(shape).clone()


def _encode_values(values: torch.Tensor) -> tuple[str, bytes]:
    """Exact values as their bit patterns (``plain``) or, for floats when smaller, as ``planes``."""
    plain = _tensor_bytes(values)
    if values.dtype in FLOAT_FIELDS and values.numel():
        planes = encode_floats(values)
        if len(planes) < len(plain):
            return "planes", planes
    return "plain", plain


def _decode_values(data: bytes, coding: object, dtype: str, shape: list[int], what: str) -> torch.Tensor:
    if coding == "plain":
        return _bytes_tensor(data, dtype, shape, what)
    if coding == "planes" and DTYPES[dtype] in FLOAT_FIELDS:
        return decode_floats(data, DTYPES[dtype], int(np.prod(shape, dtype=np.int64)), what).reshape(shape)
    raise FormatError(f"{what}: unknown value coding {coding!r} for {dtype}")


def _uniform_grid(steps: np.ndarray, length: int, zero: int) -> np.ndarray:
    """Levels (k − zero) · step in float32, one row per step: how a uniform quantizer builds them."""
    grid = np.arange(length, dtype=np.float32) - np.float32(zero)
    return (grid[None, :] * steps.astype(np.float32)[:, None]).astype(np.float32)


def _uniform_steps(levels: np.ndarray, zero: int | None) -> np.ndarray | None:
    """The step of each level row when the table is exactly a uniform grid around the zero symbol, else None."""
    if zero is None or levels.shape[-1] < 2:
        return None
    table = levels.reshape(-1, levels.shape[-1])
    steps = table[:, zero + 1] if zero + 1 < table.shape[1] else -table[:, zero - 1]
    rebuilt = _uniform_grid(steps, table.shape[1], zero)
    return steps if np.array_equal(rebuilt.view(np.uint32), table.view(np.uint32)) else None  # bit for bit, ±0 too


def _exact_in_float16(steps: np.ndarray) -> bool:
    """Whether every step survives a float16 round trip bit for bit (a subnormal float16 widens exactly too)."""
    with np.errstate(over="ignore"):  # a step beyond float16's range becomes inf, and answers no
        half = steps.astype(np.float16)
    return bool(np.isfinite(half).all()) and np.array_equal(half.astype(np.float32).view(np.uint32), steps.view(np.uint32))


def _rows(shape) -> int:
    """Output channels: the row count of a tensor's 2-D view (0 for scalars)."""
    return int(shape[0]) if len(shape) else 0


def _encode(name: str, value: Encoded | torch.Tensor) -> tuple[dict, bytes]:
    """One tensor's record (without offsets) and its stream."""
    if isinstance(value, Codes):
        out = ByteWriter()
        levels = value.levels.numpy()
        steps = _uniform_steps(levels, value.zero)
        deadzone = deadzone_params(levels, value.zero) if steps is None else None
        if steps is not None and levels.ndim == 2 and _exact_in_float16(steps):
            form = "uniform16"  # group scales rounded to float16 by their quantizer: half the side bytes
            out.array(steps.astype(np.float16))
        elif steps is not None:
            form = "uniform"
            out.array(steps)
        elif deadzone is not None:
            form = "deadzone"
            out.array(np.stack(deadzone, axis=1).reshape(-1))
        else:
            form = "table"
            out.array(levels)
        symbols = value.symbols.numpy()
        mode, coded, side = encode_symbols(symbols, value.num_levels, value.zero, rows=_rows(value.shape))
        out.parts.append(coded)
        record = {
            "kind": "codes",
            "shape": list(value.shape),
            "levels_shape": list(value.levels.shape),
            "levels_form": form,
            "zero": value.zero,
            "coding": mode,
            "coded_bytes": len(coded),
            "side_bytes": side,
        }
        return record, out.getvalue()
    if isinstance(value, SparseValues):
        mask = value.mask.numpy().astype(np.int32)
        mode, coded, side = encode_symbols(mask, 2, 0)
        values_coding, values = _encode_values(value.values)
        out = ByteWriter()
        out.varint(len(coded))
        out.parts.append(coded)
        out.parts.append(values)
        record = {
            "kind": "sparse",
            "shape": list(value.shape),
            "dtype": _DTYPE_NAMES[value.values.dtype],
            "nnz": int(value.values.numel()),
            "coding": mode,
            "values_coding": values_coding,
            "coded_bytes": len(coded),
            "side_bytes": side,
        }
        return record, out.getvalue()
    if value.dtype not in _DTYPE_NAMES:
        raise FormatError(f"{name}: dtype {value.dtype} cannot be stored; supported: {', '.join(DTYPES)}")
    coding, data = _encode_values(value)
    return {"kind": "raw", "shape": list(value.shape), "dtype": _DTYPE_NAMES[value.dtype], "coding": coding}, data


@dataclass(frozen=True)
class Packed:
    """A coded tensor already turned into its stream: what compress() keeps of a layer it codes one layer at a
    time (a few bits per weight) instead of its codes (an int32 or a float per weight). ``dequantize()``
    decodes the stream, so it stands wherever ``Codes`` or ``SparseValues`` would."""

    record: dict  # the tensor's manifest record (its name, shape, coding; a file's also length and CRC)
    stream: bytes
    zeros: int | None = None  # None: not known until decoded (a file read lazily)

    @classmethod
    def of(cls, name: str, value: Encoded) -> Packed:
        record, stream = _encode(name, value)
        return cls({**record, "name": name}, stream, round(value.sparsity() * torch.Size(value.shape).numel()))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.record["shape"])

    def sparsity(self) -> float:
        if self.zeros is None:
            return self.unpack().sparsity()
        numel = torch.Size(self.shape).numel()
        return self.zeros / numel if numel else 0.0

    def __repr__(self) -> str:  # the stream's bytes would print a few per weight: its length says enough
        name, kind = self.record.get("name", "?"), self.record.get("kind")
        return f"Packed({name!r}, shape={self.shape}, kind={kind!r}, {len(self.stream):,} bytes)"

    def unpack(self) -> Encoded:
        """The codes or sparse values the stream holds; a ``FormatError`` naming the tensor if it is damaged."""
        return decode_stream(self.record, self.stream)

    def dequantize(self) -> torch.Tensor:
        return self.unpack().dequantize()


def _file_parts(compressed: CompressedModel, shown: bool = False) -> list[bytes]:
    """The bytes of a .press file as consecutive parts (header, manifest, one stream per tensor), so a file
    can be written without its payload held twice. ``shown``: with a progress bar (a file written, not sized)."""
    records, streams = [], []
    with progress_bar(shown) as progress:
        task = progress.add_task("coding tensors", total=len(compressed.tensors))
        for name, value in compressed.tensors.items():
            record, stream = (value.record, value.stream) if isinstance(value, Packed) else _encode(name, value)
            records.append({**record, "name": name, "length": len(stream), "crc32": zlib.crc32(stream)})
            streams.append(stream)
            progress.update(task, advance=1)
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "source": compressed.source,
        "summary": compressed.summary,
        "tensors": records,
    }
    manifest_json = json.dumps(manifest, separators=(",", ":")).encode()
    manifest_bytes = lzma.compress(manifest_json, format=lzma.FORMAT_RAW, filters=_MANIFEST_FILTERS)
    metadata = {"format": FORMAT_NAME, "version": str(FORMAT_VERSION), "manifest_crc32": str(zlib.crc32(manifest_bytes))}
    sizes = {MANIFEST_KEY: len(manifest_bytes), PAYLOAD_KEY: sum(len(s) for s in streams)}
    return [_safetensors_header(sizes, metadata), manifest_bytes, *streams]


def to_bytes(compressed: CompressedModel) -> bytes:
    """Serialise a compressed model to the bytes of a .press file."""
    return b"".join(_file_parts(compressed))


def _safetensors_header(sizes: dict[str, int], metadata: dict[str, str]) -> bytes:
    """The header of a safetensors file of 1-D uint8 tensors of ``sizes`` bytes, in that order, written here so
    that the same model always gives the same bytes: the safetensors writer orders the metadata by a randomly
    seeded hash."""
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    offset = 0
    for name, size in sizes.items():
        header[name] = {"dtype": "U8", "shape": [size], "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def save(compressed: CompressedModel, path: str | os.PathLike) -> int:
    """Write a .press file atomically; returns its size in bytes."""
    return write_file(path, _file_parts(compressed, shown=True))


def write_file(path: str | os.PathLike, data: bytes | list[bytes]) -> int:
    """Write ``data`` (or its parts, one after another) through a temp file and a rename, so a failed write
    never leaves half a file where ``path`` was; returns the size in bytes. A symbolic link is written through
    (its target gets the new file; the link stays), and a file replaced keeps its permissions. Callers check the
    path before their work (``errors.check_writable``); a failure here still becomes an ``OutputError``."""
    path = output_target(path)
    tmp = None
    try:  # a new hidden name of its own: ``<path>.tmp`` could be someone's file, or pass the length limit
        handle, name = tempfile.mkstemp(prefix=".netpress-", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(handle, "wb") as out:
            for part in [data] if isinstance(data, bytes) else data:
                out.write(part)
        os.chmod(tmp, output_mode(path))  # mkstemp makes it private
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path.stat().st_size


def _header_metadata(data: bytes) -> dict:
    if len(data) < 8:
        raise FormatError("not a .press file: too short to be a safetensors file")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8:
        raise FormatError("not a .press file, or truncated: the safetensors header runs past the end")
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"not a .press file: unreadable safetensors header ({exc})") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise FormatError("not a .press file: a safetensors file without netpress metadata")
    version = meta.get("version")
    if not isinstance(version, str):  # safetensors metadata holds strings only: a hand-edited or damaged header
        raise FormatError(f"damaged .press header: its format version is {version!r}, not a string such as '{FORMAT_VERSION}'")
    if version != str(FORMAT_VERSION):
        raise FormatError(f"format version {version!r}; this netpress reads version {FORMAT_VERSION}")
    return meta


def read_manifest(data: bytes) -> tuple[dict, memoryview]:
    """Validate the container and return (manifest, payload bytes): the payload a read-only view of the loaded
    bytes (``bytes(payload)`` copies it)."""
    meta = _header_metadata(data)
    try:
        tensors = safetensors_load(data)
    except Exception as exc:  # the safetensors parser's errors have no common public base class
        raise FormatError(f"damaged or truncated .press file: {exc}") from exc
    if set(tensors) != {MANIFEST_KEY, PAYLOAD_KEY}:
        raise FormatError(f"damaged .press file: expected tensors {MANIFEST_KEY}, {PAYLOAD_KEY}")
    manifest_bytes = _flat_bytes(tensors[MANIFEST_KEY]).tobytes()
    if str(zlib.crc32(manifest_bytes)) != meta.get("manifest_crc32"):
        raise FormatError("damaged .press file: the manifest fails its CRC32 check")
    try:
        inflater = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_MANIFEST_FILTERS)
        manifest_json = inflater.decompress(manifest_bytes, max_length=MAX_MANIFEST_BYTES)
        if not inflater.eof:
            raise FormatError("damaged .press file: the manifest is truncated or implausibly large")
        manifest = json.loads(manifest_json)
    except (lzma.LZMAError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"damaged .press file: unreadable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("version") != FORMAT_VERSION:
        raise FormatError("damaged .press file: the manifest's version disagrees with the header")
    if not isinstance(manifest.get("tensors"), list):
        raise FormatError("damaged .press file: the manifest lists no tensors")
    return manifest, _flat_bytes(tensors[PAYLOAD_KEY])


def _flat_bytes(tensor: torch.Tensor) -> memoryview:
    """A loaded safetensors tensor's bytes, read-only and without a copy, whatever dtype and shape a damaged header
    gives it (netpress writes 1-D uint8): the manifest's CRC and the streams' CRCs judge the bytes."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy()).toreadonly()


def _check_record(record: object, offset: int, payload_len: int) -> str:
    """Type-check the fields every record needs (its stream starting at ``offset``); returns the tensor name."""
    if not isinstance(record, dict) or not isinstance(record.get("name"), str):
        raise FormatError("damaged .press file: a tensor record has no name")
    name = record["name"]
    shape = record.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and 0 <= d for d in shape):
        raise FormatError(f"tensor {name}: invalid shape {shape!r}")
    if int(np.prod(shape, dtype=np.float64)) > MAX_NUMEL:
        raise FormatError(f"tensor {name}: shape {shape} is implausibly large")
    for key in ("length", "crc32"):
        if not isinstance(record.get(key), int) or record[key] < 0:
            raise FormatError(f"tensor {name}: invalid {key} {record.get(key)!r}")
    if offset + record["length"] > payload_len:
        raise FormatError(f"tensor {name}: its stream runs past the end of the payload (truncated file?)")
    if record.get("kind") not in ("codes", "sparse", "raw"):
        raise FormatError(f"tensor {name}: unknown kind {record.get('kind')!r}")
    if record["kind"] != "codes" and record.get("dtype") not in DTYPES:
        raise FormatError(f"tensor {name}: unsupported dtype {record.get('dtype')!r}")
    return name


def _decode(record: dict, stream: bytes | memoryview) -> Encoded | torch.Tensor:
    name, shape = record["name"], record["shape"]
    numel = int(np.prod(shape, dtype=np.int64))
    what = f"tensor {name}"
    if record["kind"] == "raw":
        return _decode_values(stream, record.get("coding"), record["dtype"], shape, what)
    reader = ByteReader(stream, what)
    if record["kind"] == "codes":
        levels_shape = record.get("levels_shape")
        zero = record.get("zero")
        if (
            not isinstance(levels_shape, list)
            or len(levels_shape) not in (1, 2)
            or not all(isinstance(d, int) and 0 < d for d in levels_shape)
            or (len(levels_shape) == 2 and not is_table_count(levels_shape[0], tuple(shape)))
            or levels_shape[-1] > 1 << 16
            or not (zero is None or (isinstance(zero, int) and 0 <= zero < levels_shape[-1]))
        ):
            raise FormatError(f"{what}: invalid level table description")
        if record.get("levels_form") == "uniform" and zero is not None:
            rows = levels_shape[0] if len(levels_shape) == 2 else 1
            table = _uniform_grid(reader.array("float32", rows), levels_shape[-1], zero)
        elif record.get("levels_form") == "uniform16" and zero is not None and len(levels_shape) == 2:
            steps = reader.array("float16", levels_shape[0]).astype(np.float32)
            table = _uniform_grid(steps, levels_shape[-1], zero)
        elif record.get("levels_form") == "deadzone" and zero is not None:
            rows = levels_shape[0] if len(levels_shape) == 2 else 1
            pairs = reader.array("float32", 2 * rows).reshape(rows, 2)
            table = deadzone_grid(pairs[:, 0], pairs[:, 1], levels_shape[-1], zero)
        elif record.get("levels_form") == "table":
            table = reader.array("float32", int(np.prod(levels_shape)))
        else:
            raise FormatError(f"{what}: unknown level table form {record.get('levels_form')!r}")
        levels = torch.from_numpy(table.copy()).reshape(levels_shape)
        symbols = decode_symbols(record.get("coding"), reader.rest(), numel, levels_shape[-1], zero, what, _rows(shape))
        return Codes(torch.from_numpy(symbols).reshape(shape), levels, zero)
    nnz = record.get("nnz")
    if not isinstance(nnz, int) or not 0 <= nnz <= numel:
        raise FormatError(f"{what}: invalid count of non-zeros {nnz!r}")
    coded_len = reader.varint(limit=len(stream))
    mask_bytes = reader.array("uint8", coded_len).tobytes()
    mask = decode_symbols(record.get("coding"), mask_bytes, numel, 2, 0, what)
    if int(np.count_nonzero(mask)) != nnz:
        raise FormatError(f"{what}: mask has {int(np.count_nonzero(mask))} survivors, the record says {nnz}")
    values = _decode_values(reader.rest(), record.get("values_coding"), record["dtype"], [nnz], what)
    return SparseValues(torch.from_numpy(mask.astype(bool)).reshape(shape), values)


def decode_stream(record: dict, stream: bytes | memoryview) -> Encoded | torch.Tensor:
    """``_decode``, with any error it did not foresee turned into a ``FormatError`` naming the tensor."""
    try:
        return _decode(record, stream)
    except FormatError:
        raise
    except Exception as exc:
        raise FormatError(f"tensor {record['name']}: cannot be decoded ({type(exc).__name__}: {exc})") from exc


def from_bytes(data: bytes, *, lazily: bool = False) -> CompressedModel:
    """Parse and fully verify a .press file's bytes.

    ``lazily``: check the container, the manifest and every stream's CRC, but keep coded tensors as their
    streams (``Packed``), decoded when used: a model built from the file then holds one layer's codes at a
    time, not the whole model's (damage still raises a ``FormatError`` naming the tensor, when it is decoded)."""
    manifest, payload = read_manifest(data)
    del data  # a caller's temporary (``read``) is freed here: the payload is its own copy
    tensors: dict[str, Encoded | torch.Tensor] = {}
    for record, stream in checked_streams(manifest, payload):
        packed = lazily and record["kind"] != "raw"
        tensors[record["name"]] = Packed(record, bytes(stream)) if packed else decode_stream(record, stream)
    source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
    summary = manifest.get("summary") if isinstance(manifest.get("summary"), dict) else {}
    return CompressedModel(tensors, source, summary)


def checked_streams(manifest: dict, payload: memoryview) -> Iterator[tuple[dict, memoryview]]:
    """Each tensor's record and stream (a view into ``payload``), once its record, place and CRC are checked; a
    ``FormatError`` for a damaged record or stream, a tensor listed twice, or payload bytes no tensor claims."""
    offset, seen = 0, set()
    for record in manifest["tensors"]:
        name = _check_record(record, offset, len(payload))
        stream = payload[offset : offset + record["length"]]
        offset += record["length"]
        if zlib.crc32(stream) != record["crc32"]:
            raise FormatError(f"tensor {name}: its stream fails its CRC32 check (damaged file)")
        if name in seen:
            raise FormatError(f"tensor {name}: listed twice in the manifest")
        seen.add(name)
        yield record, stream
    if offset != len(payload):
        raise FormatError(f"damaged .press file: {len(payload) - offset} payload bytes belong to no tensor")


def read(path: str | os.PathLike, *, lazily: bool = False) -> CompressedModel:
    """Read a .press file; a missing file or any damage raises a ``NetpressError`` (``lazily``: see ``from_bytes``)."""
    return from_bytes(read_file_bytes(path), lazily=lazily)


def read_file_bytes(path: str | os.PathLike) -> bytes:
    if not isinstance(path, str | os.PathLike):
        raise FormatError(f"a .press file is named by its path (a str or pathlib.Path), got {type(path).__name__}")
    if problem := file_problem(path):
        raise FormatError(problem)
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise FormatError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
