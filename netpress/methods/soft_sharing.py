"""Soft weight-sharing (Ullrich, Meeds & Welling, ICLR 2017): retraining under a learned Gaussian-mixture prior.

The model is retrained on labelled training data with cross-entropy plus τ/N times the negative log of a
prior over every coded weight: a mixture of Gaussians shared by the whole network, one component fixed
at mean 0 with a fixed large share, the others with learned means, precisions and shares (Gamma
hyper-priors on the precisions). The prior pulls the weights into a few clusters and a spike at zero; at
the end each weight takes the mean of its most responsible component, so pruning and quantization come
out of one procedure, and the codec entropy-codes the symbols. A ratio target is met by searching τ with short
pilot runs, then raising the zero spike's share at the snap as far as the file still needs. See
docs/methods/soft_sharing.md.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from netpress.budget import Budget
from netpress.codec.codes import Codes
from netpress.data import Subset
from netpress.errors import BudgetError, check_real, check_seed, check_whole
from netpress.methods.base import (
    BATCHNORM_SAMPLES,
    MethodResult,
    check_labels,
    check_model,
    compressible_weights,
    labelled_training_data,
    recalibrate_batchnorm,
    refuse_tied,
    seeds_torch,
    zero_masks,
)
from netpress.methods.baselines import kmeans_1d
from netpress.methods.sizing import FileSizer, constant_codes, refuse_unreachable, with_reference
from netpress.progress import progress_bar

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
# Gamma(α, β) hyper-priors on the precisions (the original tutorial's values): the zero component, which
# holds most weights, gets the tighter one. Both put the precision's mode near 2,500 (a spread of 0.02).
ZERO_GAMMA = (5000.0, 2.0)
GAMMA = (250.0, 0.1)
# Responsibilities below e^-80 are taken as e^-80, a normal float32 (a change below 1e-34 per weight): exp of
# far lower values gives subnormal floats, and once the precisions had grown, LeNet-300's epochs took about
# three times as long (7 s → 20 s).
EXP_FLOOR = -80.0
KMEANS_SAMPLE = 1 << 18  # weights the initial means are clustered from
PRIOR_CHUNK = 1 << 15  # weights per pass of the prior: a chunk's (weights × components) tensors stay in cache
# With a ratio target: pilots of at least this many steps (whole epochs, at most the run's) measure a τ's file
# (LeNet-300's snapped file is within 5 % of the 20-epoch one from epoch 4 on, 940 steps of the default batch of 256
# over Fashion-MNIST's 60,000 images; later steps, at any τ, pull the weights onto their means without moving them
# between components), at most PILOT_TRIALS of them, until one file is within PILOT_CLOSE of the target from below.
# Counted in steps: on 10,000 images, 4-epoch pilots (160 steps) kept a τ whose full run overshot the target, and
# the zero-spike fit then left 62 % accuracy at 80x.
PILOT_STEPS = 940
PILOT_TRIALS = 6
PILOT_CLOSE = 0.9
SEARCH_SLOPE = -0.5  # d log bytes / d log τ assumed until two pilots measure it (LeNet-300: -0.17 to -0.52)
SEARCH_STEP = 16.0  # the most one pilot's τ moves from the last one's
# Two pilots a full step apart whose files differ by less than this share: τ does not move this model's file (on
# LeNet-300 a 16-fold τ changes it by 38 % or more), so further pilots would only repeat it.
UNMOVED = 0.01
FIT_STEPS = 30  # halvings of the bracket of the zero spike's raise when a ratio target is set
MAX_SHIFT = 1e30  # a raise of the spike's log-share past any finite weight's log-density gap


class GaussianMixturePrior(nn.Module):
    """p(w) = Σ_j π_j N(w | μ_j, 1/λ_j), with μ_0 = 0 and π_0 fixed; μ, log λ and the other shares learned.

    ``components`` counts the zero component. The non-zero means start at k-means centroids of the pretrained
    non-zero weights (the original tutorial spaces them over ±0.6, a scale of its MNIST network, not of any
    model), every standard deviation at ``init_spread`` times the weights', and the other components share
    1 − π_0 equally."""

    def __init__(self, weights: list[torch.Tensor], components: int, zero_share: float, init_spread: float) -> None:
        super().__init__()
        pooled = torch.cat([w.detach().reshape(-1) for w in weights])
        nonzero = pooled[pooled != 0]
        if nonzero.numel() < 2:
            raise BudgetError(
                "soft weight-sharing needs at least two non-zero weights to place its mixture; this model has fewer"
            )
        sample = nonzero[torch.randperm(nonzero.numel(), generator=torch.Generator().manual_seed(0))[:KMEANS_SAMPLE]]
        means = kmeans_1d(sample, components - 1)
        if means.numel() < components - 1:  # fewer distinct values than components: spread the rest evenly
            means = torch.linspace(float(sample.min()), float(sample.max()), components - 1)
        spread = init_spread * (float(nonzero.std()) or float(nonzero.abs().mean()))  # all equal: their size
        self.means = nn.Parameter(means)
        self.log_precisions = nn.Parameter(torch.full((components,), -2 * math.log(spread)))
        self.mixing_logits = nn.Parameter(torch.zeros(components - 1))
        self.zero_share = zero_share

    def all_means(self) -> torch.Tensor:
        return torch.cat([torch.zeros(1), self.means])

    def log_shares(self) -> torch.Tensor:
        rest = F.log_softmax(self.mixing_logits, dim=0) + math.log1p(-self.zero_share)
        return torch.cat([torch.full((1,), math.log(self.zero_share)), rest])

    def log_joint(self, w: torch.Tensor) -> torch.Tensor:
        """log π_j + log N(w_i | μ_j, 1/λ_j) for each weight i (rows) and component j (columns)."""
        w = w.reshape(-1, 1)
        precisions = self.log_precisions.exp()
        return self.log_shares() + 0.5 * self.log_precisions - LOG_SQRT_2PI - 0.5 * precisions * (w - self.all_means()) ** 2

    def negative_log_prob(self, w: torch.Tensor) -> torch.Tensor:
        """−Σ_i log p(w_i), differentiable in the weights and the mixture (``_MixtureNegativeLogProb``)."""
        return _MixtureNegativeLogProb.apply(w, self.all_means(), self.log_precisions, self.log_shares())

    def negative_log_hyperprior(self) -> torch.Tensor:
        """−log of the Gamma hyper-priors on the precisions, up to a constant: Σ_j (1 − α_j)·γ_j + β_j·λ_j."""
        alpha = torch.tensor([ZERO_GAMMA[0]] + [GAMMA[0]] * len(self.means))
        beta = torch.tensor([ZERO_GAMMA[1]] + [GAMMA[1]] * len(self.means))
        return ((1 - alpha) * self.log_precisions + beta * self.log_precisions.exp()).sum()

    def assign(self, w: torch.Tensor, zero_shift: float = 0.0) -> torch.Tensor:
        """Each weight's most responsible component (0: the zero spike), with the spike's log-share raised by
        ``zero_shift``: a larger shift prunes more weights (ties go to the spike)."""
        shift = torch.zeros(len(self.means) + 1)
        shift[0] = zero_shift
        return torch.cat([(self.log_joint(chunk) + shift).argmax(dim=1) for chunk in w.reshape(-1).split(1 << 16)]).reshape(
            w.shape
        )


class _MixtureNegativeLogProb(torch.autograd.Function):
    """−Σ_i logsumexp_j (log π_j + ½ log λ_j − log √(2π) − ½ λ_j (w_i − μ_j)²), with its gradients computed in
    the same pass, chunk by chunk, from the responsibilities r_ij: the autograd graph of the formula keeps a
    dozen (weights × components) tensors per layer and step, this keeps one chunk's and the gradients.

    ∂/∂w_i = Σ_j r_ij λ_j (w_i − μ_j); ∂/∂μ_j = −Σ_i r_ij λ_j (w_i − μ_j);
    ∂/∂log λ_j = −Σ_i r_ij (½ − ½ λ_j (w_i − μ_j)²); ∂/∂log π_j = −Σ_i r_ij."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, means: torch.Tensor, log_precisions: torch.Tensor, log_shares: torch.Tensor):
        precisions = log_precisions.exp()
        offset = log_shares + 0.5 * log_precisions - LOG_SQRT_2PI
        flat = w.detach().reshape(-1)
        grad_w = torch.empty_like(flat)
        grad_means, grad_log_precisions, grad_log_shares = (torch.zeros_like(means) for _ in range(3))
        total = torch.zeros((), dtype=w.dtype)
        for start in range(0, flat.numel(), PRIOR_CHUNK):
            diff = flat[start : start + PRIOR_CHUNK, None] - means
            half_sq = diff * diff * (0.5 * precisions)
            r = offset - half_sq  # the joint log-density, then (in place) the responsibilities
            top = r.max(dim=1, keepdim=True).values
            r.sub_(top).clamp_(min=EXP_FLOOR).exp_()
            norm = r.sum(dim=1, keepdim=True)
            r.div_(norm)
            total -= (top + norm.log()).sum()
            pull = r * diff * precisions
            grad_w[start : start + PRIOR_CHUNK] = pull.sum(dim=1)
            grad_means -= pull.sum(dim=0)
            grad_log_precisions -= (r * (0.5 - half_sq)).sum(dim=0)
            grad_log_shares -= r.sum(dim=0)
        ctx.save_for_backward(grad_w.reshape(w.shape), grad_means, grad_log_precisions, grad_log_shares)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(grad * saved for saved in ctx.saved_tensors)


@dataclass
class SoftWeightSharing:
    """Retrain under a learned Gaussian-mixture prior, then snap every weight to its component's mean.

    ``components`` Gaussians including the zero spike, whose share ``zero_share`` is fixed; ``tau`` weighs
    the prior against the cross-entropy (scaled by 1/N, N the training samples) in the first epoch, and grows
    geometrically to ``anneal`` times that in the last, so that the weights first settle into clusters and
    are then pulled onto their means; ``epochs`` passes over the training data in batches of ``batch_size``;
    Adam with one learning rate for the model's parameters and one each for the means, log-precisions and
    mixing logits. Needs labelled training data. ``tau`` and ``zero_share`` trade accuracy for size; with a
    ratio target, ``tau`` is the first guess of a search (``_searched_tau``: short pilot runs) for the τ whose
    file comes closest under the target, and the snap prunes more where that file is still over it.
    """

    components: int = 17
    tau: float = 0.05
    anneal: float = 100.0
    zero_share: float = 0.9
    epochs: int = 20
    batch_size: int = 256
    weight_lr: float = 5e-4
    mean_lr: float = 1e-4
    precision_lr: float = 3e-3
    mixing_lr: float = 3e-3
    init_spread: float = 1.0
    seed: int = 0
    name: ClassVar[str] = "sws"
    needs: ClassVar[str] = "training"
    budgets: ClassVar[tuple[str, ...]] = ("ratio",)
    target_optional: ClassVar[bool] = True  # without one, tau sets the size
    quantizes: ClassVar[bool] = True  # its codes are final: compress() refuses a stage after it

    def __post_init__(self) -> None:
        check_seed(self.seed)
        check_whole("components", self.components, 2)
        check_whole("epochs", self.epochs, 0)
        check_whole("batch_size", self.batch_size, 1)
        for name in ("tau", "weight_lr", "mean_lr", "precision_lr", "mixing_lr"):
            check_real(name, getattr(self, name), 0.0)
        check_real("anneal", self.anneal, 1.0)
        check_real("init_spread", self.init_spread, 0.0, inclusive=False)
        check_real("zero_share", self.zero_share, 0.0, inclusive=False)
        if self.zero_share >= 1:
            raise BudgetError(f"zero_share must be below 1 (the other components share the rest), got {self.zero_share!r}")

    @seeds_torch
    def apply(self, model: nn.Module, data: Subset | None = None, budget: Budget | None = None) -> MethodResult:
        budget = with_reference(self, budget, model)
        inputs, labels = labelled_training_data(data, "soft weight-sharing")
        model = copy.deepcopy(model)
        check_labels(model, inputs, labels)
        weights = check_model(model, trains=True)
        refuse_tied(model, self.name)
        sizer = FileSizer(model, self, budget, data) if budget is not None else None
        if sizer is not None:
            sizer.check_reachable(_zero_codes(weights))
        pruned_before = zero_masks(weights)  # an earlier stage's zeros stay zero
        with progress_bar() as progress:
            if sizer is None:
                run, pilots = _Retraining(self, model, self.tau, inputs, labels, pruned_before), []
            else:
                run, pilots = _searched_tau(self, model, inputs, labels, pruned_before, sizer, progress)
            run.train(self.epochs - run.epoch, progress)
        del run.optimizer  # its moments (two copies of the model) are not needed for the snap
        run.model.eval()
        with torch.no_grad():
            result = _snapped(run, inputs[:BATCHNORM_SAMPLES], sizer)
        if sizer is not None:
            result.rows[0]["fit"].update(tau=run.tau, pilots=pilots)
        return result

    def check_target(self, model: nn.Module, budget: Budget | None) -> None:
        refuse_unreachable(self, model, budget, _zero_codes)


class _Retraining:
    """One retraining run under the prior at a first-epoch ``tau``, resumable epoch by epoch, so that the pilot of a
    τ search the search keeps continues as the full run (the same schedule and seeded order as a run in one go)."""

    def __init__(
        self,
        config: SoftWeightSharing,
        model: nn.Module,
        tau: float,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        zeros: dict[str, torch.Tensor],
    ) -> None:
        self.config, self.model, self.tau, self.inputs, self.labels, self.zeros = config, model, tau, inputs, labels, zeros
        self.weights = compressible_weights(model)
        self.prior = GaussianMixturePrior(list(self.weights.values()), config.components, config.zero_share, config.init_spread)
        self.optimizer = torch.optim.Adam(
            [
                {"params": list(model.parameters()), "lr": config.weight_lr},
                {"params": [self.prior.means], "lr": config.mean_lr},
                {"params": [self.prior.log_precisions], "lr": config.precision_lr},
                {"params": [self.prior.mixing_logits], "lr": config.mixing_lr},
            ]
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch = 0

    def train(self, epochs: int, progress) -> None:
        config, inputs, labels = self.config, self.inputs, self.labels
        steps = math.ceil(len(inputs) / config.batch_size)
        task = progress.add_task(f"soft weight-sharing τ {self.tau:.3g}", total=epochs * steps)
        self.model.train()
        for _ in range(epochs):
            scale = self.tau * config.anneal ** (self.epoch / max(config.epochs - 1, 1)) / len(inputs)
            order = torch.randperm(len(inputs), generator=self.generator)
            for idx in order.split(config.batch_size):
                error = F.cross_entropy(self.model(inputs[idx]), labels[idx])
                complexity = sum(self.prior.negative_log_prob(w) for w in self.weights.values())
                loss = error + scale * (complexity + self.prior.negative_log_hyperprior())
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                with torch.no_grad():
                    for name, mask in self.zeros.items():
                        self.weights[name].masked_fill_(mask, 0.0)
                progress.update(task, advance=1, description=f"soft weight-sharing τ {self.tau:.3g} loss {error.item():.3f}")
            self.epoch += 1
        progress.remove_task(task)


def _snap_codes(weights: dict[str, torch.Tensor], prior: GaussianMixturePrior, zeros: dict, zero_shift: float = 0.0) -> dict:
    """The codes of every weight replaced by its most responsible component's mean (``assign``); an earlier
    stage's zeros stay in the spike."""
    means = prior.all_means().detach()
    codes = {}
    for name, w in weights.items():
        component = prior.assign(w.detach(), zero_shift)
        if name in zeros:
            component[zeros[name]] = 0
        levels = torch.unique(torch.cat([torch.zeros(1), means[torch.unique(component)]]))
        codes[name] = Codes.from_values(means[component], levels)
    return codes


def pilot_epochs(config: SoftWeightSharing, samples: int) -> int:
    """A pilot's whole epochs: at least ``PILOT_STEPS`` steps (4 epochs of Fashion-MNIST's training split at the default
    batch), at most the full run's."""
    return min(math.ceil(PILOT_STEPS / math.ceil(samples / config.batch_size)), config.epochs)


def _searched_tau(
    config: SoftWeightSharing,
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    zeros: dict[str, torch.Tensor],
    sizer: FileSizer,
    progress,
) -> tuple[_Retraining, list[dict]]:
    """The first-epoch τ whose snapped file meets the target closest from below, by pilots of ``pilot_epochs``
    whole epochs, at least ``PILOT_STEPS`` steps (the size is settled by then; later epochs pull the weights onto
    their means): a secant on log bytes against log τ, from ``config.tau``. Returns the kept pilot, to be trained on,
    and every pilot's τ and bytes."""
    epochs = pilot_epochs(config, len(inputs))
    target, tau = sizer.target, config.tau or SoftWeightSharing.tau  # the search moves τ by factors: it cannot start at 0
    trials: list[tuple[float, int]] = []
    kept, kept_size = None, 0

    def preference(size: int) -> tuple[bool, int]:  # a file that fits, the largest; else the smallest
        return (size <= target, size if size <= target else -size)

    for _ in range(PILOT_TRIALS if epochs else 1):  # without training τ changes nothing
        run = _Retraining(config, copy.deepcopy(model), tau, inputs, labels, zeros)
        run.train(epochs, progress)
        with torch.no_grad():
            size = sizer.bytes(_snap_codes(run.weights, run.prior, zeros))
        trials.append((tau, size))
        if kept is None or preference(size) > preference(kept_size):
            kept, kept_size = run, size
        if PILOT_CLOSE * target <= kept_size <= target or _unmoved(trials):
            break
        tau = _next_tau(trials, PILOT_CLOSE**0.5 * target)
    return kept, [{"tau": t, "bytes": b, "epochs": epochs} for t, b in trials]


def _unmoved(trials: list[tuple[float, int]]) -> bool:
    """Whether the last two pilots are ``SEARCH_STEP`` apart in τ yet within ``UNMOVED`` of each other in bytes."""
    if len(trials) < 2:
        return False
    (a, a_bytes), (b, b_bytes) = trials[-2:]
    return max(a / b, b / a) >= SEARCH_STEP * (1 - 1e-9) and abs(a_bytes - b_bytes) <= UNMOVED * max(a_bytes, b_bytes)


def _next_tau(trials: list[tuple[float, int]], aim: float) -> float:
    """The next pilot's τ, aiming its file at ``aim`` bytes. The file shrinks as τ grows, except below some τ where
    the prior is too weak for the mixture to tighten and the snap puts nearly every weight in the still broad zero
    spike: a pilot whose file is smaller than that of a pilot at a larger τ is taken to be there. Such pilots and
    those over ``aim`` bound τ from below, the others from above. With both bounds the next τ halves the bracket
    (in log τ); with one, it steps from it by a secant of log bytes against log τ through the two pilots nearest
    to it (``SEARCH_SLOPE`` until two differ), at most ``SEARCH_STEP`` times."""
    collapsed = [t for t in trials if any(u[0] > t[0] and u[1] > t[1] for u in trials)]
    raise_tau = [t for t in trials if t[1] > aim or t in collapsed]
    lower_tau = [t for t in trials if t not in raise_tau]
    if raise_tau and lower_tau:
        low, high = max(raise_tau), min(lower_tau)
        if low in collapsed or high[0] <= low[0]:
            return math.sqrt(low[0] * high[0])
        guess = _secant(low, high, aim)  # kept to the inner 80 % of the bracket, in log τ
        inner = 0.1 * math.log(high[0] / low[0])
        return min(max(guess, low[0] * math.exp(inner)), high[0] / math.exp(inner))
    tau, size = max(raise_tau) if raise_tau else min(lower_tau)
    near = sorted((t for t in trials if t not in collapsed), key=lambda t: abs(math.log(t[0] / tau)))[:2]
    step = _secant(near[1], near[0], aim) / tau if len(near) == 2 else math.exp(math.log(aim / size) / SEARCH_SLOPE)
    return tau * min(max(step, 1 / SEARCH_STEP), SEARCH_STEP)


def _secant(a: tuple[float, int], b: tuple[float, int], aim: float) -> float:
    """The τ at which the line through two pilots' (log τ, log bytes), ``b`` the nearer, reaches ``aim`` bytes (at a
    slope of ``SEARCH_SLOPE`` where their files are the same size)."""
    slope = SEARCH_SLOPE
    if a[1] != b[1] and a[0] != b[0]:
        slope = math.log(a[1] / b[1]) / math.log(a[0] / b[0])
        slope = min(slope, SEARCH_SLOPE / 8)  # bytes fall as τ grows here; a noisy secant is not trusted to say otherwise
    return b[0] * math.exp(math.log(aim / b[1]) / slope)


def _zero_codes(weights: dict[str, torch.Tensor]) -> dict[str, Codes]:
    """Every coded weight in the zero spike: the smallest file the method can write."""
    return {n: constant_codes(w.shape, 0.0) for n, w in weights.items()}


def _fitted_shift(fits: Callable[[float], bool], low: float = 0.0) -> float:
    """The smallest raise of the zero spike's log-share (to within 2^-FIT_STEPS of the bracket) whose file
    ``fits``, from ``low`` up: a large enough raise puts every weight in the spike, a file ``check_reachable``
    found within the target."""
    if fits(low):
        return low
    high = max(2 * low, 1.0)
    while not fits(high):
        if high > MAX_SHIFT:
            raise BudgetError("no raise of the zero spike's share fits the file: the trained weights are not all finite")
        low, high = high, 2 * high
    for _ in range(FIT_STEPS):
        middle = (low + high) / 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def _snapped(run: _Retraining, inputs: torch.Tensor, sizer: FileSizer | None) -> MethodResult:
    """The model with each weight snapped to its component's mean (the spike's weights pruned), its codes, and
    BatchNorm statistics re-estimated for the snapped weights. With ``sizer``, the spike's share is first raised
    as far as the file needs to meet the target (0 where the trained file already does)."""
    trained = run.weights  # assigned from; a fit may assign again, and a snapped weight may assign otherwise
    if sizer is not None:
        trained = {n: w.detach().clone() for n, w in trained.items()}
        sizer.check_reachable(_zero_codes(trained))  # training moved the uncoded tensors (biases): their bytes may have grown

    def fits(shift: float) -> bool:
        return sizer.bytes(_snap_codes(trained, run.prior, run.zeros, shift)) <= sizer.target

    def snap(shift: float) -> dict[str, Codes]:
        codes = _snap_codes(trained, run.prior, run.zeros, shift)
        for name, w in run.weights.items():
            w.copy_(codes[name].dequantize())
        return codes

    shift = 0.0 if sizer is None else _fitted_shift(fits)
    codes = snap(shift)
    recalibrate_batchnorm(run.model, inputs)
    if sizer is not None and not fits(shift):  # the re-estimated statistics take a few more bytes
        shift = _fitted_shift(fits, shift)
        codes = snap(shift)
    # A file sized for a target is written in the dtype it was sized in, whatever the input's
    result = MethodResult(run.model, codes, raw_dtype=sizer.raw_dtype if sizer is not None else None)
    result.rows = [
        {"name": n, "shape": list(c.shape), "params": c.symbols.numel(), "levels": c.num_levels, "sparsity": c.sparsity()}
        for n, c in codes.items()
    ]
    prior = run.prior
    result.rows[0]["mixture"] = {
        "means": prior.all_means().tolist(),
        "stds": prior.log_precisions.mul(-0.5).exp().tolist(),
        "shares": prior.log_shares().exp().tolist(),
    }
    if sizer is not None:
        result.rows[0]["fit"] = {"target_bytes": sizer.target, "zero_shift": shift}
    return result
