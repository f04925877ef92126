"""FCPTS: fast and controllable post-training sparsity (Gong et al., AAAI 2024).

One learnable magnitude threshold per layer (per query, key and value of an attention layer's packed rows, per gate
of a recurrent weight), initialised from whichever magnitude allocation (ERK, the paper's, or global, uniform, LAMP)
distils best on the calibration subset. The loss is
distillation from the dense model on a calibration subset (a classifier: KL at temperature 4, also
on mixtures of its inputs; a sentence encoder: cosine distance of its embeddings; a causal language model:
KL of its next-token distributions; see
``netpress.methods.teacher``), plus λ·|global sparsity − target|, where the global sparsity is made
differentiable in the thresholds by a kernel-density bridge (``netpress.quant.kde``). After
optimisation a projection prunes exactly ⌈target · N⌉ weights, split over layers in the learned
proportions, and BatchNorm statistics are re-estimated on the calibration subset. See
docs/methods/fcpts.md for where netpress departs from the paper's code.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from netpress.budget import Budget
from netpress.codec.codes import SparseValues
from netpress.data import Subset
from netpress.errors import BudgetError, DataError, check_choice, check_real, check_seed, check_whole
from netpress.methods.base import (
    MethodResult,
    all_parts,
    check_budget,
    check_model,
    compressible_weights,
    layer_parts,
    part_counts,
    per_weight,
    pruned_row,
    split_exact,
    target_zeros,
    zero_masks,
)
from netpress.methods.baselines import ALLOCATIONS, MagnitudePruning, prune_counts, reachable_zeros, smallest_mask
from netpress.methods.teacher import Teacher, teacher_for
from netpress.progress import progress_bar
from netpress.quant.kde import layer_sparsity

MIN_DENSITY = 0.01
# A threshold this far below its layer's ceiling cannot reach it by float rounding (the margin is far above
# float32's resolution of a log-threshold), so the clamp to the ceiling can be skipped without changing a bit.
CLAMP_MARGIN = 1.0001


def _kth_magnitude(w: torch.Tensor, count: int) -> float:
    """A threshold that prunes ``count`` weights: midway between the count-th and next magnitude."""
    mags = w.detach().abs().reshape(-1)
    n = mags.numel()
    if count <= 0:
        return float(mags.min()) * 0.5
    if count >= n:
        return float(mags.max()) * 1.01 + 1e-12
    # The count-th and next smallest magnitudes, taken from the nearer end: the clamp asks for this
    # every step, and a partial selection of the top 1 % costs a tenth of a full sort.
    if count <= n - count:
        pair = torch.topk(mags, count + 1, largest=False).values[-2:]
    else:
        pair = torch.topk(mags, n - count + 1).values[-2:]
    return 0.5 * float(pair[0] + pair[1])


def _min_keep(sizes: list[int]) -> list[int]:
    """Every layer keeps at least 1 % of its weights: a layer pruned away gets no gradient to come back."""
    return [max(1, math.ceil(MIN_DENSITY * n)) for n in sizes]


def _most_zeros(sizes: list[int]) -> int:
    """The most weights FCPTS removes from layers of these sizes: each keeps its 1 % minimum."""
    return sum(sizes) - sum(_min_keep(sizes))


def _reachable_keeping_minimum(weights: list[torch.Tensor], target: float) -> list[int]:
    """``reachable_zeros``, once the target is also known to leave every layer its 1 % minimum."""
    total = sum(w.numel() for w in weights)
    most = _most_zeros([w.numel() for w in weights])
    if target_zeros(target, total) > most:
        raise BudgetError(
            f"FCPTS keeps at least {MIN_DENSITY:.0%} of every layer (of each gate of a recurrent weight, of each of an "
            "attention layer's query, key and value rows), so the most it can remove from this model is "
            f"{math.floor(most / total * 1e4) / 1e4:.4f} of its weights; lower the sparsity target, or use MagnitudePruning "
            "(CLI: --method magnitude)"
        )
    return reachable_zeros(weights, target)


@dataclass
class FCPTS:
    """Learned per-layer sparsity that meets a global target exactly, from ~1k unlabelled samples.

    ``iterations`` steps of batch ``batch_size``; Adam on the log-thresholds (``threshold_lr``) and
    on the weights (``weight_lr``; 0 keeps the dense weights and learns only the allocation);
    ``penalty`` is λ of the sparsity term; ``temperature`` is the distillation temperature (of a
    classifier's logits; an encoder's embeddings are compared by cosine; a causal language model's next-token
    distributions by KL, as logits).
    ``init`` is the starting allocation: ``erk`` (the paper's), one of the other magnitude
    allocations, or ``best``: whichever of them distils best on the calibration set.
    ``mixed`` adds that many mixtures of two calibration inputs per calibration sample to the
    distillation set, with the dense model's logits on them: 1024 samples then cover more of the input
    space, and the pruned model follows the dense one more closely on unseen inputs (0: off; float
    inputs only: token ids do not mix).
    """

    iterations: int = 400
    batch_size: int = 64
    threshold_lr: float = 0.02
    weight_lr: float = 1e-4
    penalty: float = 1.0
    temperature: float = 4.0
    init: str = "best"
    seed: int = 0
    mixed: int = 3
    name: ClassVar[str] = "fcpts"
    needs: ClassVar[str] = "calibration"
    budgets: ClassVar[tuple[str, ...]] = ("sparsity",)
    calibrates_encoders: ClassVar[bool] = True  # takes calibration sentences for a Hugging Face encoder

    def __post_init__(self) -> None:
        check_seed(self.seed)
        for name, minimum in (("iterations", 0), ("batch_size", 1), ("mixed", 0)):
            check_whole(name, getattr(self, name), minimum)
        for name in ("threshold_lr", "weight_lr", "penalty"):
            check_real(name, getattr(self, name), 0.0)
        check_real("temperature", self.temperature, 0.0, inclusive=False)
        check_choice("init", self.init, ("best", *ALLOCATIONS))

    def stand_in(self) -> MagnitudePruning:
        """A data-free method whose files are about as large as this one's at the same sparsity (the mask's
        coding cost differs a little with the allocation): a ratio search sizes FCPTS with it first."""
        return MagnitudePruning(self.init if self.init in ALLOCATIONS else "global")

    def most_sparsity(self, model: nn.Module) -> float:
        """The most sparsity FCPTS reaches on ``model``, every layer keeping 1 % of its weights: a ratio search
        stops there."""
        sizes = [p.numel() for p in all_parts(compressible_weights(model))]
        return _most_zeros(sizes) / max(1, sum(sizes))

    def _initial_pruned(self, model: nn.Module, weights: dict, target: float, teacher: Teacher) -> tuple:
        """The starting per-layer prune counts, the allocation they come from, the buffers of that start
        pruned with BatchNorm re-estimated (``_start`` rebuilds the model from them), and its distillation
        loss on the calibration set. Candidates are scored as they would be returned, after the
        re-estimation, which matters most at high sparsity (ResNet-20 at 90 % with ERK: 14 % before it,
        82 % after)."""
        candidates = ALLOCATIONS if self.init == "best" else (self.init,)
        best = None  # (score, allocation, counts, buffers): no pruned copy of the model is kept
        with torch.no_grad():
            for allocation in candidates:
                counts = prune_counts(all_parts(weights), target, allocation)
                pruned = copy.deepcopy(model).eval()
                _prune(pruned, counts, teacher)
                score = teacher.score(pruned)
                if best is None or score < best[0]:
                    best = (score, allocation, counts, [b.clone() for b in pruned.buffers()])
                del pruned  # before the next candidate's copy
        score, allocation, counts, buffers = best
        return counts, allocation, buffers, score

    def check_target(self, model: nn.Module, budget: Budget | None) -> None:
        """Refuse a sparsity FCPTS cannot reach, before any data is loaded or work done (sweep checks every point)."""
        _reachable_keeping_minimum(all_parts(check_model(model, trains=True)), check_budget(self, budget).sparsity)

    def apply(self, model: nn.Module, data: Subset | None = None, budget: Budget | None = None) -> MethodResult:
        budget = check_budget(self, budget)
        if data is None:
            raise DataError("FCPTS needs a calibration subset of the training split")
        target = budget.sparsity
        student = copy.deepcopy(model).eval()
        weights = check_model(student, trains=True)
        names = list(weights)
        # One threshold per layer part (an attention layer's packed in-projection is three, an LSTM weight four:
        # part_counts). The parts are views the in-place clamps and pruning below read and write through, so autograd
        # does not track them.
        with torch.no_grad():
            parts = all_parts(weights)
        stacked = dict(zip(names, part_counts(weights)))
        sizes = [p.numel() for p in parts]
        total = sum(sizes)
        min_keep = _min_keep(sizes)
        # Weights an earlier stage pruned stay zero (stages never undo each other): masked after every step.
        zeros = _reachable_keeping_minimum(parts, target)
        pruned_before = zero_masks(weights)
        erk_counts = prune_counts(parts, target, "erk")
        teacher = teacher_for(model, data, self.temperature)
        init_counts, init, start_buffers, start_loss = self._initial_pruned(model, weights, target, teacher)
        # Optimise under the start's re-estimated BatchNorm statistics, not the dense model's: weights
        # tuned to stale statistics are undone by the re-estimation at the end.
        with torch.no_grad():
            for buffer, start_buffer in zip(student.buffers(), start_buffers):
                buffer.copy_(start_buffer)

        log_thresholds = nn.Parameter(
            torch.tensor([math.log(max(_kth_magnitude(p, c), 1e-12)) for p, c in zip(parts, init_counts)])
        )
        generator = torch.Generator().manual_seed(self.seed)
        teacher.add_mixtures(model, self.mixed, generator)
        groups = [{"params": [log_thresholds], "lr": self.threshold_lr}]
        if self.weight_lr > 0:
            groups.append({"params": [p for p in student.parameters()], "lr": self.weight_lr})
        optimizer = torch.optim.Adam(groups)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(self.iterations, 1))

        with progress_bar() as progress:
            task = progress.add_task("FCPTS", total=self.iterations)
            for _ in range(self.iterations):
                idx = teacher.batch(self.batch_size, generator)
                thresholds = log_thresholds.exp()
                params = {k: v if self.weight_lr > 0 else v.detach() for k, v in student.named_parameters()}
                layer_rates = []
                part = 0  # the index of the name's first part among all parts
                for name in names:
                    pieces = layer_parts(params[name], stacked[name])
                    masked = [_masked(p, thresholds[part + j]) for j, p in enumerate(pieces)]
                    params[name] = masked[0] if len(masked) == 1 else torch.cat(masked)
                    for j, p in enumerate(pieces):
                        layer_rates.append(layer_sparsity(thresholds[part + j], p, generator) * sizes[part + j])
                    part += len(pieces)
                sparsity = torch.stack(layer_rates).sum() / total
                outputs = teacher.outputs(student, idx, params)
                loss = teacher.loss(outputs, idx) + self.penalty * (sparsity - target).abs()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                with torch.no_grad():
                    for name, mask in pruned_before.items():
                        weights[name].masked_fill_(mask, 0.0)
                    stepped = log_thresholds.exp()
                    for i, w in enumerate(parts):
                        # More than the minimum kept above CLAMP_MARGIN · t: t is under the ceiling, and a count
                        # spares the selection the ceiling costs (a tenth of a step on MiniLM).
                        if int((w.abs() > stepped[i] * CLAMP_MARGIN).sum()) > min_keep[i]:
                            continue
                        ceiling = _kth_magnitude(w, sizes[i] - min_keep[i])
                        log_thresholds[i].clamp_(max=math.log(max(ceiling, 1e-12)))
                progress.update(task, advance=1, description=f"FCPTS sparsity {sparsity.detach().item():.3f}")

        # The optimiser's moments and the last gradients are three copies of the model: not needed from here.
        del optimizer, schedule
        student.zero_grad(set_to_none=True)
        # Projection: exactly ⌈target · N⌉ zeros, in the learned per-layer proportions.
        with torch.no_grad():
            thresholds = log_thresholds.exp()
            learned = [float((p.abs() <= t).sum()) for p, t in zip(parts, thresholds)]  # what _masked prunes
            caps = [n - k for n, k in zip(sizes, min_keep)]
            counts = split_exact(target_zeros(target, total), learned, caps, zeros)
            _prune(student, counts, teacher)
            # Never return worse than the starting allocation, as judged on the calibration set.
            kept = "learned"
            if start_loss < teacher.score(student):
                student, counts, kept = _start(model, init_counts, start_buffers), init_counts, init
            result = MethodResult(student)
            pruned = compressible_weights(student)
            for (name, w), removed, erk in zip(pruned.items(), per_weight(counts, pruned), per_weight(erk_counts, pruned)):
                result.codes[name] = SparseValues.from_tensor(w.detach().clone())
                row = pruned_row(name, w, removed)
                result.rows.append({**row, "erk_sparsity": sum(erk) / w.numel(), "init": init, "kept": kept})
        return result


def _prune_weights(model: nn.Module, counts: list[int]) -> None:
    """Zero each layer part's ``count`` smallest weights (``layer_parts``)."""
    for part, count in zip(all_parts(compressible_weights(model)), counts):
        part.masked_fill_(smallest_mask(part.abs(), count), 0.0)


def _prune(model: nn.Module, counts: list[int], teacher: Teacher) -> None:
    """Zero each layer part's ``count`` smallest weights, then re-estimate BatchNorm statistics."""
    _prune_weights(model, counts)
    teacher.recalibrate(model)


def _start(model: nn.Module, counts: list[int], buffers: list[torch.Tensor]) -> nn.Module:
    """The starting allocation's model, rebuilt bit for bit: the dense weights pruned by ``counts``, and the
    buffers (BatchNorm statistics) its re-estimation gave. Rebuilt only when it is returned, it is not a
    copy of the model held through the optimisation."""
    start = copy.deepcopy(model).eval()
    with torch.no_grad():
        _prune_weights(start, counts)
        for buffer, saved in zip(start.buffers(), buffers):
            buffer.copy_(saved)
    return start


class _MaskedWeight(torch.autograd.Function):
    """Forward: w · 1[|w| > t]. Backward: weights get the full gradient (straight-through, so pruned
    weights can grow back), and the threshold gets the distillation gradient through a sigmoid
    surrogate of the mask whose width is 5 % of the layer's mean magnitude.

    Only the weight and threshold are kept for the backward pass, which rebuilds the surrogate: the
    masks and surrogate of every layer are not held from forward to backward, three model-sized
    tensors in all. Each step takes the same float operations, in the same order, as the autograd
    graph of w·hard + (w − w.detach())·(1 − hard) + w.detach()·(soft − soft.detach()) did."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(w, threshold)
        return torch.where(w.abs() > threshold, w, torch.zeros((), dtype=w.dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        w, threshold = ctx.saved_tensors
        grad_threshold = None
        if ctx.needs_input_grad[1]:
            mags = w.abs()
            width = 0.05 * mags.mean() + 1e-12
            soft = torch.sigmoid((mags - threshold) / width)
            through = torch.ops.aten.sigmoid_backward(grad * w, soft) / width
            grad_threshold = (-through).sum(dim=tuple(range(through.dim())), keepdim=True).reshape(threshold.shape)
        return (grad if ctx.needs_input_grad[0] else None), grad_threshold


def _masked(w: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """The weight as the pruned model uses it, with gradients to both (``_MaskedWeight``)."""
    return _MaskedWeight.apply(w, threshold)
