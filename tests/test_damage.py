"""A damaged .press file gives back the exact tensors or one FormatError: never another exception."""

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import netpress
from netpress import Budget, MagnitudePruning, UniformQuantization, codec
from netpress.cli import app
from netpress.codec import SparseValues
from netpress.codec.container import Packed
from netpress.errors import FormatError, NetpressError
from tests.archs import tiny_cnn

MODEL = tiny_cnn()
COMPRESSED = netpress.compress(MODEL, [MagnitudePruning(), UniformQuantization(4)], Budget(sparsity=0.5))
GOOD = codec.to_bytes(COMPRESSED)
EXPECTED = COMPRESSED.state_dict()


def outcome(data: bytes) -> None:
    """Assert the only two acceptable outcomes, read at once or lazily (coded tensors decoded when used)."""
    for lazily in (False, True):
        try:
            state = codec.from_bytes(data, lazily=lazily).state_dict()
        except FormatError:
            continue
        assert state.keys() == EXPECTED.keys()
        for key, value in EXPECTED.items():
            assert torch.equal(state[key], value), key


def split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + body


SLOW = settings(max_examples=250, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


@SLOW
@given(st.integers(0, len(GOOD) - 1))
def test_truncation(length):
    with pytest.raises(FormatError):
        codec.from_bytes(GOOD[:length])


@SLOW
@given(st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(1, 255)), min_size=1, max_size=4))
def test_byte_flips(flips):
    data = bytearray(GOOD)
    for pos, mask in flips:
        data[pos] ^= mask
    outcome(bytes(data))


HEADER, BODY = split(GOOD)
TENSOR_KEYS = [k for k in HEADER if k != "__metadata__"]


@settings(max_examples=150, deadline=2000)
@given(
    st.sampled_from(["format", "version", "manifest_crc32", "dtype", "shape", "data_offsets", "drop"]),
    st.sampled_from(TENSOR_KEYS),
    st.one_of(st.integers(-5, 10**6), st.text(max_size=8), st.lists(st.integers(0, 10**5), max_size=3)),
)
def test_header_edits(field, tensor, value):
    header = json.loads(json.dumps(HEADER))
    if field in ("format", "version", "manifest_crc32"):
        header["__metadata__"][field] = str(value)
    elif field == "drop":
        del header[tensor]
    else:
        header[tensor][field] = value
    outcome(join(header, BODY))


@pytest.mark.parametrize("tensor", TENSOR_KEYS)
@pytest.mark.parametrize("dtype, rows", [("F16", 1), ("BF16", 1), ("I8", 0), ("U8", 2)])
def test_a_header_that_types_the_bytes_otherwise_reads_the_same_bytes(tensor, dtype, rows):
    """The safetensors header is not under a CRC: a dtype or shape it gives the manifest or payload bytes (bfloat16,
    2-D) must not crash the reader or shift its offsets, which take the bytes as bytes."""
    header = json.loads(json.dumps(HEADER))
    start, end = header[tensor]["data_offsets"]
    size = end - start  # even, both tensors here
    header[tensor].update(dtype=dtype, shape={0: [size], 1: [size // 2], 2: [2, size // 2]}[rows])
    for lazily in (False, True):
        state = codec.from_bytes(join(header, BODY), lazily=lazily).state_dict()
        assert all(torch.equal(state[key], value) for key, value in EXPECTED.items())


def test_a_payload_the_header_calls_0_dimensional_is_read_as_its_one_byte():
    header, body = split(codec.to_bytes(netpress.compressed.CompressedModel({"t": torch.tensor([7], dtype=torch.uint8)})))
    header["netpress.payload"]["shape"] = []
    assert codec.from_bytes(join(header, body)).tensors["t"].tolist() == [7]


def test_named_failures(tmp_path):
    header = json.loads(json.dumps(HEADER))
    header["__metadata__"]["version"] = "99"
    with pytest.raises(FormatError, match="version"):
        codec.from_bytes(join(header, BODY))
    header["__metadata__"]["version"] = int(HEADER["__metadata__"]["version"])  # the right number, not a string
    with pytest.raises(FormatError, match=r"damaged .press header: its format version is \d+, not a string"):
        codec.from_bytes(join(header, BODY))
    with pytest.raises(FormatError, match="not a .press file"):
        codec.from_bytes(b"PK\x03\x04 a zip file, not safetensors")
    with pytest.raises(FormatError, match="no such file"):
        codec.read(tmp_path / "missing.press")
    data = bytearray(GOOD)
    data[-3] ^= 0xFF  # inside the last tensor's stream
    with pytest.raises(FormatError, match="tensor .* CRC32"):
        codec.from_bytes(bytes(data))


def test_a_tensor_missing_from_the_manifest_is_named(tmp_path):
    short = netpress.compressed.CompressedModel(
        {k: v for k, v in COMPRESSED.tensors.items() if k != "4.weight"}, COMPRESSED.source
    )
    path = tmp_path / "short.press"
    netpress.save(short, path)
    with pytest.raises(NetpressError, match="4.weight"):
        netpress.load(path, model=MODEL)


@pytest.mark.parametrize(
    "source, summary",
    [
        ({"earlier": [{"methods": "magnitude"}]}, {}),
        ({"earlier": [5]}, {}),
        ({"earlier": [{"methods": [{"nome": "x"}]}]}, {}),
        ({"earlier": "x"}, {}),
        ({}, {"methods": [1, "a", None]}),
    ],
)
def test_a_malformed_stage_history_is_refused_not_trusted(source, summary, tmp_path):
    """A file's history drives the order checks of a later run: a hand-edited one is a FormatError, never a traceback."""
    path = tmp_path / "h.press"
    codec.save(netpress.compressed.CompressedModel(COMPRESSED.tensors, {**COMPRESSED.source, **source}, summary), path)
    with pytest.raises(FormatError, match="record of earlier stages"):
        netpress.load_model(path, arch="tests.archs:tiny_cnn")


def test_a_tie_between_tensors_of_other_shapes_is_a_damaged_summary(tmp_path):
    path = tmp_path / "t.press"
    tied = {"tied": {"4.weight": "0.weight"}}
    codec.save(netpress.compressed.CompressedModel(COMPRESSED.tensors, COMPRESSED.source, tied), path)
    with pytest.raises(FormatError, match="ties 4.weight .* to 0.weight .* summary is damaged"):
        netpress.load(path, model=tiny_cnn())


def test_non_finite_weights_are_never_written_and_never_loaded(tmp_path):
    """netpress.save() refuses them; a file holding them (made another way) is refused when loaded."""
    tensors = {**COMPRESSED.tensors, "0.bias": torch.full((8,), float("nan"))}
    bad = netpress.compressed.CompressedModel(tensors, COMPRESSED.source, COMPRESSED.summary)
    path = tmp_path / "nan.press"
    with pytest.raises(NetpressError, match="0.bias holds NaN or infinite values"):
        netpress.save(bad, path)
    assert not path.exists()
    codec.save(bad, path)
    with pytest.raises(NetpressError, match="0.bias holds NaN or infinite values"):
        netpress.load(path, model=tiny_cnn())
    written = CliRunner().invoke(app, ["decompress", str(path), "-o", str(tmp_path / "nan.safetensors")])
    assert written.exit_code == 2 and "0.bias holds NaN" in written.output and not (tmp_path / "nan.safetensors").exists()


def test_a_file_read_lazily_decodes_each_tensor_when_used_and_refuses_non_finite_survivors(tmp_path):
    path = tmp_path / "m.press"
    netpress.save(COMPRESSED, path)
    lazy = codec.read(path, lazily=True)
    assert isinstance(lazy.tensors["0.weight"], Packed)
    assert all(torch.equal(lazy.state_dict()[k], v) for k, v in EXPECTED.items())
    survivors = SparseValues.from_tensor(torch.tensor([[0.0, float("nan")], [1.0, 0.0]]))
    layer = torch.nn.Linear(2, 2, bias=False)
    codec.save(netpress.compressed.CompressedModel({"weight": survivors}), path)  # made another way
    with pytest.raises(NetpressError, match="weight holds NaN or infinite values"):
        netpress.load(path, model=layer)
