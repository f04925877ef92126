import copy
import functools
import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

import netpress
from netpress import Budget, MagnitudePruning, UniformQuantization, api, zoo
from netpress.codec.codes import Codes
from netpress.compressed import CompressedModel, fp32_bytes
from netpress.data import Subset, calibration_subset, load_dataset
from netpress.errors import BudgetError, DataError, FormatError, ModelSourceError, OutputError, UnsupportedModelError
from netpress.methods import ALLOCATIONS, FCPTS, L2, Fold, KMeansQuantization, SelfCompression, SoftWeightSharing
from netpress.methods.base import check_model, compressible_weights, split_exact, target_zeros, uncompressed_layers
from netpress.methods.baselines import _lamp_scores, _lowest_per_layer, prune_counts, smallest_mask
from tests.archs import tied, tiny_cnn, tiny_mlp


def random_model(seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    widths = torch.randint(3, 40, (4,), generator=g).tolist()
    model = nn.Sequential(
        nn.Conv2d(1, widths[0], 3),
        nn.ReLU(),
        nn.Conv2d(widths[0], widths[1], 1),
        nn.Flatten(),
        nn.Linear(widths[1] * 36, widths[2]),
        nn.ReLU(),
        nn.Linear(widths[2], widths[3]),
    )
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * torch.rand(1, generator=g))
            p.masked_fill_(p == 0, 1e-3)  # float32 randn can give an exact zero (seed 1233 has two): a model pruned already
    return model


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.99), st.sampled_from(["global", "uniform", "erk", "lamp"]))
def test_magnitude_pruning_hits_the_global_target_exactly(seed, sparsity, allocation):
    model = random_model(seed)
    result = MagnitudePruning(allocation).apply(model, budget=Budget(sparsity=sparsity))
    weights = compressible_weights(result.model)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    assert zeros == target_zeros(sparsity, total)
    assert all(torch.equal(result.codes[k].dequantize(), w) for k, w in weights.items())
    if allocation != "global":  # only a single global threshold may empty a whole layer
        assert all((w != 0).any() for w in weights.values())


@settings(max_examples=25, deadline=None)
@given(
    st.integers(0, 10_000),
    st.floats(0.0, 0.9),
    st.floats(0.0, 0.99),
    st.sampled_from(ALLOCATIONS),
    st.sampled_from(ALLOCATIONS),
)
def test_pruning_a_pruned_model_keeps_its_zeros_and_hits_the_target_exactly(seed, first, second, alloc1, alloc2):
    """A second pruning stage (or a model pruned elsewhere) starts from zeros its allocation must count:
    ERK once left 65 % zeros for a 60 % target on a model pruned to 50 % uniformly."""
    model = MagnitudePruning(alloc1).apply(random_model(seed), budget=Budget(sparsity=first)).model
    before = {k: w == 0 for k, w in compressible_weights(model).items()}
    total = sum(w.numel() for w in before.values())
    if target_zeros(second, total) < sum(int(z.sum()) for z in before.values()):
        with pytest.raises(BudgetError, match="ask for a sparsity of at least"):
            MagnitudePruning(alloc2).apply(model, budget=Budget(sparsity=second))
        return
    result = MagnitudePruning(alloc2).apply(model, budget=Budget(sparsity=second))
    weights = compressible_weights(result.model)
    assert sum(int((w == 0).sum()) for w in weights.values()) == target_zeros(second, total)
    assert all(weights[k][zero].eq(0).all() for k, zero in before.items())
    assert [row["sparsity"] for row in result.rows] == [int((w == 0).sum()) / w.numel() for w in weights.values()]


@pytest.mark.parametrize("allocation", ["global", "uniform", "erk", "lamp"])
def test_a_zero_sparsity_target_prunes_nothing(allocation):
    """ERK once divided by zero here: every layer is dense, so no layer is left to share the budget."""
    result = MagnitudePruning(allocation).apply(random_model(3), budget=Budget(sparsity=0.0))
    assert all((w != 0).all() for w in compressible_weights(result.model).values())


def test_magnitude_leaves_the_input_model_alone():
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    MagnitudePruning().apply(model, budget=Budget(sparsity=0.5))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("per_channel", [False, True])
def test_uniform_quantization_levels_and_error(bits, per_channel):
    model = tiny_cnn()
    result = UniformQuantization(bits, per_channel).apply(model)
    for name, w in compressible_weights(model).items():
        codes = result.codes[name]
        assert codes.num_levels == 2**bits - 1
        rows = codes.dequantize().reshape(w.shape[0], -1) if per_channel else codes.dequantize().reshape(1, -1)
        assert all(len(torch.unique(row)) <= 2**bits - 1 for row in rows)
        step = w.detach().abs().max() / (2 ** (bits - 1) - 1)
        assert (codes.dequantize() - w.detach()).abs().max() <= step / 2 + 1e-6


@pytest.mark.parametrize("clip", ["max", "mse"])
def test_group_scales_cover_runs_of_at_most_group_size_weights(clip):
    model = tiny_cnn()
    with torch.no_grad():
        model[4].weight[3, 100] = 1.0  # an outlier coarsens the grid of its own group only
    grouped = UniformQuantization(4, clip=clip, group_size=64).apply(model)
    channels = UniformQuantization(4, per_channel=True, clip=clip).apply(model)
    assert grouped.codes["0.weight"].levels.shape == (8, 15)  # 9 weights per channel: one group each
    assert grouped.codes["4.weight"].levels.shape == (80, 15)  # 512 per channel: 8 groups of 64
    w = model[4].weight.detach()
    if clip == "max":
        step = grouped.codes["4.weight"].levels[:, 8:9]  # amax / 7 of its group, rounded to float16
        assert torch.allclose(step, w.reshape(80, 64).abs().amax(1, keepdim=True) / 7, rtol=2**-11, atol=0)
        assert ((grouped.codes["4.weight"].dequantize() - w).reshape(80, 64).abs() <= step / 2 + 1e-7).all()
    errors = [((r.codes["4.weight"].dequantize() - w) ** 2).reshape(10, 8, 64).sum(2) for r in (grouped, channels)]
    assert errors[0][3].sum() < errors[1][3].sum() / 4  # the outlier's channel, where one scale served all
    uneven = UniformQuantization(4, group_size=5).apply(model).codes["0.weight"]  # 9 weights: runs of 5 and 4
    assert uneven.levels.shape == (16, 15)
    for c, row in enumerate(uneven.dequantize().reshape(8, 9)):
        assert torch.isin(row[:5], uneven.levels[2 * c]).all() and torch.isin(row[5:], uneven.levels[2 * c + 1]).all()


@pytest.mark.parametrize(
    "methods, unreachable, message",
    [
        (MagnitudePruning(), Budget(sparsity=0.9999999), "removes all"),
        (FCPTS(), Budget(sparsity=0.995), "the most it can remove"),
        (Fold(input_shape=(1, 8, 8)), Budget(params=0.999), "the most this model can lose"),
    ],
)
def test_a_sweep_refuses_an_unreachable_point_before_writing_any(methods, unreachable, message, tmp_path):
    """A later impossible target must not cost the earlier points' work, or replace their files."""
    reachable = Budget(**{unreachable.kind: 0.5})
    with pytest.raises(BudgetError, match=message):
        netpress.sweep(tiny_cnn(), methods, [reachable, unreachable], out_dir=tmp_path / "s", data="digits", calib=16)
    assert not (tmp_path / "s").exists()


def test_group_scales_are_float16_where_they_fit_and_the_file_stores_them_so():
    model = tiny_cnn()
    steps = UniformQuantization(4, group_size=64).apply(model).codes["4.weight"].levels[:, 8]  # level +1 = the step
    assert torch.equal(steps.half().float(), steps)
    data = netpress.codec.to_bytes(netpress.compress(model, UniformQuantization(4, group_size=64)))
    assert {r["levels_form"] for r in netpress.codec.read_manifest(data)[0]["tensors"] if r["kind"] == "codes"} == {"uniform16"}
    with torch.no_grad():
        model[4].weight[:, :64].mul_(1e-6)  # one group per row below float16's normal range: float16 subnormals
    small = UniformQuantization(4, group_size=64).apply(model).codes["4.weight"].levels[:, 8]
    assert torch.equal(small.half().float(), small) and int((small < 2**-14).sum()) == 10
    true = model[4].weight.detach().reshape(-1, 64).abs().amax(dim=1) / 7
    assert bool((small >= true)[small < 2**-14].all())  # a subnormal never below its group's own scale: none clipped
    with torch.no_grad():
        model[4].weight.mul_(1e-6)  # every group tiny: a subnormal step would be coarse, float32 as before
    tiny = UniformQuantization(4, group_size=64).apply(model).codes["4.weight"].levels[:, 8]
    assert not torch.equal(tiny.half().float(), tiny)
    with torch.no_grad():
        model[4].weight.mul_(1e20)  # scales beyond float16's largest stay float32
    huge = UniformQuantization(4, group_size=64).apply(model).codes["4.weight"].levels[:, 8]
    assert not torch.equal(huge.half().float(), huge)


def test_level_tables_too_large_to_build_are_refused_before_any_layer_is_coded(monkeypatch):
    import netpress.methods.baselines as baselines

    monkeypatch.setattr(baselines, "_memory_bytes", lambda: 2**30)  # a 1 GiB machine
    model = nn.Sequential(nn.Linear(256, 256))  # 16 bits, a scale per weight: 16 GiB of level tables
    with pytest.raises(BudgetError, match=r"16 bits with 65,536 scales .* more than half this machine's memory; use fewer"):
        netpress.compress(model, UniformQuantization(16, group_size=1))
    netpress.compress(model, UniformQuantization(16, group_size=64))  # 1,024 tables: 256 MiB, built


@pytest.mark.parametrize("bits", [4, 12, 16])
def test_float16_group_scales_never_clip_the_largest_weight(bits):
    # From 12 bits on, a scale rounded down to the nearest float16 put the largest weights past the last level
    # (up to 5.6 steps away at 16 bits): such a scale takes the next float16 up.
    layer = nn.Linear(64, 2)
    with torch.no_grad():  # group scales 1 + 0.9 · 2⁻¹¹: their nearest float16 is 1, below them
        layer.weight.copy_(torch.linspace(-1, 1, 128).reshape(2, 64) * (2 ** (bits - 1) - 1) * (1 + 0.9 * 2**-11))
    codes = UniformQuantization(bits, group_size=64).apply(nn.Sequential(layer)).codes["0.weight"]
    step = codes.levels[:, 2 ** (bits - 1)]  # the level after zero
    error = (codes.dequantize() - layer.weight.detach()).abs().reshape(-1, 64).amax(dim=1) / step
    assert float(error.max()) < 0.51


def test_an_unset_setting_is_left_out_of_the_file_record():
    """A file made without group_size records the same method, byte for byte, as before the setting existed."""
    summary = netpress.compress(tiny_cnn(), UniformQuantization(4)).summary
    assert summary["methods"] == [{"name": "uniform", "bits": 4, "per_channel": False, "clip": "max"}]


@pytest.mark.parametrize("per_channel", [False, True])
def test_mse_clipping_never_rounds_worse_than_the_full_range(per_channel):
    model = tiny_cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = 1.0  # one outlier (3x the others) stretches the full-range grid of its row
        model[0].weight[1].zero_()  # an all-zero row keeps a usable scale
    full = UniformQuantization(4, per_channel).apply(model)
    clipped = UniformQuantization(4, per_channel, clip="mse").apply(model)
    for name, w in compressible_weights(model).items():
        rows = w.detach().reshape(w.shape[0] if per_channel else 1, -1)
        errors = [((r.codes[name].dequantize().reshape(rows.shape) - rows) ** 2).sum(1) for r in (full, clipped)]
        assert (errors[1] <= errors[0]).all()
        assert torch.isfinite(clipped.codes[name].dequantize()).all()
    errors = [((r.codes["0.weight"].dequantize() - model[0].weight) ** 2).sum() for r in (full, clipped)]
    assert errors[1] < errors[0]
    assert torch.equal(clipped.codes["0.weight"].dequantize()[1], torch.zeros_like(model[0].weight[1]))


def test_pruned_zeros_survive_quantization():
    compressed = netpress.compress(tiny_cnn(), [MagnitudePruning(), UniformQuantization(3)], Budget(sparsity=0.7))
    assert compressed.summary["sparsity"] >= 0.7


def test_a_file_on_another_architecture_names_the_tensors_that_do_not_fit():
    model = tiny_cnn()
    model[1].running_mean.fill_(0.5)
    model[1].num_batches_tracked.fill_(7)
    compressed = netpress.compress(model, UniformQuantization(4))
    no_norm = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.Identity(), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10), nn.Linear(10, 2)
    )
    with pytest.raises(ModelSourceError, match=r"missing 5\.weight, 5\.bias; unexpected 1\.weight, 1\.bias, 1\.running_mean"):
        compressed.to_module(no_norm)
    # BatchNorm loads its statistics and counter with its weights, one layer at a time, as a whole load would.
    norm = compressed.to_module(tiny_cnn())[1]
    assert int(norm.num_batches_tracked) == 7 and bool((norm.running_mean == 0.5).all())


def test_an_embedding_table_is_compressed_like_any_weight(tmp_path):
    """In a language model the token table is often the largest weight; it used to be stored raw."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(50, 16), nn.Flatten(), nn.Linear(16 * 4, 3))
    methods = [MagnitudePruning("lamp"), UniformQuantization(4, per_channel=True)]
    compressed = netpress.compress(model, methods, Budget(sparsity=0.5))
    assert set(compressible_weights(model)) == {"0.weight", "2.weight"}
    assert isinstance(compressed.tensors["0.weight"].unpack(), Codes)  # coded, not raw
    zeros = sum(int((compressed.state_dict()[n] == 0).sum()) for n in ("0.weight", "2.weight"))
    assert zeros == target_zeros(0.5, 50 * 16 + 64 * 3)
    path = tmp_path / "e.press"
    netpress.save(compressed, path)
    tokens = torch.randint(0, 50, (5, 4))
    torch.testing.assert_close(netpress.load(path, model=model)(tokens), compressed.to_module(model)(tokens), rtol=0, atol=0)
    assert not uncompressed_layers(model)


class _SharedTable(nn.Module):
    """T5's pattern: one embedding table under two names (encoder and decoder)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Embedding(10, 4)
        self.encoder_tokens = self.shared
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder_tokens(x).mean(1))


def test_a_shared_embedding_table_is_coded_once_under_its_first_name(tmp_path):
    model = _SharedTable()
    compressed = netpress.compress(model, UniformQuantization(4))
    assert isinstance(compressed.tensors["head.weight"].unpack(), Codes)
    assert isinstance(compressed.tensors["shared.weight"].unpack(), Codes) and "encoder_tokens.weight" not in compressed.tensors
    assert uncompressed_layers(model) == {}
    netpress.save(compressed, tmp_path / "s.press")
    loaded = netpress.load(tmp_path / "s.press", model=_SharedTable())
    assert loaded.encoder_tokens.weight is loaded.shared.weight
    assert torch.equal(loaded.shared.weight, compressed.tensors["shared.weight"].dequantize())
    assert compressed.summary["tied"] == {"encoder_tokens.weight": "shared.weight"}
    assert set(compressed.state_dict()) == set(model.state_dict())  # what decompress writes: every name
    apart = netpress.load(tmp_path / "s.press", model=_TableApart())  # an architecture without the tie gets a copy
    assert torch.equal(apart.encoder_tokens.weight, apart.shared.weight)
    for names in (["encoder_tokens"], ["shared", "encoder_tokens"]):  # one name of a layer keeps it under both
        kept = netpress.compress(model, UniformQuantization(4), keep=names)
        assert torch.equal(kept.tensors["shared.weight"], model.shared.weight.detach())


@pytest.mark.parametrize("method", ["sws", "self-compress"])
def test_the_retraining_methods_refuse_a_tied_weight(method):
    from netpress.methods import SelfCompression, SoftWeightSharing

    chosen = SoftWeightSharing(epochs=1) if method == "sws" else SelfCompression(steps=1)
    data = Subset(_TableData(), list(range(8)), 0)
    model = _TableApart()
    model.encoder_tokens.weight = model.shared.weight  # two layers, one tied weight
    with pytest.raises(UnsupportedModelError, match="shared.weight = encoder_tokens.weight: one weight under several names"):
        chosen.apply(model, data)


class _TableData(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int):
        return torch.tensor([i, (i + 1) % 10]), i % 3


class _TableApart(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared, self.encoder_tokens, self.head = nn.Embedding(10, 4), nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shared(x[:, :1]).mean(1) + self.encoder_tokens(x[:, 1:]).mean(1))


def test_training_methods_refuse_an_embedding_with_sparse_gradients():
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True))
    check_model(model)  # rounding or pruning it needs no gradient
    with pytest.raises(UnsupportedModelError, match="sparse=False"):
        check_model(model, trains=True)


def test_split_exact_meets_total_and_caps():
    assert sum(split_exact(10, [1, 1, 1], [5, 5, 5])) == 10
    assert split_exact(7, [10, 0, 0], [3, 5, 5])[0] == 3
    with pytest.raises(BudgetError):
        split_exact(20, [1, 1], [5, 5])
    # A floor above a layer's share is met, and the rest is shared in proportion by the others.
    assert split_exact(10, [1, 1, 2], [9, 9, 9], [6, 0, 0]) == [6, 1, 3]
    assert split_exact(10, [1, 1, 1], [5, 5, 5], [0, 0, 0]) == split_exact(10, [1, 1, 1], [5, 5, 5])


def test_split_exact_shares_a_capped_layers_overflow_in_proportion():
    # The first layer's share (≈ 1179) passes its cap: the rest go to the others as 100 : 1000 : 10.
    assert split_exact(2500, [990, 100, 1000, 10], [990, 2000, 2000, 2000]) == [990, 136, 1360, 14]
    # Uniform magnitude pruning keeps one weight per layer: the small layers' overflow goes in proportion.
    weights = [torch.randn(4), torch.randn(4), torch.randn(1000), torch.randn(300)]
    assert prune_counts(weights, 0.9, "uniform") == [3, 3, 902, 270]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), min_size=1, max_size=40), st.integers(0, 45))
def test_smallest_mask_is_the_head_of_a_stable_sort(values, count):
    """Ties (many here) are broken by position, exactly as the first ``count`` of a stable argsort."""
    scores = torch.tensor(values, dtype=torch.float64)
    expected = torch.zeros(len(values), dtype=torch.bool)
    expected[torch.argsort(scores, stable=True)[:count]] = True
    assert torch.equal(smallest_mask(scores, count), expected)


def _head_of_stable_sort(scores: list[torch.Tensor], total: int) -> list[int]:
    """Per-layer counts of the ``total`` lowest float64 scores of all layers, ties by position."""
    order = torch.argsort(torch.cat([s.double() for s in scores]), stable=True)
    chosen = torch.zeros(sum(len(s) for s in scores), dtype=torch.bool)
    chosen[order[:total]] = True
    return [int(part.sum()) for part in torch.split(chosen, [len(s) for s in scores])]


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0.0, 0.99))
def test_global_and_lamp_counts_equal_a_stable_sort_of_the_float64_scores(seed, sparsity):
    """Selecting on float32-rounded scores gives the counts of the float64 ranking, ties (here many) by position."""
    g = torch.Generator().manual_seed(seed)
    weights = [
        torch.randint(-3, 4, (n,), generator=g).float() * 0.5 + 0.25 + torch.randn(n, generator=g) * (n % 2) for n in (7, 50, 200)
    ]
    total = target_zeros(sparsity, sum(w.numel() for w in weights))
    assert prune_counts(weights, sparsity, "global") == _head_of_stable_sort([w.abs() for w in weights], total)
    assert prune_counts(weights, sparsity, "lamp") == _head_of_stable_sort([_lamp_scores(w) for w in weights], total)


def test_scores_equal_in_float32_are_ranked_by_their_exact_values():
    # 1 + 1e-12 and 1 round to the same float32: the exact scores decide, then position among equals.
    layers = [torch.tensor([1 + 1e-12, 5.0, 1.0]), torch.tensor([1.0, 0.5, 1 - 1e-12])]
    for total in range(7):
        assert _lowest_per_layer(layers, total, lambda s: s) == _head_of_stable_sort(layers, total)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: Budget(), BudgetError, "exactly one"),
        (lambda: Budget(ratio=0.5), BudgetError, "> 1"),
        (lambda: Budget(sparsity=1.0), BudgetError, "fraction"),
        (lambda: Budget(ratio=float("inf")), BudgetError, "finite"),
        (lambda: Budget(ratio="20x"), BudgetError, "number"),
        (lambda: MagnitudePruning("random"), BudgetError, "allocation"),
        (lambda: UniformQuantization(17), BudgetError, "bits"),
        (lambda: UniformQuantization(4, clip="percentile"), BudgetError, "clip must be one of max, mse"),
        (lambda: netpress.compress(tiny_cnn(), MagnitudePruning()), BudgetError, "needs a target"),
        (lambda: netpress.compress(tiny_cnn(), UniformQuantization(4), Budget(params=0.3)), BudgetError, "params"),
        (lambda: netpress.compress(nn.Sequential(nn.ReLU()), UniformQuantization(4)), UnsupportedModelError, "supported"),
        (lambda: netpress.compress(tiny_cnn(), []), BudgetError, "at least one"),
        (
            lambda: netpress.compress(tiny_cnn(), [MagnitudePruning(), MagnitudePruning("lamp")], Budget(sparsity=0.5)),
            BudgetError,
            "magnitude appears twice in one call",
        ),
        (lambda: FCPTS(seed=-1), BudgetError, "seed"),
        (lambda: L2(seed=2**32), BudgetError, "seed"),
        (lambda: Fold(seed=1.5), BudgetError, "seed"),
        (lambda: calibration_subset(load_dataset("digits", "train"), 8, seed=-1), BudgetError, "seed"),
        (lambda: zoo.train("lenet300", epochs=0), BudgetError, "epochs"),
        (lambda: zoo.train("lenet300", epochs=2.5), BudgetError, "epochs must be a whole number"),
        (lambda: netpress.evaluate(tiny_cnn(), load_dataset("digits"), batch_size=0), BudgetError, "batch_size"),
        (lambda: zoo.train("lenet300", device="gpu"), BudgetError, "cpu or cuda"),
        (lambda: FCPTS(iterations=5.5), BudgetError, "whole number"),
        (lambda: L2(temperature=float("nan")), BudgetError, "finite"),
        (lambda: Fold(dir_steps=0), BudgetError, "dir_steps"),
        (lambda: Fold(input_dtype="float33"), BudgetError, "torch dtype"),
        (lambda: Fold(prune_fraction="0.5"), BudgetError, "prune_fraction must be a finite number"),
        (lambda: Fold(input_shape=5), BudgetError, "input_shape is one sample's shape"),
        (lambda: L2(raw_dtype=["fp16"]), BudgetError, "raw_dtype must be one of fp32, fp16"),
        (lambda: netpress.compress(tiny_cnn(), UniformQuantization(8), raw_dtype=["fp16"]), BudgetError, "one of fp32, fp16"),
        (lambda: SelfCompression(restore_bits=None), BudgetError, "restore_bits must be a finite number"),
        (lambda: SelfCompression(guard=5.0), BudgetError, "guard must be at most 1"),
        (lambda: UniformQuantization(4, per_channel="no"), BudgetError, "True or False"),
        (lambda: UniformQuantization(4, group_size=0), BudgetError, "group_size must be a whole number ≥ 1"),
        (lambda: KMeansQuantization(levels=2), BudgetError, r"from 3 to 65536 \(zero and a value of each sign"),
        (lambda: UniformQuantization(4, per_channel=True, group_size=64), BudgetError, "not both"),
        (lambda: Budget(sparsity="0.5"), BudgetError, "sparsity must be a number, got '0.5'"),
        (lambda: netpress.compress(_all_zero(), MagnitudePruning(), Budget(sparsity=0.5)), BudgetError, "nothing left to prune"),
        (lambda: Budget(ratio=10**400), BudgetError, "beyond the range of a float"),
        (lambda: netpress.compress(_empty_layer(), UniformQuantization(4)), UnsupportedModelError, "no elements"),
        (lambda: Budget(ratio=2, reference_bytes=-5), BudgetError, "reference_bytes"),
        (lambda: calibration_subset(load_dataset("digits"), 64), DataError, "test split"),
        (lambda: calibration_subset(load_dataset("digits", "train"), 64.0), DataError, "whole number"),
        (lambda: netpress.compress(tiny_cnn(), MagnitudePruning, Budget(sparsity=0.5)), BudgetError, "not a method"),
        (lambda: netpress.compress(tiny_cnn(), MagnitudePruning(), 0.5), BudgetError, "must be a Budget"),
        (lambda: netpress.load(5), FormatError, "named by its path"),
        (lambda: netpress.inspect(5), FormatError, "named by its path"),
        (lambda: netpress.save(netpress.compress(tiny_cnn(), UniformQuantization(4)), 5), OutputError, "named by its path"),
        (lambda: netpress.compress(tiny_cnn(), MagnitudePruning(), Budget(sparsity=0.5), keep=5), BudgetError, "keep takes"),
        (
            lambda: netpress.press(tiny_cnn(), MagnitudePruning(), Budget(sparsity=0.5), out="m.press", data="digits", calib=64),
            BudgetError,
            "uses no calibration data; drop calib",
        ),
        (
            lambda: netpress.compress(tiny_cnn(), FCPTS(), Budget(sparsity=0.5), load_dataset("digits", "train")),
            DataError,
            "Subset",
        ),
        (lambda: netpress.compress(tiny_cnn(), [UniformQuantization(4), Fold()], Budget(params=0.3)), BudgetError, "first"),
        (lambda: netpress.compress(tiny_cnn().half(), UniformQuantization(4)), UnsupportedModelError, "float32"),
        (lambda: netpress.compress(_weight_normed(), UniformQuantization(4)), UnsupportedModelError, "parametrization"),
        (lambda: netpress.evaluate(_two_outputs(), load_dataset("digits")), UnsupportedModelError, "logits"),
        (
            lambda: netpress.evaluate(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), load_dataset("digits")),
            DataError,
            "class indices",
        ),
        (
            lambda: netpress.sweep(tiny_cnn(), MagnitudePruning(), Budget(sparsity=0.5), out_dir="s"),
            BudgetError,
            "list of targets",
        ),
        (
            lambda: netpress.sweep(
                tiny_cnn(), MagnitudePruning(), [Budget(sparsity=0.5), Budget(sparsity=0.5000001)], out_dir="s"
            ),
            BudgetError,
            "same file",
        ),
        (lambda: netpress.press(tiny_cnn(), UniformQuantization(4), out="x.press", seed=-1), BudgetError, "seed"),
        (lambda: netpress.compress(tiny_cnn().to("meta"), UniformQuantization(4)), UnsupportedModelError, "meta device"),
        (
            lambda: netpress.compress(tiny_cnn(), [UniformQuantization(4), MagnitudePruning()], Budget(sparsity=0.5)),
            BudgetError,
            "put uniform last",
        ),
        (
            lambda: netpress.sweep(tiny_cnn(), [UniformQuantization(4), MagnitudePruning()], [Budget(sparsity=0.5)], out_dir="s"),
            BudgetError,
            "put uniform last",
        ),
        (lambda: netpress.compress("zoo:lenet300", UniformQuantization(4)), ModelSourceError, "load_model"),
        (lambda: netpress.compress(tiny_cnn().state_dict(), UniformQuantization(4)), ModelSourceError, "got OrderedDict"),
        (lambda: netpress.load_model(None), ModelSourceError, "or a path, got NoneType"),
        (lambda: netpress.compress(tiny_cnn(), "magnitude", Budget(sparsity=0.5)), BudgetError, "is a name"),
        (lambda: L2(per_channel="x"), BudgetError, "True or False"),
        (lambda: zoo.train("lenet300", device="cpu:1"), BudgetError, "one cpu device"),
        (lambda: zoo.train("lenet300", device="meta"), BudgetError, "cpu or cuda"),
        (lambda: api.build_architecture("tests.archs:on_meta"), ModelSourceError, "meta device"),
        (lambda: netpress.compress(tiny_cnn(), MagnitudePruning(), Budget(sparsity=0.9999999)), BudgetError, "removes all"),
        (
            lambda: netpress.compress(
                tiny_cnn(), FCPTS(), Budget(sparsity=0.995), calibration_subset(load_dataset("digits", "train"), 16)
            ),
            BudgetError,
            "the most it can remove from this model is 0.9897",
        ),
        (lambda: netpress.save(tiny_cnn(), "x.press"), OutputError, "what netpress.compress"),
        (
            lambda: netpress.compress(torch.nn.utils.parametrizations.weight_norm(nn.Embedding(10, 4)), UniformQuantization(4)),
            UnsupportedModelError,
            "weight is computed at every forward pass",
        ),
        (
            lambda: netpress.compress(nn.Sequential(nn.Embedding(10, 4, max_norm=1.0)), UniformQuantization(4)),
            UnsupportedModelError,
            "max_norm=None",
        ),
        (
            lambda: netpress.save(netpress.compress(tiny_cnn(), UniformQuantization(4)), "x.txt"),
            OutputError,
            "ending in .press",
        ),
        (
            lambda: api.press(tiny_cnn(), UniformQuantization(4), out="p.txt"),
            OutputError,
            "ending in .press",
        ),
        (lambda: api.build_architecture("tests.archs:raises"), ModelSourceError, "checkpoint path not configured"),
        (lambda: api.build_architecture("tests.archs:needs_an_argument"), ModelSourceError, "no arguments"),
        (
            lambda: calibration_subset(torch.utils.data.Subset(load_dataset("digits", "test"), range(100)), 10),
            DataError,
            "test split",
        ),
        (
            lambda: netpress.compress(
                tiny_cnn(), FCPTS(), Budget(sparsity=0.5), Subset(load_dataset("digits", "test"), list(range(64)), 0)
            ),
            DataError,
            "test split",
        ),
    ],
)
def test_bad_configuration_is_refused(call, error, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error, match=message):
        call()
    assert not list(tmp_path.iterdir()), "a refused call left files behind"


def _all_zero() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 4))
    nn.init.zeros_(model[0].weight)
    return model


def _empty_layer() -> nn.Module:
    model = nn.Sequential(nn.Linear(4, 1))
    model[0].weight = nn.Parameter(torch.zeros(0, 4))
    return model


def _weight_normed() -> nn.Module:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    torch.nn.utils.parametrizations.weight_norm(model[1])
    return model


class _TwoOutputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x.flatten(1))
        return y, y


def _two_outputs() -> nn.Module:
    return _TwoOutputs()


def test_press_counts_parameters_alike_before_and_after(tmp_path):
    report = netpress.press(tiny_cnn(), UniformQuantization(4), out=tmp_path / "c.press")
    assert report["params_after"] == report["params_before"]  # BatchNorm statistics are buffers, not parameters


def test_an_integer_target_is_the_same_target_as_its_float():
    """The stored summary must not tell 30 from 30.0: it is part of the file, whose size L² fits."""
    assert Budget(ratio=30).to_dict() == {"ratio": 30.0} and isinstance(Budget(ratio=30).ratio, float)
    assert str(Budget(ratio=30).to_dict()) == str(Budget(ratio=30.0).to_dict())


def test_non_finite_weights_are_refused():
    model = tiny_cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(UnsupportedModelError, match="0.weight.*NaN"):
        netpress.compress(model, UniformQuantization(8))


def test_a_method_that_needs_data_refuses_to_run_without_it():
    class NeedsData(UniformQuantization):
        needs = "calibration"

    with pytest.raises(DataError, match="needs calibration data"):
        netpress.compress(tiny_cnn(), NeedsData(4))


def test_press_refuses_a_dataset_object_it_would_both_calibrate_and_evaluate_on(tmp_path):
    data = torch.utils.data.TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    with pytest.raises(DataError, match=r"\(train, test\) pair"):
        netpress.press(tiny_cnn(), UniformQuantization(4), out=tmp_path / "x.press", data=data)
    assert not (tmp_path / "x.press").exists()


def test_kmeans_keeps_zeros_and_uses_at_most_the_levels_asked_for():
    model = tiny_cnn()
    pruned = netpress.compress(model, [MagnitudePruning(), KMeansQuantization(6)], Budget(sparsity=0.7))
    assert pruned.summary["sparsity"] >= 0.7
    for name, w in compressible_weights(model).items():
        codes = pruned.tensors[name].unpack()  # held encoded: coded one layer at a time
        assert codes.num_levels <= 6 and codes.zero is not None
        survivors = codes.dequantize()[codes.dequantize() != 0]
        centroids = codes.levels[codes.levels != 0]
        nearest = (w.detach()[codes.dequantize() != 0].unsqueeze(1) - centroids.unsqueeze(0)).abs().argmin(1)
        assert torch.equal(survivors, centroids[nearest])  # every survivor sits on its nearest centroid


def test_kmeans_on_already_shared_weights_keeps_them_and_stores_only_used_levels():
    """A 4-bit input re-shared into 256 levels: its own 15 values are the exact codebook, not 255 centroids."""
    quantized = netpress.compress(tiny_cnn(), UniformQuantization(4)).to_module(tiny_cnn())
    shared = netpress.compress(quantized, KMeansQuantization(256))
    for name, w in compressible_weights(quantized).items():
        codes = shared.tensors[name].unpack()
        assert torch.equal(codes.dequantize(), w.detach())
        assert codes.num_levels == len(torch.unique(torch.cat([torch.zeros(1), w.detach().reshape(-1)])))


def test_press_leaves_the_global_random_state_alone_and_is_reproducible(tmp_path):
    """Every method seeds its own generator; press() must not reseed the caller's global one."""
    model = tiny_cnn()  # the factory seeds torch itself
    torch.manual_seed(123)
    state = torch.get_rng_state()
    netpress.press(model, MagnitudePruning("lamp"), Budget(sparsity=0.5), out=tmp_path / "a.press")
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(7)
    netpress.press(model, MagnitudePruning("lamp"), Budget(sparsity=0.5), out=tmp_path / "b.press")
    assert (tmp_path / "a.press").read_bytes() == (tmp_path / "b.press").read_bytes()


def test_the_fp32_reference_of_a_model_with_a_shared_layer_stores_it_once():
    model = tied()
    untied = nn.Sequential(*list(model)[:5], nn.Linear(32, 10))  # the same layers, the shared one used once
    assert fp32_bytes(model) < fp32_bytes(untied) + 32 * 33 * 4


def test_a_weight_tied_under_several_names_loads_from_the_one_name_a_file_keeps(tmp_path):
    # safetensors' save_model keeps one name per shared tensor; here "d", neither the first nor the only other.
    model = _FourTied()
    save_file({"d.weight": model.d.weight.detach().clone()}, str(tmp_path / "t.safetensors"))
    handle = api.load_model(tmp_path / "t.safetensors", "tests.test_methods:_FourTied")
    assert torch.equal(handle.module.a.weight, model.d.weight)
    compressed = netpress.compress(handle, UniformQuantization(8))
    assert list(compressed.tensors) == ["a.weight"]  # coded once, under the first name
    netpress.save(compressed, tmp_path / "t.press")
    loaded = netpress.load(tmp_path / "t.press", model=_FourTied())
    assert loaded.d.weight is loaded.a.weight and torch.equal(loaded.a.weight, compressed.tensors["a.weight"].dequantize())


def test_a_layer_used_twice_is_coded_once_and_loads_back_used_twice(tmp_path):
    model = tied()
    compressed = netpress.compress(model, MagnitudePruning(), Budget(sparsity=0.5))
    assert "5.weight" not in compressed.tensors
    coded = {c for c, stored in compressed.tensors.items() if not isinstance(stored, torch.Tensor)}
    assert coded == {"1.weight", "3.weight", "6.weight"}
    assert compressed.summary["sparsity"] == 0.5  # of the weights, the shared one counted once
    netpress.save(compressed, tmp_path / "t.press")
    loaded = netpress.load(tmp_path / "t.press", model=tied())
    assert loaded[3].weight is loaded[5].weight
    x = torch.randn(4, 64)
    assert torch.equal(loaded(x), compressed.to_module(tied())(x))
    assert netpress.press(tied(), UniformQuantization(4), out=tmp_path / "u.press")["uncompressed_layers"] == {}


class _FourTied(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8, bias=False)
        self.b, self.c, self.d = nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False), nn.Linear(8, 8, bias=False)
        self.b.weight = self.c.weight = self.d.weight = self.a.weight

    def forward(self, x):
        return self.d(self.c(self.b(self.a(x))))


def test_a_long_output_name_is_written(tmp_path):
    out = tmp_path / ("a" * 240 + ".press")
    assert netpress.press(tiny_mlp(), UniformQuantization(8), out=out)["file_bytes"] == out.stat().st_size


def test_a_run_that_fails_while_measuring_its_file_leaves_the_old_file(tmp_path, monkeypatch):
    out = tmp_path / "m.press"
    out.write_bytes(b"an earlier result")

    def broken(*_args, **_kwargs):
        raise UnsupportedModelError("the compressed model does not run")

    monkeypatch.setattr(api, "load", broken)  # reading the written file back, to measure it
    with pytest.raises(UnsupportedModelError):
        netpress.press(tiny_mlp(), UniformQuantization(8), out=out, data="digits")
    assert out.read_bytes() == b"an earlier result" and [p.name for p in tmp_path.iterdir()] == ["m.press"]


def test_a_half_precision_model_is_refused_with_what_to_do():
    with pytest.raises(UnsupportedModelError, match=r"float16; netpress compresses float32 weights: call model.float\(\)"):
        check_model(tiny_mlp().half())


def test_global_counts_are_exact_across_the_whole_float32_range():
    """Radix selection on the bit patterns: zeros, subnormals, values one unit apart in the last place, huge values."""
    one = torch.tensor(1.0)
    after_one = torch.nextafter(one, torch.tensor(2.0))
    layers = [
        torch.tensor([0.0, 1e-45, 3e-39, 1.0, 0.0, 1e30]),
        torch.stack([after_one, one, one, torch.tensor(0.0), torch.tensor(1e-45), torch.tensor(2.5)]),
        torch.full((5,), 1.0),
    ]
    for total in range(sum(len(w) for w in layers) + 1):
        assert _lowest_per_layer(layers, total, torch.abs) == _head_of_stable_sort([w.abs() for w in layers], total)


LAYERWISE = {
    "global": ([MagnitudePruning("global")], Budget(sparsity=0.8)),
    "lamp+4bit": ([MagnitudePruning("lamp"), UniformQuantization(4, per_channel=True)], Budget(sparsity=0.6)),
    "erk+kmeans": ([MagnitudePruning("erk"), KMeansQuantization(8)], Budget(sparsity=0.5)),
    "groups": ([UniformQuantization(3, group_size=5, clip="mse")], None),
}


def _attention_layer() -> nn.Module:
    torch.manual_seed(5)
    return nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0)  # a packed in-projection: three parts to allocate


@pytest.mark.parametrize("setting", LAYERWISE)
@pytest.mark.parametrize("raw_dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("build", [functools.partial(random_model, 5), _attention_layer], ids=["random", "attention"])
def test_data_free_stages_run_layer_by_layer_write_the_file_the_whole_model_stages_write(setting, raw_dtype, build):
    methods, budget = LAYERWISE[setting]
    model = build()
    assert api._layerwise(methods)
    by_layer = api._compress_by_layer(model, methods, budget, raw_dtype)
    by_model = api._compress_by_model(model, methods, budget, None, raw_dtype)
    assert by_layer[1] == by_model[1]  # the report rows
    files = [netpress.codec.to_bytes(CompressedModel(tensors)) for tensors, _ in (by_layer, by_model)]
    assert files[0] == files[1]


def test_data_free_stages_never_copy_the_model(monkeypatch):
    """Run layer by layer, a global ranking and its quantizer hold the model once (DESIGN §8): no deepcopy."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was copied")

    model = random_model(6)
    monkeypatch.setattr(copy, "deepcopy", refuse)
    compressed = netpress.compress(model, [MagnitudePruning("lamp"), UniformQuantization(4)], Budget(sparsity=0.7))
    assert compressed.summary["sparsity"] >= 0.7
    with pytest.raises(AssertionError, match="copied"):  # the whole-model stages do copy
        MagnitudePruning().apply(model, budget=Budget(sparsity=0.7))


class _WeightNamedFirstElsewhere(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(4, 4))  # registered first, outside a compressible layer
        self.fc = nn.Linear(4, 4, bias=False)
        self.fc.weight = self.scale


def test_a_weight_named_first_outside_its_layer_is_refused_by_the_training_methods_and_coded_by_the_others(tmp_path):
    model = _WeightNamedFirstElsewhere()
    with pytest.raises(UnsupportedModelError, match="fc.weight is the tensor scale names first"):
        check_model(model, trains=True)
    compressed = netpress.compress(model, UniformQuantization(4))
    assert list(compressed.tensors) == ["fc.weight"] and compressed.summary["tied"] == {"scale": "fc.weight"}
    netpress.save(compressed, tmp_path / "w.press")
    loaded = netpress.load(tmp_path / "w.press", model=_WeightNamedFirstElsewhere())
    assert loaded.scale is loaded.fc.weight and torch.equal(loaded.scale, compressed.tensors["fc.weight"].dequantize())


def test_a_kept_layer_keeps_the_layer_tied_to_it_out_of_the_uncompressed_list(tmp_path):
    model = _TableApart()
    model.encoder_tokens.weight = model.shared.weight
    report = netpress.press(model, UniformQuantization(4), out=tmp_path / "k.press", keep=["encoder_tokens"])
    assert report["kept_layers"] == ["encoder_tokens"] and report["uncompressed_layers"] == {}
    assert not any(m.get("name") == "shared.weight" for m in report["layers"]["uniform"])


def test_a_stage_on_a_file_of_fp16_floats_keeps_them_in_fp16_unless_it_sized_its_file_in_fp32(tmp_path):
    from netpress.methods import SoftWeightSharing

    path = tmp_path / "half.press"
    netpress.save(netpress.compress(tiny_cnn(), MagnitudePruning(), Budget(sparsity=0.5), raw_dtype="fp16"), path)
    handle = api.load_model(path, arch="tests.archs:tiny_cnn")
    assert handle.raw_dtype == "fp16"
    digits = calibration_subset(load_dataset("digits", "train"), 64, seed=0)
    tuned = api.compress(handle, FCPTS(iterations=2, batch_size=16), Budget(sparsity=0.6), digits)  # whole-model path
    assert tuned.tensors["0.weight"].values.dtype == torch.float16 and tuned.tensors["0.bias"].dtype == torch.float16
    sized = api.compress(handle, SoftWeightSharing(epochs=1), Budget(ratio=3), digits)  # sized in fp32: written so
    assert sized.tensors["0.bias"].dtype == torch.float32
    mixed = netpress.compress(tiny_cnn(), MagnitudePruning(), Budget(sparsity=0.5))  # fp32 floats: nothing inherited
    netpress.save(mixed, tmp_path / "full.press")
    assert api.load_model(tmp_path / "full.press", arch="tests.archs:tiny_cnn").raw_dtype is None


def test_press_and_sweep_check_their_outputs_before_a_ratio_search_compresses_a_stand_in(tmp_path, monkeypatch):
    def searched(*args):
        raise AssertionError("the ratio check ran before the output check")

    monkeypatch.setattr(api, "_check_searched_ratios", searched)
    with pytest.raises(OutputError, match="ending in .press"):
        api.press(tiny_cnn(), MagnitudePruning(), Budget(ratio=4), out=tmp_path / "p.txt")
    with pytest.raises(OutputError, match="out_dir is a folder's path"):
        api.sweep(tiny_cnn(), MagnitudePruning(), [Budget(ratio=4)], out_dir=5)
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(OutputError, match="taken is a file, not a folder"):
        api.sweep(tiny_cnn(), MagnitudePruning(), [Budget(ratio=4)], out_dir=tmp_path / "taken")


class _Recurrent(nn.Module):
    def __init__(self, kind: type[nn.RNNBase] = nn.GRU, **options):
        super().__init__()
        torch.manual_seed(0)
        width = (options.get("proj_size") or 16) * (1 + options.get("bidirectional", 0))
        self.rnn, self.fc = kind(8, 16, batch_first=True, **options), nn.Linear(width, 4)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1])


def test_compress_names_the_layers_it_stores_as_floats():
    """A bilinear layer is no layer a method codes: compress() says so, as press's report does."""
    model = nn.Sequential(nn.Linear(8, 8), nn.Bilinear(8, 8, 4))
    compressed = netpress.compress(model, MagnitudePruning(), Budget(sparsity=0.5))
    assert compressed.details["uncompressed_layers"] == {"1": {"type": "Bilinear", "params": 260}}


@pytest.mark.parametrize(
    "kind, options, coded",
    [
        (nn.GRU, {}, ["rnn.weight_ih_l0", "rnn.weight_hh_l0"]),
        (nn.LSTM, {"num_layers": 2}, ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l1", "rnn.weight_hh_l1"]),
        (
            nn.RNN,
            {"bidirectional": True},
            ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_ih_l0_reverse", "rnn.weight_hh_l0_reverse"],
        ),
        (nn.LSTM, {"proj_size": 8}, ["rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.weight_hr_l0"]),
    ],
)
def test_recurrent_weights_are_coded_and_come_back_exactly(tmp_path, kind, options, coded):
    """Every input, recurrent and projection weight of an RNN / LSTM / GRU is coded (its biases stay raw), counts
    toward the sparsity target, and the loaded model runs as the compressed one."""
    model = _Recurrent(kind, **options).eval()
    assert list(netpress.methods.compressible_weights(model)) == [*coded, "fc.weight"]
    compressed = netpress.compress(model, [MagnitudePruning("lamp"), UniformQuantization(6)], Budget(sparsity=0.6))
    assert compressed.details["uncompressed_layers"] == {}
    weights = netpress.methods.compressible_weights(model)
    zeros = sum(int((compressed.state_dict()[n] == 0).sum()) for n in weights)
    assert zeros >= netpress.methods.base.target_zeros(0.6, sum(w.numel() for w in weights.values()))
    netpress.save(compressed, tmp_path / "r.press")
    kinds = {t["name"]: t["kind"] for t in netpress.inspect(tmp_path / "r.press")["tensors"]}
    assert all(kinds[n] != "raw" for n in coded) and all(kinds[n] == "raw" for n in kinds if ".bias" in n)
    loaded = netpress.load(tmp_path / "r.press", model=_Recurrent(kind, **options)).eval()
    x = torch.randn(3, 5, 8)
    assert torch.equal(loaded(x), compressed.to_module(_Recurrent(kind, **options)).eval()(x))


@pytest.mark.parametrize(
    "kind, options, counts",
    [
        (nn.LSTM, {}, [4, 4]),
        (nn.GRU, {"bidirectional": True}, [3, 3, 3, 3]),
        (nn.RNN, {"num_layers": 2}, [1, 1, 1, 1]),
        (nn.LSTM, {"proj_size": 8}, [4, 4, 1]),
    ],
)
def test_an_allocation_counts_each_gate_of_a_recurrent_weight_as_a_layer(kind, options, counts):
    model = _Recurrent(kind, **options)
    weights = netpress.methods.compressible_weights(model)
    assert netpress.methods.base.part_counts(weights) == [*counts, 1]
    compressed = netpress.compress(model, MagnitudePruning("uniform"), Budget(sparsity=0.5))
    rows = {r["name"]: r for r in compressed.details["layers"]["magnitude"]}
    for name, parts in zip(weights, counts):
        gates = compressed.state_dict()[name].chunk(parts)
        assert {int((g == 0).sum()) for g in gates} == {gates[0].numel() // 2}  # each gate's rows lose half
        assert rows[name].get("part_sparsity", [0.5]) == [0.5] * parts


class _Cell(nn.Module):
    """An LSTMCell run step by step over the 8 rows of an 8×8 image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cell, self.fc = nn.LSTMCell(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = None
        for row in x.reshape(x.shape[0], 8, 8).unbind(1):
            state = self.cell(row, state)
        return self.fc(state[0])


def test_a_recurrent_cell_is_coded_gate_by_gate(tmp_path):
    model = _Cell().eval()
    weights = netpress.methods.compressible_weights(model)
    assert list(weights) == ["cell.weight_ih", "cell.weight_hh", "fc.weight"]
    assert netpress.methods.base.part_counts(weights) == [4, 4, 1]
    compressed = netpress.compress(model, [MagnitudePruning("uniform"), UniformQuantization(8)], Budget(sparsity=0.5))
    gates = compressed.state_dict()["cell.weight_hh"].chunk(4)
    assert {int((g == 0).sum()) for g in gates} == {128} and compressed.details["uncompressed_layers"] == {}
    netpress.save(compressed, tmp_path / "c.press")
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(netpress.load(tmp_path / "c.press", model=_Cell()).eval()(x), compressed.to_module(_Cell()).eval()(x))


def test_a_gate_pruned_away_is_warned_about_as_an_emptied_layer_is():
    model = _Recurrent(nn.LSTM)
    with torch.no_grad():
        model.rnn.weight_hh_l0[16:32] *= 1e-6  # the forget gate's recurrent rows: the smallest by far
    with pytest.warns(netpress.NetpressWarning, match=r"every weight of rnn\.weight_hh_l0 \(part 2 of 4\) is zero"):
        netpress.compress(model, MagnitudePruning("global"), Budget(sparsity=0.3))


def test_a_gate_count_a_tie_hides_splits_nothing():
    """Without its projection weight (coded under a tied layer's name), an LSTM's hidden size cannot be read: the
    recurrent weight's width is the projection's, which would give 8 parts, no gate count."""
    lstm = nn.LSTM(8, 16, proj_size=4)
    weights = {f"rnn.{n}": p for n, p in lstm.named_parameters() if n.startswith("weight_")}
    assert netpress.methods.base.part_counts(weights) == [4, 4, 1]
    del weights["rnn.weight_hr_l0"]
    assert netpress.methods.base.part_counts(weights) == [1, 1]


def test_a_recurrent_layer_named_by_one_weight_is_kept_whole():
    model = _Recurrent(nn.LSTM)
    compressed = netpress.compress(model, MagnitudePruning(), Budget(sparsity=0.5), keep=["rnn.weight_hh_l0"])
    assert compressed.summary["kept"] == ["rnn"]
    assert all(torch.equal(compressed.state_dict()[n], w) for n, w in model.rnn.named_parameters(prefix="rnn"))


def test_a_transposed_convolution_is_coded_like_any_convolution(tmp_path):
    """An autoencoder's decoder: its kernels are pruned and quantized with the rest, and come back exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.ConvTranspose2d(8, 1, 3, stride=2))
    compressed = netpress.compress(model, [MagnitudePruning(), UniformQuantization(6)], Budget(sparsity=0.8))
    netpress.save(compressed, tmp_path / "ae.press")
    back = netpress.load(tmp_path / "ae.press", model=copy.deepcopy(model))
    assert compressed.details["uncompressed_layers"] == {}
    assert float((back[2].weight == 0).float().mean()) > 0.5 and torch.equal(
        back[2].weight, compressed.to_module(model)[2].weight
    )


@pytest.mark.parametrize(
    "method",
    [SelfCompression(steps=2), SoftWeightSharing(epochs=1), L2(rounds=1, transform_steps=1, reconstruction_steps=1)],
    ids=lambda m: m.name,
)
def test_the_up_front_advice_on_an_unreachable_ratio_can_be_followed(method):
    """The check before any data is drawn sizes a calibration record as long as any real one, so the ratio it
    advises is never above what the run itself, with its subset, then allows."""
    data = calibration_subset(load_dataset("digits", "train"), 256)

    def advised(call) -> float:
        with pytest.raises(BudgetError, match=r"at most [0-9.]+x") as refused:
            call()
        return float(re.search(r"at most ([0-9.]+)x", str(refused.value)).group(1))

    before = advised(lambda: method.check_target(tiny_mlp(), Budget(ratio=200)))
    assert before <= advised(lambda: method.apply(tiny_mlp(), data, Budget(ratio=200)))


def test_a_collapsed_classifier_is_warned_about_and_a_sound_one_is_not():
    """compress() measures no accuracy: a model that no longer gives the original's answers on the training samples
    it was given is named in a warning (soft weight-sharing's spike taking every weight), a sound one is not."""
    train = calibration_subset(load_dataset("digits", "train"), 256, seed=0)
    torch.manual_seed(0)
    model = tiny_mlp()
    with pytest.warns(netpress.NetpressWarning, match=r"top class on only \d+% of 256 training samples after sws"):
        api.compress(model, SoftWeightSharing(epochs=1, tau=1e6), None, train)
    with warnings.catch_warnings():
        warnings.simplefilter("error", netpress.NetpressWarning)
        api.compress(model, FCPTS(iterations=2), Budget(sparsity=0.2), train)


def test_a_binary_classifier_that_always_gives_one_answer_is_warned_about():
    """On two classes a constant answer still agrees with the original most of the time (its most common answer's
    share): the warning compares with that, not with a fixed half."""
    train = calibration_subset(load_dataset("digits", "train"), 256, seed=0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 2))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    top = model(train.tensors()[0]).argmax(dim=1)
    common = int(torch.bincount(top).argmax())
    state["3.weight"].zero_()
    state["3.bias"].copy_(torch.tensor([1.0, 0.0]) if common == 0 else torch.tensor([0.0, 1.0]))
    assert float((top == common).float().mean()) > 0.5  # a fixed half would not have caught it
    with pytest.warns(netpress.NetpressWarning, match="nearer the .* of always giving the most common answer"):
        api._warn_collapsed(model, CompressedModel(state), [FCPTS()], None, train)
