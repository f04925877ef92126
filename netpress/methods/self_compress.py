"""Safety-guided self-compression (Zbeeb et al. 2025, on Cséfalvay & Imber 2023): learned per-channel bit depths.

Every coded layer's output channel gets a learnable bit depth and exponent (``netpress.quant.bitdepth``). The
model is retrained on labelled training data with cross-entropy + γ × the mean bits per weight + η ×
cross-entropy on a *preservation set*: critical training examples, the ones the model is least sure of and
representatives of each class. Bit depths fall where the task lets them; a channel at 0 bits holds only
zeros. Every ``check_every`` steps the accuracy on the preservation set is measured, and when it has fallen
by more than ``guard`` since the last check, a random share of the channels under one bit comes back: the guard
against the "irreversible forgetting" of channels dropped too early. The file stores each weight's integer,
entropy-coded, and two numbers per channel. See docs/methods/self_compress.md.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from sklearn.cluster import KMeans
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from netpress.budget import Budget
from netpress.data import Subset
from netpress.errors import BudgetError, check_real, check_seed, check_whole
from netpress.evaluate import INFERENCE_BATCH, kept_modes, predict
from netpress.methods.base import (
    MethodResult,
    check_budget,
    check_labels,
    check_model,
    compressible_weights,
    labelled_training_data,
    recalibrate_batchnorm,
    split_exact,
    zero_masks,
)
from netpress.progress import progress_bar
from netpress.quant.bitdepth import bitdepth_codes, bitdepth_quantize

UNCERTAIN = 0.2  # 1 − max softmax above which a training example counts as uncertain (Zbeeb et al.)
# Below one bit a channel's grid is {−2^e, 0}, one sign only: it no longer carries its weights, and the guard
# brings it back like a dead one (Zbeeb et al. restore only channels at 0 bits, but the preserved accuracy
# collapses while the bit depths pass through (0, 1), before any channel is at 0: then nothing is restored).
FAILING_BITS = 1.0
BATCHNORM_SAMPLES = 1024  # training samples BatchNorm statistics are re-estimated on after the weights are fixed


@dataclass
class SelfCompression:
    """Retrain with a learned bit depth per output channel, guarded by a preservation set of critical examples.

    ``steps`` Adam steps on batches of ``batch_size`` training samples: ``weight_lr`` for the model's
    parameters, ``bits_lr`` for the bit depths and exponents (Adam's ε 1e-3 for those, as Cséfalvay & Imber).
    Bit depths start at ``init_bits`` with each channel's largest weight on its grid's edge. ``gamma`` weighs
    the mean bits per weight against the cross-entropy; ``preserve`` critical training examples enter the loss
    with weight ``safety_weight`` (a batch of them each step) and are checked every ``check_every`` steps: a fall
    of more than ``guard`` in their accuracy brings back ``restore_fraction`` of the channels under one bit at
    ``restore_bits`` bits. Needs labelled training data; meets no size target: ``gamma`` trades accuracy for size.
    """

    gamma: float = 0.2
    steps: int = 3000
    batch_size: int = 128
    weight_lr: float = 1e-4
    bits_lr: float = 0.01
    init_bits: float = 8.0
    preserve: int = 1000
    safety_weight: float = 0.05
    check_every: int = 10
    guard: float = 0.1
    restore_fraction: float = 0.1
    restore_bits: float = 2.0
    seed: int = 0
    name: ClassVar[str] = "self-compress"
    needs: ClassVar[str] = "training"
    budgets: ClassVar[tuple[str, ...]] = ()
    quantizes: ClassVar[bool] = True  # its codes are final: compress() refuses a stage after it

    def __post_init__(self) -> None:
        check_seed(self.seed)
        check_whole("steps", self.steps, 0)
        check_whole("batch_size", self.batch_size, 1)
        check_whole("preserve", self.preserve, 0)
        check_whole("check_every", self.check_every, 1)
        for name in ("gamma", "weight_lr", "bits_lr", "safety_weight", "guard"):
            check_real(name, getattr(self, name), 0.0)
        check_real("init_bits", self.init_bits, 1.0)
        check_real("restore_bits", self.restore_bits, 0.0, inclusive=False)
        check_real("restore_fraction", self.restore_fraction, 0.0)
        if self.restore_fraction > 1:
            raise BudgetError(f"restore_fraction is a share of the failing channels, at most 1; got {self.restore_fraction!r}")

    def apply(self, model: nn.Module, data: Subset | None = None, budget: Budget | None = None) -> MethodResult:
        check_budget(self, budget, required=False)
        inputs, labels = labelled_training_data(data, "self-compression")
        model = copy.deepcopy(model)
        check_labels(model, inputs, labels)
        weights = check_model(model, trains=True)
        pruned_before = zero_masks(weights)  # an earlier stage's zeros stay zero
        with kept_modes(model):
            chosen = preservation_set(model, inputs, labels, self.preserve, self.seed)
            accuracy_before = _accuracy(model, inputs[chosen], labels[chosen])
        run = _Run(self, model, weights, inputs, labels, chosen, pruned_before)
        run.train()
        result = run.result()
        recalibrate_batchnorm(model, inputs[:BATCHNORM_SAMPLES])
        with kept_modes(model):
            accuracy_after = _accuracy(model, inputs[chosen], labels[chosen])
        result.rows[0]["preservation"] = {
            "size": len(chosen),
            "indices": [data.indices[i] for i in chosen.tolist()],
            "accuracy_before": accuracy_before,
            "accuracy_after": accuracy_after,
            "restores": run.restores,
        }
        return result


class _Run:
    """One self-compression training run: the bit depths and exponents beside the model's weights."""

    def __init__(
        self,
        config: SelfCompression,
        model: nn.Module,
        weights: dict[str, nn.Parameter],
        inputs: torch.Tensor,
        labels: torch.Tensor,
        chosen: torch.Tensor,
        pruned: dict[str, torch.Tensor],
    ) -> None:
        self.config, self.model, self.weights = config, model, weights
        self.inputs, self.labels, self.chosen, self.pruned = inputs, labels, chosen, pruned
        self.bits: dict[str, nn.Parameter] = {}
        self.exponents: dict[str, nn.Parameter] = {}
        self.per_channel = {n: w[0].numel() for n, w in weights.items()}
        self.total = sum(w.numel() for w in weights.values())
        with torch.no_grad():
            for name, w in weights.items():
                largest = w.detach().abs().reshape(w.shape[0], -1).amax(dim=1)
                top = 2 ** (config.init_bits - 1) - 1  # the largest integer of the starting grid
                self.exponents[name] = nn.Parameter(torch.log2(largest.clamp(min=1e-30) / top))
                self.bits[name] = nn.Parameter(torch.where(largest > 0, config.init_bits, 0.0))  # an empty channel stays dead
        self.generator = torch.Generator().manual_seed(config.seed)
        self.restores = 0

    def quantized(self) -> dict[str, torch.Tensor]:
        return {n: bitdepth_quantize(w, self.bits[n], self.exponents[n]) for n, w in self.weights.items()}

    def mean_bits(self) -> torch.Tensor:
        """Bits per coded weight the bit depths give (Cséfalvay & Imber's Q), differentiable in them."""
        return sum(b.clamp(min=0).sum() * self.per_channel[n] for n, b in self.bits.items()) / self.total

    def train(self) -> None:
        config = self.config
        optimizer = torch.optim.Adam(
            [
                {"params": list(self.model.parameters()), "lr": config.weight_lr},
                {"params": [*self.bits.values(), *self.exponents.values()], "lr": config.bits_lr},
            ]
        )
        safety = config.safety_weight > 0 and len(self.chosen) > 0
        last = self._preserved_accuracy() if len(self.chosen) else None
        self.model.train()
        with progress_bar() as progress:
            task = progress.add_task("self-compression", total=config.steps)
            for step in range(1, config.steps + 1):
                idx = torch.randint(len(self.inputs), (config.batch_size,), generator=self.generator)
                quantized = self.quantized()
                error = F.cross_entropy(functional_call(self.model, quantized, (self.inputs[idx],)), self.labels[idx])
                loss = error + config.gamma * self.mean_bits()
                if safety:
                    pick = self.chosen[torch.randint(len(self.chosen), (config.batch_size,), generator=self.generator)]
                    preserved = functional_call(self.model, quantized, (self.inputs[pick],))
                    loss = loss + config.safety_weight * F.cross_entropy(preserved, self.labels[pick])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                with torch.no_grad():
                    for name, mask in self.pruned.items():
                        self.weights[name].masked_fill_(mask, 0.0)
                if last is not None and step % config.check_every == 0:
                    now = self._preserved_accuracy()
                    if last - now > config.guard:
                        self._restore()
                    last = now
                bits = float(self.mean_bits().detach())
                progress.update(task, advance=1, description=f"self-compression {bits:.2f} bits/weight")
        self.model.eval()

    def _preserved_accuracy(self) -> float:
        with kept_modes(self.model), torch.no_grad():
            self.model.eval()
            quantized = self.quantized()
            correct = 0
            for idx in self.chosen.split(INFERENCE_BATCH):
                logits = functional_call(self.model, quantized, (self.inputs[idx],))
                correct += int((logits.argmax(dim=1) == self.labels[idx]).sum())
        return correct / len(self.chosen)

    def _restore(self) -> None:
        """Bring back a random ``restore_fraction`` of the channels under one bit at ``restore_bits`` bits."""
        failing = [(n, int(i)) for n, b in self.bits.items() for i in (b < FAILING_BITS).nonzero().reshape(-1)]
        count = math.ceil(self.config.restore_fraction * len(failing))
        if not count:
            return
        with torch.no_grad():
            for k in torch.randperm(len(failing), generator=self.generator)[:count].tolist():
                name, channel = failing[k]
                self.bits[name][channel] = self.config.restore_bits
        self.restores += 1

    def result(self) -> MethodResult:
        """The weights on their final grids, their codes, and a row per layer."""
        result = MethodResult(self.model)
        with torch.no_grad():
            for name, w in self.weights.items():
                codes = bitdepth_codes(w, self.bits[name], self.exponents[name])
                w.copy_(codes.dequantize())
                bits = self.bits[name].clamp(min=0)
                result.codes[name] = codes
                result.rows.append(
                    {
                        "name": name,
                        "shape": list(w.shape),
                        "params": w.numel(),
                        "channels": w.shape[0],
                        "dead_channels": int((bits == 0).sum()),
                        "bit_depth": float(bits.mean()),
                        "levels": codes.num_levels,
                        "sparsity": codes.sparsity(),
                    }
                )
        result.rows[0]["mean_bit_depth"] = float(self.mean_bits().detach())
        return result


def preservation_set(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices into ``inputs`` of up to ``size`` critical training examples, sorted.

    Up to half are the examples the model is least sure of (1 − max softmax above ``UNCERTAIN``, the most
    uncertain first); the rest cover every class: one example nearest each k-means centroid of the class's
    features (the input of the model's last coded layer), classes sharing the places in proportion to their
    counts. Call it on the training split: the examples are trained on.
    """
    size = min(size, len(inputs))
    if size == 0:
        return torch.zeros(0, dtype=torch.int64)
    logits, features = _logits_and_features(model, inputs)
    doubt = 1 - logits.softmax(dim=1).amax(dim=1)
    order = torch.argsort(doubt, descending=True, stable=True)
    chosen = order[: min(int((doubt > UNCERTAIN).sum()), size // 2)].tolist()
    taken = torch.zeros(len(inputs), dtype=torch.bool)
    taken[chosen] = True
    classes = sorted(int(c) for c in torch.unique(labels))
    pools = [((labels == c) & ~taken).nonzero().reshape(-1) for c in classes]
    places = split_exact(size - len(chosen), [len(p) for p in pools], [len(p) for p in pools])
    for pool, k in zip(pools, places):
        if k == 0:
            continue
        points = features[pool].double().numpy()
        centroids = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(points).cluster_centers_
        distances = torch.cdist(torch.from_numpy(centroids), torch.from_numpy(points))
        for row in distances:  # nearest first; each example once
            for j in torch.argsort(row, stable=True).tolist():
                if not taken[pool[j]]:
                    taken[pool[j]] = True
                    break
    return taken.nonzero().reshape(-1)


def _logits_and_features(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits (eval mode) and the flattened input of its last coded layer, for every input."""
    layer = model.get_submodule(list(compressible_weights(model))[-1].removesuffix(".weight"))
    seen: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, args, _out: seen.append(args[0].detach().flatten(1)))
    try:
        logits = predict(model, inputs)
    finally:
        hook.remove()
    return logits, torch.cat(seen)[: len(inputs)]  # predict pads its last batch: the padding's rows come last


def _accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float | None:
    return float((predict(model, inputs).argmax(dim=1) == labels).float().mean()) if len(inputs) else None
