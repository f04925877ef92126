import math

import pytest
import torch
from torch import nn

import netpress
from netpress import Budget, codec, compress
from netpress.data import calibration_subset, load_dataset
from netpress.errors import BudgetError, NetpressError, UnsupportedModelError
from netpress.evaluate import predict
from netpress.methods import ALLOCATIONS, FCPTS, MagnitudePruning
from netpress.methods.base import compressible_weights, distillation_loss, recalibrate_batchnorm, target_zeros
from netpress.methods.fcpts import _masked
from netpress.methods.teacher import LogitTeacher
from netpress.quant.kde import layer_sparsity, magnitude_density, silverman_bandwidth
from tests.archs import tiny_cnn, tiny_mlp

FAST = FCPTS(iterations=15, batch_size=32)


@pytest.fixture(scope="module")
def calibration():
    return calibration_subset(load_dataset("digits", "train"), 128, seed=0)


def test_kde_bridge_derivative_matches_a_finite_difference():
    w = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    t = torch.tensor(0.7, requires_grad=True)
    layer_sparsity(t, w, torch.Generator().manual_seed(1)).backward()
    delta = 0.02
    finite = float(((w.abs() < 0.7 + delta).float().mean() - (w.abs() < 0.7 - delta).float().mean()) / (2 * delta))
    exact = 2 * math.exp(-0.49 / 2) / math.sqrt(2 * math.pi)  # density of |N(0,1)| at 0.7
    assert abs(float(t.grad) - finite) < 0.05 * finite
    assert abs(float(t.grad) - exact) < 0.05 * exact


def test_the_bridge_counts_what_the_mask_prunes():
    # A weight exactly at the threshold is pruned by the mask (|w| > t survives), so the sparsity counts it.
    w = torch.full((10,), 0.5)
    assert float(layer_sparsity(torch.tensor(0.5), w)) == 1.0
    assert not _masked(w, torch.tensor(0.5)).any()


def _masked_as_a_graph(w: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The autograd graph ``_masked`` replaced: straight-through to w, a sigmoid surrogate to t."""
    mags = w.detach().abs()
    hard = (mags > threshold).to(w.dtype)
    soft = torch.sigmoid((mags - threshold) / (0.05 * mags.mean() + 1e-12))
    return w * hard + (w - w.detach()) * (1 - hard) + w.detach() * (soft - soft.detach())


@pytest.mark.parametrize("seed", range(6))
def test_masked_gives_the_values_and_gradients_of_its_graph_bit_for_bit(seed):
    """FCPTS files made before the memory-saving autograd Function stay reproducible: same bits, signed zeros included."""
    g = torch.Generator().manual_seed(seed)
    w0 = torch.randn((64, 8, 3, 3) if seed % 2 else (300, 100), generator=g) * 0.1
    w0[torch.rand(w0.shape, generator=g) < 0.2] = 0.0
    upstream = torch.randn(w0.shape, generator=g)
    upstream[torch.rand(w0.shape, generator=g) < 0.1] = -0.0
    results = []
    for masked in (_masked, _masked_as_a_graph):
        w, t = w0.clone().requires_grad_(), w0.abs().median().mul(0.5 + seed / 4).requires_grad_()
        out = masked(w, t)
        out.backward(upstream)
        results.append([out.detach(), w.grad, t.grad])
    for ours, graph in zip(*results):
        assert torch.equal(ours.view(torch.int32), graph.view(torch.int32))


def test_kde_density_integrates_to_one():
    sample = torch.rand(2000, generator=torch.Generator().manual_seed(0))
    h = silverman_bandwidth(sample)
    grid = torch.linspace(0, 3, 3001)
    density = torch.stack([magnitude_density(t, sample, h) for t in grid])
    assert abs(float(torch.trapezoid(density, grid)) - 1) < 0.01


@pytest.mark.parametrize("sparsity", [0.3, 0.77, 0.95])
def test_fcpts_meets_the_target_exactly(calibration, sparsity):
    model = tiny_mlp()
    result = FAST.apply(model, calibration, Budget(sparsity=sparsity))
    weights = compressible_weights(result.model)
    total = sum(w.numel() for w in weights.values())
    assert sum(int((w == 0).sum()) for w in weights.values()) == target_zeros(sparsity, total)
    assert {"erk_sparsity", "sparsity"} <= set(result.rows[0])


def test_fcpts_after_pruning_keeps_the_pruned_weights_zero(calibration):
    """FCPTS's straight-through gradient lets its own pruned weights grow back, never an earlier stage's."""
    model = MagnitudePruning("uniform").apply(tiny_mlp(), budget=Budget(sparsity=0.5)).model
    zero = {k: w == 0 for k, w in compressible_weights(model).items()}
    result = compress(model, FCPTS(iterations=15, batch_size=32, weight_lr=0.1), Budget(sparsity=0.6), calibration)
    weights = compressible_weights(result.to_module(tiny_mlp()))
    assert all(weights[k][z].eq(0).all() for k, z in zero.items())
    total = sum(w.numel() for w in weights.values())
    assert sum(int((w == 0).sum()) for w in weights.values()) == target_zeros(0.6, total)
    with pytest.raises(BudgetError, match="at least 0.5"):
        compress(model, FAST, Budget(sparsity=0.4), calibration)


def test_fcpts_is_reproducible_bit_for_bit(calibration):
    """The same seed gives the same tensors and the same file, byte for byte."""
    a, b = (compress(tiny_mlp(), FAST, Budget(sparsity=0.8), calibration) for _ in range(2))
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert codec.to_bytes(a) == codec.to_bytes(b)


def test_mixed_inputs_carry_the_dense_models_logits_and_skip_integer_inputs():
    model, inputs = tiny_mlp(), torch.randn(20, 64)
    teacher = LogitTeacher(model, inputs, 4.0)
    teacher.add_mixtures(model, 3, torch.Generator().manual_seed(0))
    assert teacher.size == 80 and teacher.pool.shape == (80, 64) and torch.equal(teacher.pool[:20], inputs)
    assert torch.allclose(teacher.logits, predict(model, teacher.pool), atol=1e-6)
    reader = torch.nn.Sequential(torch.nn.Embedding(9, 4), torch.nn.Flatten(), torch.nn.Linear(256, 3))
    tokens = LogitTeacher(reader, torch.randint(0, 9, (20, 64)), 4.0)
    tokens.add_mixtures(reader, 3, torch.Generator())
    assert tokens.size == 20


def test_calibration_comes_from_the_training_split(monkeypatch, tmp_path):
    import netpress.api

    splits = []
    original = netpress.api.load_dataset

    def spy(name, split="test"):
        splits.append(split)
        return original(name, split)

    monkeypatch.setattr(netpress.api, "load_dataset", spy)
    handle = netpress.ModelHandle(tiny_mlp(), {}, "digits", (1, 8, 8))
    report = netpress.press(handle, FAST, Budget(sparsity=0.5), out=tmp_path / "f.press", calib=64, seed=3)
    assert splits[0] == "train" and set(splits[1:]) == {"test"}
    train = load_dataset("digits", "train")
    assert report["calibration"]["indices"] == calibration_subset(train, 64, seed=3).indices
    assert report["calibration"]["n"] == 64
    assert netpress.inspect(tmp_path / "f.press")["summary"]["calibration"]["seed"] == 3


@pytest.mark.parametrize("sparsity", [0.5, 0.8, 0.95])
def test_fcpts_distils_at_least_as_well_as_every_baseline_with_batchnorm_reestimated(calibration, sparsity):
    """The start is scored, and optimisation runs, under re-estimated BatchNorm statistics; the
    safeguard then keeps whichever of start and learned distils better."""
    model = tiny_cnn().eval()
    inputs, _ = calibration.tensors()
    teacher = predict(model, inputs)
    result = FAST.apply(model, calibration, Budget(sparsity=sparsity))
    ours = float(distillation_loss(predict(result.model, inputs), teacher, FAST.temperature))
    for allocation in ALLOCATIONS:
        baseline = MagnitudePruning(allocation).apply(model, None, Budget(sparsity=sparsity)).model
        recalibrate_batchnorm(baseline, inputs)
        assert ours <= float(distillation_loss(predict(baseline, inputs), teacher, FAST.temperature)) + 1e-6


def test_a_start_that_distils_better_is_returned_exactly_as_the_baseline_makes_it(calibration):
    """FCPTS keeps only the start's counts and BatchNorm statistics while it optimises, and rebuilds the start
    model if it wins: the same tensors as its allocation's magnitude pruning with statistics re-estimated."""
    model = tiny_cnn().eval()
    result = FCPTS(iterations=5, batch_size=32, weight_lr=0.5).apply(model, calibration, Budget(sparsity=0.8))
    init = result.rows[0]["init"]
    assert result.rows[0]["kept"] == init  # a weight step this large leaves the learned model worse
    baseline = MagnitudePruning(init).apply(model, None, Budget(sparsity=0.8)).model
    recalibrate_batchnorm(baseline, calibration.tensors()[0])
    ours, theirs = result.model.state_dict(), baseline.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not any(m.training for m in result.model.modules())


def test_a_layer_used_twice_is_refused_and_the_callers_model_keeps_its_mode(calibration):
    shared = nn.Linear(64, 64)
    tied = nn.Sequential(nn.Flatten(), shared, nn.ReLU(), shared, nn.Linear(64, 10))
    with pytest.raises(UnsupportedModelError, match="1 is also 3: one layer used twice"):
        FAST.apply(tied, calibration, Budget(sparsity=0.5))
    model = tiny_cnn().train()
    netpress.compress(model, FAST, Budget(sparsity=0.5), calibration)
    netpress.evaluate(model, load_dataset("digits"))
    assert all(m.training for m in model.modules())


def test_fcpts_runs_under_no_grad(calibration):
    with torch.no_grad():  # e.g. called from the user's inference script
        compressed = compress(tiny_mlp(), FAST, Budget(sparsity=0.5), calibration)
    assert compressed.summary["sparsity"] == 0.5


def test_a_diverged_optimisation_is_named_before_anything_is_written(calibration):
    with pytest.raises(NetpressError, match="fcpts left NaN or infinite values in .*diverged"):
        compress(tiny_mlp(), FCPTS(iterations=5, weight_lr=1e20, batch_size=32), Budget(sparsity=0.5), calibration)
