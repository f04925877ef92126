"""L²: the dead-zone quantizer, the rate estimate, and a file that always meets the ratio target."""

import json
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from netpress import Budget, api
from netpress.codec import from_bytes, read_manifest, to_bytes
from netpress.codec.codes import deadzone_params
from netpress.codec.entropy import MAX_ALPHABET, encode_symbols
from netpress.compressed import CompressedModel, fp32_bytes
from netpress.data import calibration_subset, load_dataset
from netpress.errors import BudgetError
from netpress.methods import L2, Fold, MagnitudePruning
from netpress.methods.base import absorb_batchnorm_statistics
from netpress.methods.l2 import _Run
from netpress.quant.deadzone import deadzone_codes, deadzone_encode, deadzone_quantize
from netpress.quant.rate import estimated_bits
from tests.archs import tiny_cnn, tiny_mlp
from tests.test_cli import run

FAST = L2(rounds=1, transform_steps=10, reconstruction_steps=10, batch_size=32)


@pytest.fixture(scope="module")
def calibration():
    return calibration_subset(load_dataset("digits", "train"), 128, seed=0)


def test_deadzone_forward_and_backward_by_hand():
    w = torch.tensor([0.05, -0.3, 0.74, 0.0], requires_grad=True)
    edge = torch.tensor(0.1, requires_grad=True)
    step = torch.tensor(0.2, requires_grad=True)
    # 0.05 is inside the dead zone; -0.3 has code -1.5 (rounds half to even: -2); 0.74 has code 3.7 → 4.
    assert torch.allclose(deadzone_encode(w, edge, step), torch.tensor([0.25, -1.5, 3.7, 0.0]))
    out = deadzone_quantize(w, edge, step)
    assert torch.allclose(out, torch.tensor([0.0, -0.4, 0.8, 0.0]))
    out.sum().backward()
    assert torch.allclose(w.grad, torch.ones(4))  # straight through, inside and outside the dead zone
    assert torch.allclose(step.grad, torch.tensor(-0.5 + 0.3))  # Σ sign(w)(|q| − |c|) outside the dead zone
    assert torch.allclose(edge.grad, torch.tensor(-0.5))  # −2c for the weight rounded to zero inside it


@pytest.mark.parametrize("per_channel", [False, True])
def test_deadzone_codes_are_exact_and_stored_as_two_numbers_per_row(per_channel):
    w = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    shape = (8,) if per_channel else ()
    edge, step = torch.full(shape, 0.6), torch.linspace(0.2, 0.3, 8) if per_channel else torch.tensor(0.25)
    codes = deadzone_codes(w, edge, step)
    assert torch.allclose(codes.dequantize(), deadzone_quantize(w, edge, step), atol=1e-6)
    assert (codes.dequantize()[w.abs() <= 0.6] == 0).all()
    assert deadzone_params(codes.levels.numpy(), codes.zero) is not None
    data = to_bytes(CompressedModel({"w": codes}))
    manifest, _ = read_manifest(data)
    assert manifest["tensors"][0]["levels_form"] == "deadzone"
    back = from_bytes(data).tensors["w"]
    assert torch.equal(back.symbols, codes.symbols) and torch.equal(back.levels.view(torch.int32), codes.levels.view(torch.int32))


def test_a_grid_that_uses_every_symbol_the_codec_codes_is_kept_as_it_is():
    w = torch.arange(-32768, 32768, dtype=torch.float32)  # 16-bit codes (self-compression allows 16 bits): 65,536 symbols
    codes = deadzone_codes(w, torch.tensor(0.5), torch.tensor(1.0))
    assert codes.num_levels == MAX_ALPHABET and torch.equal(codes.dequantize(), w)


@pytest.mark.parametrize("per_channel", [False, True])
def test_a_grid_far_finer_than_the_weights_is_coarsened_to_what_the_codec_codes(per_channel):
    # A layer whose weights were near 1e-30 has a grid of that size; reconstruction then moves the weights by
    # its learning rate, 1e26 steps: the codes must still fit the codec's alphabet, and round-trip.
    w = torch.randn(4, 30, generator=torch.Generator().manual_seed(0)) * 1e-4
    shape = (4,) if per_channel else ()
    codes = deadzone_codes(w, torch.full(shape, 1e-32), torch.full(shape, 1e-32))
    assert codes.num_levels <= MAX_ALPHABET
    assert (codes.dequantize() - w).abs().max() <= w.abs().max() / 60000  # half a step of the finest grid that codes
    back = from_bytes(to_bytes(CompressedModel({"w": codes}))).tensors["w"]
    assert torch.equal(back.dequantize(), codes.dequantize())


def test_l2_names_the_real_value_beyond_float16_and_the_setting_that_stores_it():
    model = tiny_mlp().eval()
    bias = [n for n, p in model.named_parameters() if n.endswith("bias")][-1]
    with torch.no_grad():
        model.get_parameter(bias).fill_(1e5)
    data = calibration_subset(TensorDataset(torch.randn(32, 64), torch.zeros(32, dtype=torch.int64)), 32)
    with pytest.raises(
        BudgetError, match=r"up to 1e\+05, beyond float16's range \(65504\): store them with L2\(raw_dtype='fp32'\)"
    ):
        api.compress(model, L2(rounds=1, transform_steps=1, reconstruction_steps=1), Budget(ratio=2), data)


@pytest.mark.parametrize("edge, step", [(0.5, 0.25), (1.0, 0.5), (0.2, 0.4), (2.0, 1.0)])
def test_rate_estimate_is_within_5_percent_of_the_coded_bytes(edge, step):
    w = torch.randn(200, 300, generator=torch.Generator().manual_seed(1))
    e, s = torch.tensor(edge), torch.tensor(step, requires_grad=True)
    estimate = estimated_bits(deadzone_encode(w, e, s)) / 8
    codes = deadzone_codes(w, e, s)
    _, coded, _ = encode_symbols(codes.symbols.numpy(), codes.num_levels, codes.zero, rows=200)
    assert abs(float(estimate.detach()) - len(coded)) <= 0.05 * len(coded)
    estimate.backward()
    assert s.grad is not None and float(s.grad) < 0  # a coarser grid costs fewer bits


def test_batchnorm_statistics_absorbed_without_changing_the_function():
    model = tiny_cnn().eval()
    bn = model[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    x = torch.randn(4, 1, 8, 8)
    before = model(x)
    constants = absorb_batchnorm_statistics(model)
    assert constants == {"1.running_mean": 0.0, "1.running_var": 1.0}
    assert torch.allclose(model(x), before, atol=1e-5)


@pytest.mark.parametrize("ratio", [2.0, 4.0, 6.0])
def test_ratio_target_is_met_by_the_written_file(calibration, ratio, tmp_path):
    handle = api.ModelHandle(tiny_mlp())
    compressed = api.compress(handle, FAST, Budget(ratio=ratio), calibration)
    size = api.save(compressed, tmp_path / "m.press")
    assert size <= api.fp32_bytes(handle.module) / ratio
    model = api.load(tmp_path / "m.press", model=tiny_mlp())
    for name, value in compressed.state_dict().items():
        assert torch.equal(model.state_dict()[name], value.to(model.state_dict()[name].dtype))


def test_models_with_batchnorm_and_reproducibility(calibration):
    model = tiny_cnn()
    calib = calibration_subset(
        torch.utils.data.TensorDataset(torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))), 64, seed=0
    )
    results = [api.compress(model, FAST, Budget(ratio=3), calib) for _ in range(2)]
    first, second = (r.state_dict() for r in results)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert first["1.running_var"].eq(1).all()  # BatchNorm statistics absorbed: a constant in the file
    assert results[0].summary["budget"] == {"ratio": 3}


def test_sparsity_counts_weights_not_the_batchnorm_constants(calibration, tmp_path):
    """L² codes BatchNorm's running means as constant zeros; the file's sparsity must not count them."""
    model = tiny_cnn()
    calib = calibration_subset(
        torch.utils.data.TensorDataset(torch.randn(256, 1, 8, 8), torch.randint(0, 10, (256,))), 64, seed=0
    )
    compressed = api.compress(model, FAST, Budget(ratio=3), calib)
    api.save(compressed, tmp_path / "m.press")
    weights = [v for n, v in compressed.state_dict().items() if n.endswith("weight") and v.dim() > 1]
    expected = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert compressed.summary["sparsity"] == api.inspect(tmp_path / "m.press")["sparsity"] == expected


def test_reconstruction_is_kept_only_when_it_brings_the_model_closer(calibration):
    """Weights wrecked by a huge reconstruction rate are dropped for the original weights rounded to
    the same grids; an ordinary reconstruction at a tight budget is kept."""
    dense = tiny_mlp()
    wrecked = api.compress(dense, replace(FAST, weight_lr=0.5), Budget(ratio=4), calibration)
    rows = wrecked.details["layers"]["l2"]
    assert not any(row["reconstructed"] for row in rows)
    state = wrecked.state_dict()
    for row in rows:  # every weight is its original value rounded to the grid: off by at most the edge or half a step
        error = (state[row["name"]] - dense.state_dict()[row["name"]]).abs()
        assert error.max() <= max(row["edge"], row["step"] / 2) * 1.001
    tight = api.compress(dense, FAST, Budget(ratio=8), calibration)
    assert all(row["reconstructed"] for row in tight.details["layers"]["l2"])


def test_weights_an_earlier_stage_pruned_stay_zero(calibration):
    """Pruning, then L² on the pruned model (FCPTS → L²): reconstruction must not revive pruned weights,
    even at a learning rate that moves every other weight far past its dead zone."""
    pruned = api.compress(tiny_mlp(), MagnitudePruning("global"), Budget(sparsity=0.7)).to_module(tiny_mlp())
    run = _Run(FAST, pruned, Budget(ratio=4, reference_bytes=fp32_bytes(pruned)), calibration)
    run._initialise(weight_bytes=run.target - run.smallest_file_bytes())
    run._calibrate_overhead()
    progress = type("Silent", (), {"update": lambda *args, **kwargs: None})()
    run._phase(list(run.latent.values()), 0.05, 5, "reconstruction", progress, None)
    for name, weight in run.latent.items():
        zero = pruned.state_dict()[name] == 0
        assert zero.any() and weight[zero].eq(0).all() and weight[~zero].ne(0).all()


def test_the_rate_backpropagated_layer_by_layer_gives_the_gradients_of_the_whole_estimate(calibration):
    """Only one layer's rate graph is alive at once (about 130 bytes per weight): each layer's grid and weights reach
    only their own estimate, so the gradients must equal those of the summed estimate bit for bit."""
    run = _Run(FAST, tiny_cnn(), Budget(ratio=6, reference_bytes=fp32_bytes(tiny_cnn())), calibration)
    run._initialise(weight_bytes=run.target - run.smallest_file_bytes())
    run._calibrate_overhead()
    leaves = [*run.log_edge.values(), *run.log_step.values(), *run.latent.values()]
    whole = torch.autograd.grad(3.5 * (run._estimated_bytes() / run.rate_budget), leaves)
    rate = run._backward_rate(3.5)
    assert all(torch.equal(leaf.grad, g) for leaf, g in zip(leaves, whole))
    assert rate.grad_fn is None and torch.equal(rate, run._estimated_bytes().detach() / run.rate_budget)


def test_an_outlier_weight_does_not_coarsen_the_initial_grid_of_the_rest(calibration):
    """At a budget every grid can start at its finest, one weight over 100 × its layer's RMS (as in a BERT output
    projection) must not make that layer's grid so coarse that most of its weights start at zero."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 10))
    with torch.no_grad():
        weight = model[1].weight
        weight[0, 0] = 150 * weight.pow(2).mean().sqrt()  # 115 × the RMS it makes: 68 % zeros on the old grid
    run = _Run(FAST, model, Budget(ratio=1.01, reference_bytes=fp32_bytes(model)), calibration)
    run._initialise(weight_bytes=1e9)
    assert run._codes()["1.weight"].sparsity() < 0.1


def test_impossible_ratio_is_refused_with_one_that_is_accepted(calibration):
    with pytest.raises(BudgetError, match="ask for at most") as refused:
        api.compress(tiny_mlp(), FAST, Budget(ratio=500), calibration)
    hinted = float(re.search(r"at most ([0-9.]+)x", str(refused.value)).group(1))
    FAST.check_target(tiny_mlp(), Budget(ratio=hinted, reference_bytes=fp32_bytes(tiny_mlp())))
    with pytest.raises(BudgetError, match="no ratio above 1 is reachable"):
        FAST.check_target(nn.Linear(4, 4), Budget(ratio=2, reference_bytes=fp32_bytes(nn.Linear(4, 4))))


def test_a_sweep_with_an_unreachable_ratio_is_refused_before_any_file(tmp_path):
    """Checked from the model's shapes alone: no calibration data is loaded and no point is run first."""
    with pytest.raises(BudgetError, match="ask for at most"):
        api.sweep(tiny_mlp(), FAST, [Budget(ratio=2), Budget(ratio=500)], out_dir=tmp_path / "runs", data="digits")
    assert not (tmp_path / "runs").exists()


def test_the_smallest_per_channel_file_counts_a_grid_per_row():
    """A per-channel file stores a (first, step) pair per row: a target between the per-tensor and the
    per-channel minimum is reachable only per tensor, and must be refused up front per channel."""
    model = nn.Sequential(nn.Embedding(50, 8), nn.Flatten(), nn.Linear(8 * 4, 3))
    loose = Budget(ratio=1.01, reference_bytes=fp32_bytes(model))
    per_tensor, per_channel = (_Run(L2(per_channel=p), model, loose).smallest_file_bytes() for p in (False, True))
    assert per_channel > per_tensor
    between = Budget(ratio=loose.reference_bytes / ((per_tensor + per_channel) // 2))
    L2().check_target(model, between)
    with pytest.raises(BudgetError, match="ask for at most"):
        L2(per_channel=True).check_target(model, between)


def test_a_raw_dtype_l2_did_not_size_the_file_for_is_refused_before_work(calibration):
    with pytest.raises(BudgetError, match=r"L2\(raw_dtype='fp32'\)"):
        api.compress(tiny_mlp(), FAST, Budget(ratio=3), calibration, raw_dtype="fp32")


def test_cli_compress_and_sweep(tmp_path):
    source = tmp_path / "mlp.pt"
    torch.save(tiny_mlp().state_dict(), source)
    common = ["--arch", "tests.archs:tiny_mlp", "--data", "digits", "--calib", "128"]
    result = run(
        "sweep",
        source,
        "-m",
        "l2",
        "--ratios",
        "2,4",
        *common,
        "--out-dir",
        tmp_path,
        "--plot",
        tmp_path / "c.png",
        "--report",
        tmp_path / "r.json",
    )
    assert result.exit_code == 0, result.output
    reports = json.loads((tmp_path / "r.json").read_text())
    assert [r["ratio"] >= t for r, t in zip(reports, (2, 4))] == [True, True]
    assert (tmp_path / "c.png").stat().st_size > 1000
    good = run("compress", source, "-m", "l2", "--ratio", "3", *common, "-o", tmp_path / "m.press", "--plot", tmp_path / "a.png")
    assert good.exit_code == 0, good.output
    assert (tmp_path / "m.press").stat().st_size <= reports[0]["original_bytes"] / 3
    assert (tmp_path / "a.png").stat().st_size > 1000
    fp32 = run("compress", source, "-m", "l2", "--ratio", "3", "--raw-dtype", "fp32", *common, "-o", tmp_path / "f.press")
    assert fp32.exit_code == 0, fp32.output  # --raw-dtype reaches L², which then sizes the file with it
    raw = [r for r in api.inspect(tmp_path / "f.press")["tensors"] if r["kind"] == "raw"]
    assert raw and {r["dtype"] for r in raw} == {"float32"}
    bad = run("compress", source, "-m", "l2", "--bits", "4", "--ratio", "3", *common, "-o", tmp_path / "x.press")
    assert bad.exit_code == 2 and "drop --bits" in " ".join(bad.output.split())
    assert np.isfinite([r["accuracy_after"] for r in reports]).all()


def test_on_a_press_input_the_ratio_l2_suggests_is_one_it_can_reach(tmp_path):
    # The file carries the earlier stage's record: the check before any work must count it, as the run does.
    path = tmp_path / "f.press"
    api.save(api.compress(api.load_model("zoo:lenet5"), Fold(), Budget(params=0.3)), path)
    handle = api.load_model(path)
    with pytest.raises(BudgetError, match=r"ask for at most") as refused:
        api._check_call(handle, [L2()], Budget(ratio=5000), None)
    largest = float(re.search(r"at most ([\d.]+)x", str(refused.value)).group(1))
    run = _Run(L2(), handle.module, api._with_source(Budget(ratio=largest), handle))
    assert run.smallest_file_bytes() <= run.target


class _RowsLSTM(nn.Module):
    """An LSTM over the 8 rows of an 8×8 digit: 48 gate rows, each with its own edge and step under per_channel."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn, self.fc = nn.LSTM(8, 12, batch_first=True), nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.rnn(x.reshape(x.shape[0], 8, 8))[0][:, -1])


def test_a_size_the_grids_cannot_reach_is_a_budget_error_not_a_non_finite_loss(calibration):
    """A trained small LSTM at 3x with an edge and a step per gate row: the tables leave the codes a byte, the rate
    multiplier overflows, and the message says to ask for less, not that the inputs are out of range."""
    model = _RowsLSTM()
    inputs, labels = load_dataset("digits", "train").tensors
    optimizer = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(100):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    method = L2(rounds=1, transform_steps=10, reconstruction_steps=10, per_channel=True)
    with pytest.raises(BudgetError, match="cannot bring the file to .* or drop per_channel"):
        method.apply(model.eval(), calibration, Budget(ratio=3))
