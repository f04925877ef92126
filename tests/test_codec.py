import os

import numpy as np
import pytest
import torch
from safetensors.torch import save

import netpress
from netpress import Budget, MagnitudePruning, UniformQuantization, codec
from netpress.codec import Codes, SparseValues, entropy
from netpress.codec.floats import decode_floats, encode_floats
from netpress.compressed import CompressedModel, fp32_bytes
from netpress.errors import BudgetError, FormatError
from netpress.methods.base import compressible_weights, target_zeros
from tests.conftest import TRAINED

SETTINGS = {
    "uniform8": ([UniformQuantization(8)], None),
    "uniform4-per-channel": ([UniformQuantization(4, per_channel=True)], None),
    "magnitude90": ([MagnitudePruning()], Budget(sparsity=0.9)),
    "magnitude90+5bit": ([MagnitudePruning("lamp"), UniformQuantization(5)], Budget(sparsity=0.9)),
}


@pytest.mark.parametrize("name", TRAINED)
@pytest.mark.parametrize("setting", SETTINGS)
def test_zoo_roundtrip_is_bit_exact_and_inspect_adds_up(name, setting, tmp_path):
    handle = netpress.load_model(f"zoo:{name}")
    methods, budget = SETTINGS[setting]
    compressed = netpress.compress(handle, methods, budget)
    path = tmp_path / "m.press"
    size = netpress.save(compressed, path)
    assert size == path.stat().st_size < netpress.api.fp32_bytes(handle.module)
    loaded = netpress.load(path).state_dict()
    for key, value in compressed.state_dict().items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key
    info = netpress.inspect(path)
    assert info["file_bytes"] == size
    assert sum(r["bytes"] for r in info["tensors"]) == info["streams_bytes"]
    assert info["payload_bytes"] <= 1.01 * info["entropy_bound_bytes"] + 16 * len(info["tensors"])
    if budget is not None:
        assert info["sparsity"] >= budget.sparsity


def test_a_compressed_model_prints_in_one_line_not_its_streams(tmp_path):
    handle = netpress.load_model("zoo:lenet5")
    compressed = netpress.compress(handle, [MagnitudePruning("lamp"), UniformQuantization(5)], Budget(sparsity=0.8))
    netpress.save(compressed, tmp_path / "m.press")
    for shown in (compressed, codec.read(tmp_path / "m.press", lazily=True)):
        text = repr(shown)
        assert len(text) < 200 and "\n" not in text, text
        assert "8 tensors (4 coded)" in text and "magnitude + uniform" in text and "'sparsity': 0.8" in text
        assert "source='zoo:lenet5'" in text
    assert repr(compressed.tensors["conv1.weight"]).startswith("Packed('conv1.weight', shape=(20, 1, 5, 5), kind='codes', ")


def test_fp16_raw_tensors_halve_raw_bytes_and_stay_exact(tmp_path):
    from tests.archs import tiny_cnn

    model = tiny_cnn()
    sizes = {}
    for dtype in ("fp32", "fp16"):
        compressed = netpress.compress(model, UniformQuantization(8), raw_dtype=dtype)
        netpress.save(compressed, tmp_path / f"{dtype}.press")
        sizes[dtype] = netpress.inspect(tmp_path / f"{dtype}.press")["raw_bytes"]
        loaded = netpress.load(tmp_path / f"{dtype}.press", model=model).state_dict()
        for key, value in compressed.state_dict().items():
            assert torch.equal(loaded[key], value.to(loaded[key].dtype))
    assert sizes["fp16"] < 0.55 * sizes["fp32"]


def test_a_survivor_too_small_for_fp16_stays_a_survivor():
    tiny = SparseValues.from_tensor(torch.tensor([0.0, 3e-9, -3e-9, 0.5, 0.0, -1e-30]))
    half = tiny.survivors_in(torch.float16)
    smallest = 2.0**-24  # float16's smallest subnormal
    assert half.values.tolist() == [smallest, -smallest, 0.5, -smallest]
    back = codec.from_bytes(codec.to_bytes(CompressedModel({"w": half}, {}))).tensors["w"]
    assert torch.equal(back.values, half.values) and torch.equal(back.mask, tiny.mask)


def test_fp16_survivors_halve_the_values_keep_the_exact_sparsity_and_round_trip(tmp_path):
    from tests.archs import tiny_cnn

    model = tiny_cnn()
    budget = Budget(sparsity=0.5)
    files = {}
    for dtype in ("fp32", "fp16"):
        compressed = netpress.compress(model, MagnitudePruning("lamp"), budget, raw_dtype=dtype)
        netpress.save(compressed, tmp_path / f"{dtype}.press")
        files[dtype] = netpress.inspect(tmp_path / f"{dtype}.press")
        loaded = netpress.load(tmp_path / f"{dtype}.press", model=model).state_dict()
        for key, value in compressed.state_dict().items():
            assert torch.equal(loaded[key], value.to(loaded[key].dtype))
        weights = [loaded[k] for k in compressible_weights(model)]
        zeros = sum(int((w == 0).sum()) for w in weights)
        assert zeros == target_zeros(budget.sparsity, sum(w.numel() for w in weights))
    sparse = {d: [r for r in info["tensors"] if r["kind"] == "sparse"] for d, info in files.items()}
    assert {r["dtype"] for r in sparse["fp16"]} == {"float16"}
    assert files["fp16"]["file_bytes"] < 0.7 * files["fp32"]["file_bytes"]


def test_fp16_refuses_values_beyond_its_range_by_name():
    from tests.archs import tiny_cnn

    model = tiny_cnn()
    name = next(iter(compressible_weights(model)))
    with torch.no_grad():
        model.get_parameter(name).view(-1)[0] = 1e5
    with pytest.raises(BudgetError, match=rf"{name} holds values up to 1e\+05, beyond float16's range"):
        netpress.compress(model, MagnitudePruning(), Budget(sparsity=0.5), raw_dtype="fp16")


def test_a_float64_tensor_the_file_rounds_is_warned_about_by_name():
    from tests.archs import tiny_cnn

    model = tiny_cnn()
    model.register_buffer("offset", torch.tensor([16777217.0], dtype=torch.float64))
    with pytest.warns(netpress.NetpressWarning, match=r"^offset: float64 in the model, stored as float32"):
        compressed = netpress.compress(model, UniformQuantization(8))
    assert compressed.state_dict()["offset"].item() == 16777216.0  # what the warning is about


def test_a_group_of_tiny_weights_keeps_the_scales_in_float16_and_is_not_clipped():
    # One group's scale below float16's normal range used to send the whole table to float32 (+34 % here).
    layer = torch.nn.Linear(512, 16)
    with torch.no_grad():
        layer.weight[3, 8:16] *= 1e-5
    compressed = netpress.compress(torch.nn.Sequential(layer), UniformQuantization(4, group_size=8))
    manifest, _ = codec.read_manifest(codec.to_bytes(compressed))
    assert next(r for r in manifest["tensors"] if r["name"] == "0.weight")["levels_form"] == "uniform16"
    tiny, back = layer.weight[3, 8:16].detach(), compressed.state_dict()["0.weight"][3, 8:16]
    assert (back - tiny).abs().max() <= tiny.abs().max() / 7  # within a step of the group's own grid, none clipped
    assert torch.equal(codec.from_bytes(codec.to_bytes(compressed)).state_dict()["0.weight"], compressed.state_dict()["0.weight"])


def test_a_file_written_through_a_link_lands_at_its_target_and_a_replaced_file_keeps_its_mode(tmp_path):
    target, link = tmp_path / "runs" / "model.press", tmp_path / "latest.press"
    target.parent.mkdir()
    target.write_bytes(b"old")
    target.chmod(0o600)  # a private model
    link.symlink_to(target)
    codec.write_file(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"
    assert target.stat().st_mode & 0o777 == 0o600


def test_press_gives_a_new_file_the_usual_mode_keeps_a_replaced_ones_and_writes_through_a_link(tmp_path):
    from tests.archs import tiny_cnn

    mask = os.umask(0o022)
    try:
        new = tmp_path / "new.press"
        netpress.press(tiny_cnn(), UniformQuantization(8), out=new)
        assert new.stat().st_mode & 0o777 == 0o644  # not the hidden file's 0600
        target, link = tmp_path / "runs" / "model.press", tmp_path / "latest.press"
        target.parent.mkdir()
        target.write_bytes(b"old")
        target.chmod(0o600)
        link.symlink_to(target)
        report = netpress.press(tiny_cnn(), UniformQuantization(8), out=link)
        assert link.is_symlink() and target.read_bytes() == new.read_bytes() and report["file"] == str(link)
        assert target.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(mask)


def test_an_output_link_into_a_missing_folder_is_refused_before_any_work(tmp_path):
    from tests.archs import tiny_cnn

    link = tmp_path / "latest.press"
    link.symlink_to(tmp_path / "gone" / "model.press")
    with pytest.raises(netpress.NetpressError, match="gone does not exist"):
        netpress.press(tiny_cnn(), UniformQuantization(8), out=link)


def test_group_tables_serve_consecutive_runs_within_each_channel():
    symbols = torch.arange(20, dtype=torch.int32).reshape(2, 10) % 2
    levels = torch.stack([torch.tensor([0.0, float(t)]) for t in range(1, 7)])  # table t's level 1 is t + 1
    # 3 runs per channel of 10 weights: j·3 // 10 gives runs of 4, 3 and 3.
    expected = torch.tensor([[1, 1, 1, 1, 2, 2, 2, 3, 3, 3], [4, 4, 4, 4, 5, 5, 5, 6, 6, 6]]).float() * symbols
    assert torch.equal(Codes(symbols, levels, zero=0).dequantize(), expected)
    back = codec.from_bytes(codec.to_bytes(CompressedModel({"w": Codes(symbols, levels, zero=0)}, {})))
    assert torch.equal(back.state_dict()["w"], expected)
    for tables in (3, 4 * 2 - 1, 2 * 11):  # not a multiple of the channels; more runs than weights
        with pytest.raises(FormatError, match="one row per output channel"):
            Codes(symbols, torch.zeros(tables, 2), zero=0)


def test_per_channel_codes_and_sparse_values_roundtrip():
    g = torch.Generator().manual_seed(0)
    symbols = torch.randint(0, 5, (6, 7, 3), generator=g, dtype=torch.int32)
    levels = torch.randn(6, 5, generator=g)
    levels[:, 2] = 0
    dense = torch.randn(50, 40, generator=g)
    dense[dense.abs() < 1] = 0
    original = CompressedModel(
        {
            "a": Codes(symbols, levels, zero=2),
            "b": SparseValues.from_tensor(dense),
            "c": SparseValues.from_tensor(dense.half()),
            "n": torch.tensor(7),
            "m": torch.tensor([True, False]),
        },
        {"zoo": "lenet5"},
    )
    back = codec.from_bytes(codec.to_bytes(original))
    for key, value in original.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key
    assert back.source == {"zoo": "lenet5"}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32])
def test_raw_tensors_are_little_endian_bit_patterns(dtype):
    value = (torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * 100).to(dtype)
    data = codec.to_bytes(CompressedModel({"t": value}))
    back = codec.from_bytes(data).tensors["t"]
    assert back.dtype == dtype and torch.equal(back, value)
    manifest, payload = codec.read_manifest(data)
    record = manifest["tensors"][0]
    if record["coding"] == "planes":  # smaller than the bit patterns; exactness is checked above
        return
    stream = payload[: record["length"]]
    width = value.element_size()
    bits = value.reshape(-1).view({2: torch.int16, 4: torch.int32, 8: torch.int64}[width]).tolist()
    assert stream == b"".join((b & (1 << 8 * width) - 1).to_bytes(width, "little") for b in bits)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("numel", [1, 2, 7, 5000])
def test_float_planes_keep_every_bit_pattern(dtype, numel):
    g = torch.Generator().manual_seed(numel)
    value = (torch.randn(numel, generator=g) * 10).to(dtype)
    special = torch.tensor([float("nan"), float("inf"), float("-inf"), -0.0, 0.0]).to(dtype)
    value[: min(numel, 5)] = special[: min(numel, 5)]
    if numel > 5:
        value[5] = torch.finfo(dtype).tiny / 4  # subnormal
        value[6] = -torch.finfo(dtype).max
    stream = encode_floats(value)
    back = decode_floats(stream, dtype, numel, "t")
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[value.element_size()]
    assert torch.equal(back.view(bits), value.view(bits))
    if numel == 5000:
        assert len(stream) < 0.9 * numel * value.element_size()
    with pytest.raises(FormatError):
        decode_floats(stream[:-1], dtype, numel, "t")


def test_biases_and_norms_are_stored_as_planes_when_smaller(tmp_path):
    from tests.archs import tiny_cnn

    compressed = netpress.compress(tiny_cnn(), UniformQuantization(4))
    netpress.save(compressed, tmp_path / "m.press")
    raw = [r for r in netpress.inspect(tmp_path / "m.press")["tensors"] if r["kind"] == "raw"]
    assert {r["coding"] for r in raw} <= {"plain", "planes"}
    assert any(r["coding"] == "planes" for r in raw)


def test_worked_example_in_the_format_spec_has_the_bytes_it_shows():
    """docs/format.md §8 and §4.4: the manifest record, the payload and the `context` stream byte by byte."""
    symbols = torch.tensor([[1, 1, 0, 1], [2, 1, 1, 1]], dtype=torch.int32)
    weight = Codes(symbols, torch.tensor([-0.5, 0.0, 0.5]), zero=1)
    tensors = {"fc.weight": weight, "fc.bias": torch.tensor([0.25, -1.0])}
    data = codec.to_bytes(CompressedModel(tensors, {"zoo": "example"}, {"netpress": "0.1.0"}))
    assert len(data) == 521 and data[:8].hex(" ") == "e8 00 00 00 00 00 00 00"
    assert data[8:240].decode() == (
        '{"__metadata__":{"format":"netpress","manifest_crc32":"3125622450","version":"4"},'
        '"netpress.manifest":{"dtype":"U8","shape":[262],"data_offsets":[0,262]},'
        '"netpress.payload":{"dtype":"U8","shape":[19],"data_offsets":[262,281]}}      '
    )
    manifest, payload = codec.read_manifest(data)
    assert manifest["tensors"][0]["coding"] == "symbols" and manifest["tensors"][0]["crc32"] == 291209529
    assert payload.hex(" ") == "00 00 00 3f 01 06 01 9f df 8c 46 00 00 80 3e 00 00 80 bf"
    context = entropy._encode_context(symbols.numpy().ravel(), 3, 2, 0).getvalue()
    assert context.hex(" ") == "00 02 ce 68 89 8f ff cb"
    prior = entropy.ByteWriter()
    entropy._write_prior(prior, entropy.prior_levels(np.array([0, 1, 6, 1])))
    assert prior.getvalue().hex(" ") == "02 99 cd"


@pytest.mark.parametrize("seed", range(40))
def test_the_fp32_size_is_the_length_of_the_file_safetensors_writes(seed):
    """fp32_bytes counts the header as safetensors lays it out (dtype order, then name; JSON; padding to 8)
    instead of writing the file: checked against its writer on random mixes of names, dtypes and shapes."""
    g = torch.Generator().manual_seed(seed)
    dtypes = [
        torch.float32,
        torch.float16,
        torch.float64,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.uint8,
        torch.bool,
        torch.complex64,
    ]
    model = torch.nn.Module()
    for i in range(int(torch.randint(1, 10, (1,), generator=g))):
        shape = torch.randint(0, 60, (int(torch.randint(0, 4, (1,), generator=g)),), generator=g).tolist()
        dtype = dtypes[int(torch.randint(0, len(dtypes), (1,), generator=g))]
        name = ["w", "Layer_", "ß", "a.b"][i % 4] + str(int(torch.randint(0, 10 ** (i % 6 + 1), (1,), generator=g)))
        model.register_buffer(name.replace(".", "_"), torch.zeros(shape, dtype=dtype))
    state = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    assert fp32_bytes(model) == len(save(state))


@pytest.mark.parametrize("name", TRAINED)
def test_the_fp32_size_of_a_zoo_model_is_its_file_length(name):
    model = netpress.load_model(f"zoo:{name}").module
    assert fp32_bytes(model) == len(save(model.state_dict()))


@pytest.mark.parametrize(
    ("source", "label"),
    [
        ({"zoo": "vgg"}, "zoo:vgg"),
        ({"arch": "mypkg.models:build"}, "mypkg.models:build"),
        ({"hf": {"class": "BertModel", "config": {"hidden_size": 8}}}, "Hugging Face BertModel"),
        ({}, "a module passed in"),
    ],
)
def test_a_compressed_models_source_prints_in_a_few_words(source, label):
    assert f"source={label!r}" in repr(CompressedModel({}, source))
