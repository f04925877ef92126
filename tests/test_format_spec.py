"""docs/format.md must describe what the codec writes: an independent reader, written from the spec
alone (tests/format_spec_reader.py), decodes files from ``netpress.codec.to_bytes`` bit for bit like
``netpress.codec.from_bytes``, over files that reach every stream kind, level form, layout and coding
the spec names."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import netpress
from netpress import Budget, MagnitudePruning, UniformQuantization, codec, zoo
from netpress.codec import Codes, SparseValues
from netpress.compressed import CompressedModel
from netpress.errors import FormatError
from tests.format_spec_reader import LAYOUTS, LEVEL_FORMS, VALUE_CODINGS, SpecError, decode_bytes

SPEC = (Path(__file__).parents[1] / "docs" / "format.md").read_text()
FLOATS = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32, "float64": torch.float64}


def spec_row_names(prefix: str) -> set[str]:
    """The quoted names in the manifest-table row of docs/format.md that starts with ``prefix``."""
    (row,) = [line for line in SPEC.splitlines() if line.startswith(prefix)]
    return set(re.findall(r'"(\w+)"', row))


def spec_dtypes() -> set[str]:
    """The dtypes of the element-encoding table in §3.3."""
    rows = SPEC.split("| `dtype` | element encoding |\n|---|---|\n")[1].split("\n\n")[0].splitlines()
    return {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}


def deadzone_table(first: np.ndarray, step: np.ndarray, L: int, zero: int) -> torch.Tensor:
    """A table the writer can store as "deadzone": built with §3.1's float32 arithmetic."""
    d = np.arange(L) - zero
    m = (np.abs(d) - 1).astype(np.float32)
    levels = (m[None, :] * step[:, None] + first[:, None]) * np.sign(d).astype(np.float32)
    levels[:, zero] = 0.0
    return torch.from_numpy(levels)


def synthetic_model() -> CompressedModel:
    """Small seeded tensors chosen so that together the writer picks every form, layout and coding."""
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)

    def symbols(high: int, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=g, dtype=torch.int32)

    t: dict = {}
    # raw (§3.3, §3.4): floats whose exponents repeat go to planes, two values stay plain
    for name, dtype in FLOATS.items():
        t[f"raw.{name}.planes"] = (torch.rand(300, generator=g) + 1).to(dtype)
        t[f"raw.{name}.plain"] = torch.randn(2, generator=g).to(dtype)
    special = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-45, -1e-40, 3.4e38]
    negative_nan = torch.tensor([-4194303], dtype=torch.int32).view(torch.float32)  # 0xffc00001, a NaN with payload
    t["raw.special.planes"] = torch.cat([torch.tensor(special * 30), negative_nan])
    t["raw.special.plain"] = torch.cat([torch.tensor(special[:5]), negative_nan])
    t["raw.special.fp16"] = torch.tensor(special * 30).half()
    t["raw.int32"] = torch.randint(-(2**31), 2**31 - 1, (13,), generator=g, dtype=torch.int32)
    t["raw.int64"] = torch.randint(-(2**62), 2**62, (5,), generator=g, dtype=torch.int64)
    t["raw.uint8"] = torch.randint(0, 256, (3, 4), generator=g, dtype=torch.uint8)
    t["raw.bool"] = torch.rand(17, generator=g) > 0.5
    t["raw.scalar"] = torch.tensor(3.25)
    t["raw.empty"] = torch.zeros(3, 0, 2)

    # sparse (§3.2): scattered masks code as symbols, clustered ones as runs
    def sparse(shape: tuple[int, ...], keep: float, dtype: torch.dtype) -> SparseValues:
        mask = torch.from_numpy(rng.random(shape) < keep)
        return SparseValues(mask, torch.randn(int(mask.sum()), generator=g).to(dtype))

    for name, dtype in FLOATS.items():
        t[f"sparse.{name}"] = sparse((30, 20), 0.2, dtype)
    clustered = np.zeros(5000, dtype=bool)
    for start in rng.integers(0, 5000, 5):
        clustered[start : start + 40] = True
    t["sparse.clustered"] = SparseValues(torch.from_numpy(clustered), torch.randn(int(clustered.sum()), generator=g))
    t["sparse.two"] = sparse((40,), 0.05, torch.float32)
    t["sparse.none"] = SparseValues(torch.zeros(10, 10, dtype=torch.bool), torch.zeros(0))
    t["sparse.all"] = SparseValues(torch.ones(4, 5, dtype=torch.bool), torch.randn(20, generator=g))

    # codes (§3.1, §4)
    t["codes.no_zero"] = Codes(symbols(4, (6, 10)), torch.tensor([-1.5, -0.5, 0.5, 1.5]))
    gaussian = np.clip(np.round(rng.normal(0, 30, (64, 100))) + 128, 0, 255).astype(np.int32)
    gaussian[:8] = 128  # rows at the centre: their scales hit the 0.05 floor (§4.3)
    t["codes.rank1.gaussian"] = Codes(torch.from_numpy(gaussian), torch.linspace(-1, 1, 256))
    scale = np.exp(rng.normal(0, 1, (64, 1)))
    laplace = np.clip(np.round(rng.laplace(0, 8, (64, 200)) * scale) + 500, 0, 999).astype(np.int32)
    t["codes.rank1.laplace"] = Codes(torch.from_numpy(laplace), (torch.arange(1000) - 500).float() * 0.001, zero=500)
    table = torch.sort(torch.randn(8, 9, generator=g), dim=1).values
    table[:, 4] = 0
    t["codes.per_channel.table"] = Codes(symbols(9, (8, 30)), table, zero=4)
    first = np.array([0.5, 0.3125, 0.75, 0.4375, 0.625], np.float32)
    step = np.array([0.125, 0.0625, 0.1875, 0.03125, 0.09375], np.float32)
    t["codes.per_channel.deadzone"] = Codes(symbols(9, (5, 40)), deadzone_table(first, step, 9, 4), zero=4)
    t["codes.deadzone.zero_last"] = Codes(symbols(5, (300,)), deadzone_table(first, step, 9, 4)[0, :5], zero=4)
    big_step = deadzone_table(np.float32([0.25]), np.float32([0.5]), 7, 3)[0]  # the formula gives -0.0 at zero
    t["codes.deadzone.big_step"] = Codes(symbols(7, (6, 50)), big_step, zero=3)
    uniform = (torch.arange(4) - 3).float()[None, :] * (torch.rand(7, generator=g)[:, None] + 0.01)  # zero = L - 1
    t["codes.per_channel.uniform"] = Codes(symbols(4, (7, 30)), uniform, zero=3)
    # Group tables: 4 output channels, 3 runs each (of 8 weights; of 4, 3, 3 for channels of 10).
    group_uniform = (torch.arange(7) - 3).float()[None, :] * (torch.rand(12, generator=g) + 0.01)[:, None]
    t["codes.groups.uniform"] = Codes(symbols(7, (4, 2, 12)), group_uniform, zero=3)
    # Steps exact in float16 (multiples of 2^-10 in its normal range): stored as "uniform16".
    half_steps = torch.tensor([0.5, 0.25, 0.125, 1.5, 0.0625, 3.0, 0.75, 0.375, 2.0, 0.5, 1.25, 0.1875])
    half_grid = (torch.arange(5) - 2).float()[None, :] * half_steps[:, None]
    t["codes.per_channel.uniform16"] = Codes(symbols(5, (12, 7)), half_grid, zero=2)
    t["codes.groups.uniform16.uneven"] = Codes(symbols(5, (3, 10)), half_grid[:9], zero=2)
    # Subnormal float16 steps (multiples of 2^-24 below 2^-14: the scales of groups of tiny weights) widen exactly too.
    tiny_steps = torch.tensor([3 * 2.0**-24, 2.0**-20, 0.5, 2.0**-15, 5 * 2.0**-24, 0.25])
    tiny_grid = (torch.arange(5) - 2).float()[None, :] * tiny_steps[:, None]
    t["codes.groups.uniform16.subnormal"] = Codes(symbols(5, (2, 24)), tiny_grid, zero=2)
    group_table = torch.sort(torch.randn(12, 5, generator=g), dim=1).values
    t["codes.groups.table.uneven"] = Codes(symbols(5, (4, 10)), group_table)
    group_first, group_step = np.full(12, 0.5, np.float32), np.arange(1, 13, dtype=np.float32) / 16
    t["codes.groups.deadzone"] = Codes(symbols(9, (4, 24)), deadzone_table(group_first, group_step, 9, 4), zero=4)
    t["codes.negative_zero"] = Codes(symbols(3, (5, 5)), torch.tensor([-1.0, -0.0, 1.0]), zero=1)  # table: -0.0 != +0.0
    t["codes.scalar"] = Codes(torch.tensor(2, dtype=torch.int32), torch.tensor([-1.0, 0.0, 1.0]), zero=1)
    t["codes.constant"] = Codes(torch.full((10, 10), 2, dtype=torch.int32), torch.tensor([-1.0, 0.0, 1.0]), zero=1)
    t["codes.one_level"] = Codes(torch.zeros(4, 4, dtype=torch.int32), torch.tensor([0.5]))
    t["codes.widest"] = Codes(symbols(65536, (3000,)), torch.arange(65536).float() - 1000, zero=1000)
    t["codes.runs"] = Codes((torch.arange(400).reshape(20, 20) % 7 == 0).int(), torch.tensor([0.0, 0.3]), zero=0)
    diagonal = np.add.outer(np.arange(32), np.arange(64)) % 4
    t["codes.context"] = Codes(torch.from_numpy(diagonal.astype(np.int32)), torch.tensor([-1.0, 0, 1, 2]), zero=1)
    flips = np.cumsum(rng.random((64, 256)) < 0.1, axis=1) % 2
    t["codes.context.binary"] = Codes(torch.from_numpy(flips.astype(np.int32)), torch.tensor([0.0, 0.5]), zero=0)
    image = np.repeat((rng.random((40, 16)) < 0.5), 16, axis=0).reshape(40, 256)  # a row's pixel above is 16 back
    noisy = (image * 2 + (rng.random(image.shape) < 0.05)).astype(np.int32)
    t["codes.context.period"] = Codes(torch.from_numpy(noisy), torch.tensor([-1.0, 0.0, 1.0, 2.0]), zero=1)
    t["codes.empty"] = Codes(torch.zeros(0, 3, dtype=torch.int32), torch.tensor([0.0, 1.0]), zero=0)
    return CompressedModel(t, {}, {})


def empty_model() -> CompressedModel:
    """No stream has a byte: the payload tensor has shape [0] (§1)."""
    empty_codes = Codes(torch.zeros(0, 3, dtype=torch.int32), torch.tensor([0.0, 1.0]), zero=0)
    return CompressedModel({"a": torch.zeros(0), "b": empty_codes}, {}, {})


def lenet300_model() -> CompressedModel:
    """A real pipeline on seeded random weights (no dataset): pruned to 90 %, then 5-bit codes."""
    model = zoo.build("lenet300")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return netpress.compress(model, [MagnitudePruning(), UniformQuantization(5)], Budget(sparsity=0.9))


MODELS = {"synthetic": synthetic_model, "empty": empty_model, "lenet300": lenet300_model}


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {name: codec.to_bytes(build()) for name, build in MODELS.items()}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns, so that -0.0 and NaN payloads compare exactly."""
    if t.is_floating_point():
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


@pytest.mark.parametrize("name", MODELS)
def test_spec_reader_decodes_what_the_codec_writes_bit_for_bit(files, name):
    decoded = decode_bytes(files[name])
    reference = codec.from_bytes(files[name]).state_dict()
    assert list(decoded.tensors) == list(reference)
    for key, value in reference.items():
        mine = decoded.tensors[key]
        assert (mine.dtype, mine.shape) == (value.dtype, value.shape), key
        assert torch.equal(bits(mine), bits(value)), key


def test_synthetic_file_reaches_everything_the_spec_names(files):
    decoded = decode_bytes(files["synthetic"])
    records = decoded.manifest["tensors"]
    codes = [r for r in records if r["kind"] == "codes"]

    assert spec_row_names("| `kind` |") == {r["kind"] for r in records} == {"codes", "sparse", "raw"}
    assert spec_row_names("| `codes` | `levels_form` |") == set(LEVEL_FORMS)
    tables = {(r["levels_form"], r["levels_shape"][0] // r["shape"][0] if len(r["levels_shape"]) == 2 else 0) for r in codes}
    expected = {(form, per) for form in LEVEL_FORMS for per in (0, 1, 2)} - {("uniform16", 0)}  # float16: 2-D only
    assert {(form, min(per, 2)) for form, per in tables} == expected
    assert spec_row_names("| `codes` | `coding` |") == set(LAYOUTS) == {r["coding"] for r in codes}
    assert set(re.findall(r"^### 4\.\d Layout `(\w+)`", SPEC, re.M)) == set(LAYOUTS)
    assert {r["coding"] for r in records if r["kind"] == "sparse"} == {"symbols", "runs"}

    assert spec_row_names("| `raw` | `coding` |") == set(VALUE_CODINGS)
    raw = {(r["dtype"], r["coding"]) for r in records if r["kind"] == "raw"}
    assert spec_dtypes() == {dtype for dtype, _ in raw}
    assert {(dtype, c) for dtype in FLOATS for c in VALUE_CODINGS} <= raw
    assert {r["values_coding"] for r in records if r["kind"] == "sparse"} == set(VALUE_CODINGS)

    seen = {(layout.layout, layout.details.get("family"), layout.details.get("period", -1) > 0) for layout in decoded.layouts}
    assert {("rank1", 0, False), ("rank1", 1, False), ("context", None, False), ("context", None, True)} <= seen
    planes = {layout.details["dtype"] for layout in decoded.layouts if layout.layout == "planes"}
    assert planes == set(FLOATS)


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_a_flipped_payload_bit_is_refused_by_both_readers(files, where):
    data = bytearray(files["synthetic"])
    n = int.from_bytes(data[:8], "little")
    begin, end = json.loads(data[8 : 8 + n])["netpress.payload"]["data_offsets"]  # relative to 8 + n (§1)
    data[8 + n + begin + round(where * (end - 1 - begin))] ^= 0x10
    with pytest.raises(SpecError):
        decode_bytes(bytes(data))
    with pytest.raises(FormatError):
        codec.from_bytes(bytes(data))
