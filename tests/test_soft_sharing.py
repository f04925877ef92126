"""Soft weight-sharing: the mixture prior, the snapped codes, and what the method refuses."""

import math
from dataclasses import replace

import pytest
import torch
from scipy import stats

import netpress
from netpress import SoftWeightSharing, compress
from netpress.api import resolve_dataset
from netpress.budget import Budget
from netpress.data import Subset, calibration_subset, load_dataset
from netpress.errors import BudgetError
from netpress.methods import soft_sharing
from netpress.methods.base import compressible_weights
from netpress.methods.sizing import SUMMARY_ALLOWANCE
from netpress.methods.soft_sharing import GaussianMixturePrior
from netpress.progress import progress_bar
from tests.archs import tiny_cnn, tiny_mlp

FAST = SoftWeightSharing(epochs=2, batch_size=64, tau=0.05)


@pytest.fixture(scope="module")
def train():
    return calibration_subset(load_dataset("digits", "train"), 512, seed=0)


def test_the_prior_is_the_mixture_density_it_describes():
    weights = [torch.linspace(-0.5, 0.5, 101)]
    prior = GaussianMixturePrior(weights, components=5, zero_share=0.9, init_spread=0.1)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([-0.3, -0.1, 0.2, 0.4]))
        prior.log_precisions.copy_(torch.tensor([6.0, 3.0, 4.0, 2.5, 5.0]))
        prior.mixing_logits.copy_(torch.tensor([0.1, -0.4, 0.3, 0.0]))
    means = prior.all_means().tolist()
    stds = prior.log_precisions.mul(-0.5).exp().tolist()
    shares = prior.log_shares().exp().tolist()
    assert math.isclose(sum(shares), 1.0, rel_tol=1e-6) and math.isclose(shares[0], 0.9, rel_tol=1e-6)
    w = weights[0].double().numpy()
    density = sum(p * stats.norm.pdf(w, m, s) for p, m, s in zip(shares, means, stds))
    expected = -float(sum(math.log(d) for d in density))
    assert math.isclose(float(prior.negative_log_prob(weights[0]).detach()), expected, rel_tol=1e-5)


def test_the_one_pass_gradients_are_autograds_of_the_formula():
    torch.manual_seed(0)
    w = (torch.randn(70_000, dtype=torch.float64) * 0.1).requires_grad_()  # more than one chunk
    prior = GaussianMixturePrior([w.detach().float()], components=5, zero_share=0.9, init_spread=0.5).double()
    with torch.no_grad():
        prior.log_precisions.copy_(torch.tensor([6.0, 3.0, 4.0, 2.5, 5.0]))
        prior.mixing_logits.copy_(torch.tensor([0.1, -0.4, 0.3, 0.0]))
    inputs = [w, prior.means, prior.log_precisions, prior.mixing_logits]
    fast = prior.negative_log_prob(w)
    plain = -torch.logsumexp(prior.log_joint(w), dim=1).sum()
    assert torch.allclose(fast, plain, rtol=1e-12)
    for a, b in zip(torch.autograd.grad(fast, inputs), torch.autograd.grad(plain, inputs)):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_the_hyperprior_is_a_gamma_density_on_each_precision():
    prior = GaussianMixturePrior([torch.randn(10)], components=3, zero_share=0.99, init_spread=1.0)
    values = []
    for log_precision in (3.0, 7.0):
        with torch.no_grad():
            prior.log_precisions.fill_(log_precision)
        values.append(float(prior.negative_log_hyperprior().detach()))
    precisions = [math.exp(3.0), math.exp(7.0)]
    log_density = [stats.gamma.logpdf(p, 5000, scale=1 / 2) + 2 * stats.gamma.logpdf(p, 250, scale=1 / 0.1) for p in precisions]
    assert math.isclose(values[0] - values[1], -(log_density[0] - log_density[1]), rel_tol=1e-4)


def test_each_weight_takes_the_mean_of_its_most_responsible_component():
    prior = GaussianMixturePrior([torch.tensor([-1.0, 1.0])], components=3, zero_share=0.5, init_spread=0.1)
    with torch.no_grad():
        prior.means.copy_(torch.tensor([-1.0, 1.0]))
    assignment = prior.assign(torch.tensor([[0.05, -0.9], [1.2, 0.6]]))
    assert assignment.tolist() == [[0, 1], [2, 2]]


@pytest.mark.parametrize("factory", [tiny_mlp, tiny_cnn])
def test_every_layer_shares_the_mixture_levels_and_zero_is_exact(factory, train):
    if factory is tiny_cnn:  # digits are 8x8 images for the convolution
        train = Subset(resolve_dataset("digits", "train", (1, 8, 8)), train.indices, train.seed)
    result = FAST.apply(factory(), train)
    mixture = result.rows[0]["mixture"]
    allowed = set(mixture["means"]) | {0.0}
    for name, w in compressible_weights(result.model).items():
        codes = result.codes[name]
        assert torch.equal(codes.dequantize(), w)
        assert codes.num_levels <= FAST.components
        assert codes.zero is not None
        assert set(codes.levels.tolist()) <= allowed


def test_a_larger_tau_prunes_more(train):
    light = SoftWeightSharing(epochs=4, batch_size=64, tau=0.0, weight_lr=1e-2).apply(tiny_mlp(), train)
    heavy = SoftWeightSharing(epochs=4, batch_size=64, tau=100.0, weight_lr=1e-2).apply(tiny_mlp(), train)
    zeros = [sum(int((w == 0).sum()) for w in compressible_weights(r.model).values()) for r in (light, heavy)]
    assert zeros[1] > zeros[0]


def test_press_retrains_on_the_whole_training_split_unless_told_fewer(tmp_path):
    model = tiny_mlp()
    report = netpress.press(model, SoftWeightSharing(epochs=1), out=tmp_path / "a.press", data="digits")
    assert report["calibration"]["n"] == len(load_dataset("digits", "train"))
    report = netpress.press(model, SoftWeightSharing(epochs=1), out=tmp_path / "b.press", data="digits", calib=200)
    assert report["calibration"]["n"] == 200
    assert 0 <= report["accuracy_after"] <= 1 and report["file_bytes"] < report["original_bytes"]


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ({"components": 1}, "components"),
        ({"zero_share": 1.0}, "zero_share must be below 1"),
        ({"zero_share": 0.0}, "zero_share"),
        ({"tau": -1.0}, "tau"),
        ({"epochs": 1.5}, "epochs"),
        ({"init_spread": 0.0}, "init_spread"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(setting, fragment):
    with pytest.raises(BudgetError, match=fragment):
        SoftWeightSharing(**setting)


def test_raising_the_zero_spikes_share_only_prunes_more():
    prior = GaussianMixturePrior([torch.linspace(-1, 1, 201)], components=5, zero_share=0.5, init_spread=0.2)
    w = torch.randn(1000)
    pruned = [prior.assign(w, shift) == 0 for shift in (0.0, 0.5, 2.0, 1e30)]
    for fewer, more in zip(pruned, pruned[1:]):
        assert torch.equal(fewer & more, fewer)  # each raise keeps the earlier zeros and adds some
    assert pruned[0].sum() < pruned[2].sum() and pruned[-1].all()


# A narrow start and a small zero share: a few epochs leave a file well above the smallest one.
LOOSE = SoftWeightSharing(epochs=6, batch_size=64, tau=0.001, zero_share=0.5, init_spread=0.1)


def _file_bytes(compressed) -> int:
    return len(netpress.codec.to_bytes(compressed))


@pytest.mark.parametrize("scale", [0.6, 1.6])
def test_a_ratio_target_is_met_by_searching_tau_and_training_on(train, scale, monkeypatch):
    monkeypatch.setattr(soft_sharing, "PILOT_STEPS", 16)  # 2 epochs of 512 samples: pilots shorter than the run
    free = compress(tiny_mlp(), LOOSE, data=train)
    fp32 = netpress.api.fp32_bytes(tiny_mlp())
    ratio = fp32 / (scale * _file_bytes(free))
    fitted = compress(tiny_mlp(), LOOSE, Budget(ratio=ratio), data=train)
    assert _file_bytes(fitted) <= fp32 // ratio
    fit = fitted.details["layers"]["sws"][0]["fit"]  # a smaller file: a larger τ; a larger file: a smaller one
    assert fit["tau"] > LOOSE.tau if scale < 1 else fit["tau"] < LOOSE.tau
    assert fit["pilots"][0]["tau"] == LOOSE.tau and fit["tau"] in [p["tau"] for p in fit["pilots"]]
    if fit["zero_shift"] == 0:  # the kept pilot trained on is the run a plain call at its τ makes
        plain = compress(tiny_mlp(), replace(LOOSE, tau=fit["tau"]), data=train).to_module(tiny_mlp()).state_dict()
        assert all(torch.equal(v, plain[k]) for k, v in fitted.to_module(tiny_mlp()).state_dict().items())


def test_pilots_on_the_whole_training_split_last_4_epochs_and_on_a_sixth_of_it_the_whole_run():
    assert soft_sharing.pilot_epochs(SoftWeightSharing(), 60_000) == 4
    assert soft_sharing.pilot_epochs(SoftWeightSharing(), 10_000) == SoftWeightSharing().epochs


def test_the_tau_search_steps_towards_the_aim_and_bisects_once_bracketed():
    aim = 1000.0
    assert 1 < soft_sharing._next_tau([(0.1, 2000)], aim) / 0.1 <= soft_sharing.SEARCH_STEP  # too large: raise τ
    assert 1 / soft_sharing.SEARCH_STEP <= soft_sharing._next_tau([(0.1, 500)], aim) / 0.1 < 1  # too small: lower it
    assert soft_sharing._next_tau([(0.1, 2000), (1.0, 500)], aim) == pytest.approx(math.sqrt(0.1))
    # The smaller τ gave the smaller file: past the point where the mixture no longer tightens, a lower bound.
    collapsed = [(0.1, 800), (0.01, 300)]
    assert 0.01 < soft_sharing._next_tau(collapsed, aim) < 0.1


def test_a_file_the_search_leaves_over_the_target_is_fitted_by_pruning_more(train, monkeypatch):
    monkeypatch.setattr(soft_sharing, "PILOT_TRIALS", 1)  # the first τ is kept, whatever its file
    free = compress(tiny_mlp(), LOOSE, data=train)
    fp32 = netpress.api.fp32_bytes(tiny_mlp())
    ratio = 1.4 * fp32 / _file_bytes(free)
    fitted = compress(tiny_mlp(), LOOSE, Budget(ratio=ratio), data=train)
    size, target = _file_bytes(fitted), fp32 // ratio
    assert target - 2 * SUMMARY_ALLOWANCE < size <= target
    assert fitted.details["layers"]["sws"][0]["fit"]["zero_shift"] > 0
    before, after = (compressible_weights(c.to_module(tiny_mlp())) for c in (free, fitted))
    for name, w in before.items():  # the same training: the fitted file prunes what the free one does, and more
        assert ((w == 0) & (after[name] != 0)).sum() == 0
    assert sum(int((w == 0).sum()) for w in after.values()) > sum(int((w == 0).sum()) for w in before.values())


def test_an_unreachable_ratio_is_refused_before_training():
    with pytest.raises(BudgetError, match="ask for at most"):
        SoftWeightSharing().check_target(tiny_mlp(), Budget(ratio=1000.0))


def test_it_takes_no_sparsity_target(train):
    with pytest.raises(BudgetError, match="no chosen method takes a sparsity target"):
        compress(tiny_mlp(), FAST, Budget(sparsity=0.5), data=train)


class _SameSizeEveryTau:
    """A file size τ does not move, above the target (as a tiny untrained model's can be)."""

    target = 1000

    def bytes(self, codes) -> int:
        return 5000


def test_the_tau_search_stops_when_a_16_fold_tau_leaves_the_file_as_it_was(train, monkeypatch):
    monkeypatch.setattr(soft_sharing, "PILOT_STEPS", 20)
    inputs, labels = train.tensors()
    with progress_bar() as progress:
        _, pilots = soft_sharing._searched_tau(
            replace(FAST, epochs=5), tiny_mlp(), inputs, labels.long(), {}, _SameSizeEveryTau(), progress
        )
    assert len(pilots) == 2 and pilots[1]["tau"] == pytest.approx(soft_sharing.SEARCH_STEP * pilots[0]["tau"])
    assert all(p["epochs"] == 3 for p in pilots)  # whole epochs of 8 steps (512 samples in 64s), 20 steps at least
    assert soft_sharing._unmoved([(0.1, 1000), (1.6, 995)]) and not soft_sharing._unmoved([(0.1, 1000), (1.6, 900)])
    assert not soft_sharing._unmoved([(0.1, 1000), (0.4, 1000)])  # a smaller step may yet move it
