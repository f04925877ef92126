"""Safety-guided self-compression: the bit-depth quantizer, the preservation set, the guard, and what it refuses."""

import math
from dataclasses import replace

import pytest
import torch

import netpress
from netpress import SelfCompression, compress
from netpress.api import resolve_dataset
from netpress.budget import Budget
from netpress.data import Subset, calibration_subset, load_dataset
from netpress.errors import BudgetError
from netpress.evaluate import predict
from netpress.methods import preservation_set
from netpress.methods.base import compressible_weights
from netpress.methods.sizing import SUMMARY_ALLOWANCE
from netpress.quant.bitdepth import bitdepth_codes, bitdepth_quantize
from tests.archs import tiny_cnn, tiny_mlp

FAST = SelfCompression(steps=30, batch_size=64, preserve=100)


@pytest.fixture(scope="module")
def train():
    return calibration_subset(load_dataset("digits", "train"), 512, seed=0)


@pytest.fixture(scope="module")
def trained(train):
    """tiny_mlp fitted to the digits subset: an untrained one sits at chance, where nothing can fall."""
    model = tiny_mlp()
    inputs, labels = train.tensors()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    return model


def test_the_quantizer_is_the_papers_formula():
    w = torch.tensor([[0.3, -0.26, 1.7, -2.0], [0.01, 0.2, -0.2, 0.0]])
    bits, exponent = torch.tensor([3.0, 0.0]), torch.tensor([-2.0, -3.0])
    q = bitdepth_quantize(w, bits, exponent)
    # Row 0: steps of 1/4, integers clamped to [-4, 3]; row 1 has no bits: zeros.
    assert q.tolist() == [[0.25, -0.25, 0.75, -1.0], [0.0, 0.0, 0.0, 0.0]]


def test_the_bit_depth_learns_through_the_clamp_and_the_exponent_through_the_scale():
    w = torch.tensor([[0.3, 5.0]])
    bits, exponent = torch.tensor([2.0], requires_grad=True), torch.tensor([0.0], requires_grad=True)
    bitdepth_quantize(w, bits, exponent).sum().backward()
    assert bits.grad.item() > 0  # 5.0 is clipped at 1: more bits would let it through
    assert exponent.grad.item() != 0
    unclipped = torch.tensor([8.0], requires_grad=True)
    bitdepth_quantize(w, unclipped, torch.tensor([0.0])).sum().backward()
    assert unclipped.grad.item() == 0


def test_the_codes_give_back_the_quantized_weights_with_two_numbers_per_channel():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    bits = torch.tensor([0.0, 1.0, 2.5, 4.0, 6.0, 8.0])
    exponent = torch.log2(w.abs().amax(dim=(1, 2, 3)) / 3)
    codes = bitdepth_codes(w, bits, exponent)
    assert torch.allclose(codes.dequantize(), bitdepth_quantize(w, bits, exponent), rtol=1e-6, atol=0)
    assert codes.levels.shape[0] == 6 and codes.zero is not None
    assert not codes.dequantize()[0].any()  # the channel at 0 bits
    for row, b in zip(codes.dequantize(), bits.tolist()):
        assert len(torch.unique(row)) <= max(1, 2 ** math.ceil(b))


def test_a_channels_grid_does_not_depend_on_the_other_channels():
    torch.manual_seed(0)
    w, bits, exponent = torch.randn(37, 20), torch.rand(37) * 6 + 1, torch.randn(37) - 4
    full = bitdepth_codes(w, bits, exponent).dequantize()
    for keep in (slice(0, 5), slice(3, 36, 2), slice(20, 37)):
        assert torch.equal(bitdepth_codes(w[keep], bits[keep], exponent[keep]).dequantize(), full[keep])


@pytest.mark.parametrize("factory", [tiny_mlp, tiny_cnn])
def test_every_layer_is_its_codes_on_per_channel_grids(factory, train):
    if factory is tiny_cnn:  # digits are 8x8 images for the convolution
        train = Subset(resolve_dataset("digits", "train", (1, 8, 8)), train.indices, train.seed)
    result = FAST.apply(factory(), train)
    for name, w in compressible_weights(result.model).items():
        codes = result.codes[name]
        assert torch.equal(codes.dequantize(), w)
        assert codes.levels.shape[0] == w.shape[0]  # a table per output channel
    row = next(r for r in result.rows if "preservation" in r)
    assert 0 < row["mean_bit_depth"] < FAST.init_bits


def test_the_file_gives_back_the_compressed_model(train, tmp_path):
    compressed = compress(tiny_mlp(), FAST, data=train)
    netpress.save(compressed, tmp_path / "m.press")
    loaded = netpress.load(tmp_path / "m.press", tiny_mlp())
    inputs, _ = train.tensors()
    assert torch.equal(predict(loaded, inputs), predict(compressed.to_module(tiny_mlp()), inputs))


def test_a_larger_gamma_keeps_fewer_bits_in_a_smaller_file(train):
    runs = [
        compress(tiny_mlp(), SelfCompression(steps=60, batch_size=64, preserve=0, gamma=gamma, bits_lr=0.1), data=train)
        for gamma in (0.0, 5.0)
    ]
    depths = [run.details["layers"]["self-compress"][0]["mean_bit_depth"] for run in runs]
    assert depths[1] < depths[0]
    assert len(netpress.codec.to_bytes(runs[1])) < len(netpress.codec.to_bytes(runs[0]))


def test_the_preservation_set_holds_the_uncertain_examples_and_every_class(train):
    model = tiny_mlp()
    inputs, labels = train.tensors()
    chosen = preservation_set(model, inputs, labels, 60, seed=0)
    assert len(chosen) == 60 and len(torch.unique(chosen)) == 60
    assert torch.equal(chosen, preservation_set(model, inputs, labels, 60, seed=0))
    doubt = 1 - predict(model, inputs).softmax(dim=1).amax(dim=1)
    assert set(torch.argsort(doubt, descending=True)[:30].tolist()) <= set(chosen.tolist())
    assert set(labels[chosen].tolist()) == set(labels.tolist())
    assert len(preservation_set(model, inputs, labels, 10_000)) == len(inputs)
    with pytest.raises(BudgetError, match="size must be a whole number"):
        preservation_set(model, inputs, labels, -5)


def test_a_dead_layer_still_gives_distinct_examples_without_a_clustering_warning(train, recwarn):
    model = tiny_mlp()
    with torch.no_grad():
        model[1].weight.zero_()  # every input gives the last layer the same features
    inputs, labels = train.tensors()
    chosen = preservation_set(model, inputs, labels, 40, seed=0)
    assert len(torch.unique(chosen)) == 40
    assert not [w for w in recwarn if "clusters" in str(w.message)]


def test_the_report_names_the_training_images_it_preserved(train):
    row = FAST.apply(tiny_mlp(), train).rows[0]["preservation"]
    assert row["size"] == len(row["indices"]) == FAST.preserve
    assert set(row["indices"]) <= set(train.indices)  # training-split indices, never the test split's
    assert 0 <= row["accuracy_before"] <= 1 and 0 <= row["accuracy_after"] <= 1


def test_the_guard_brings_channels_back_when_the_preserved_accuracy_falls(train, trained):
    crushing = SelfCompression(steps=60, batch_size=64, preserve=100, gamma=50.0, bits_lr=0.2, check_every=5)
    assert crushing.apply(trained, train).rows[0]["preservation"]["restores"] > 0
    assert replace(crushing, preserve=0).apply(trained, train).rows[0]["preservation"]["restores"] == 0


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ({"gamma": -1.0}, "gamma"),
        ({"steps": 1.5}, "steps"),
        ({"preserve": -1}, "preserve"),
        ({"init_bits": 0.5}, "init_bits"),
        ({"restore_fraction": 1.5}, "restore_fraction"),
        ({"restore_bits": 0.0}, "restore_bits"),
        ({"check_every": 0}, "check_every"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(setting, fragment):
    with pytest.raises(BudgetError, match=fragment):
        SelfCompression(**setting)


def test_channels_at_zero_bits_are_cut_and_the_file_loads_into_the_original_architecture(train, trained, tmp_path):
    method = SelfCompression(steps=60, batch_size=64, preserve=0, gamma=2.0, bits_lr=0.2)
    compressed = compress(trained, method, data=train)
    (cut,) = compressed.details["layers"]["self-compress"][0]["cut"]
    assert cut["kept"] < cut["channels"] == 32
    netpress.save(compressed, tmp_path / "c.press")
    loaded = netpress.load(tmp_path / "c.press", tiny_mlp())
    assert loaded[1].out_features == loaded[3].in_features == cut["kept"]
    inputs, _ = train.tensors()
    assert torch.equal(predict(loaded, inputs), predict(compressed.to_module(tiny_mlp()), inputs))
    kept = compress(trained, replace(method, cut_channels=False), data=train).to_module(tiny_mlp())
    assert kept[1].out_features == 32


@pytest.mark.parametrize("ratio", [4.0, 7.0])
def test_a_ratio_target_is_met_on_the_written_file(train, trained, ratio):
    compressed = compress(trained, replace(FAST, steps=60), Budget(ratio=ratio), data=train)
    target = netpress.api.fp32_bytes(trained) // ratio
    size = len(netpress.codec.to_bytes(compressed))
    assert 0.95 * target - SUMMARY_ALLOWANCE < size <= target  # the finest grids that fit: close below the target
    assert compressed.details["layers"]["self-compress"][0]["allowed_bit_depth"] > 0


def test_a_loose_ratio_stops_at_the_finest_grids_the_codec_codes(train, trained):
    compressed = compress(trained, replace(FAST, steps=10), Budget(ratio=1.0001), data=train)
    most = max(row["levels"] for row in compressed.details["layers"]["self-compress"])
    assert most <= 2**16 and len(netpress.codec.to_bytes(compressed)) <= netpress.api.fp32_bytes(trained) / 1.0001


def test_an_unreachable_ratio_is_refused_before_training(trained):
    with pytest.raises(BudgetError, match="ask for at most"):
        SelfCompression().check_target(trained, Budget(ratio=1000.0))


def test_it_takes_no_sparsity_target(train):
    with pytest.raises(BudgetError, match="no chosen method takes a sparsity target"):
        compress(tiny_mlp(), FAST, Budget(sparsity=0.5), data=train)
