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
import warnings
from dataclasses import dataclass
from typing import ClassVar

import torch
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.utils.data import Dataset

from netpress.budget import Budget
from netpress.codec.codes import Codes
from netpress.codec.entropy import MAX_ALPHABET
from netpress.data import Subset, check_labelled, check_not_test, dataset_sha256, stacked_examples
from netpress.errors import BudgetError, DataError, NetpressError, check_flag, check_real, check_seed, check_whole, one_line
from netpress.evaluate import INFERENCE_BATCH, kept_modes, predict
from netpress.graph.dead_channels import cut_dead_channels
from netpress.graph.groups import block_index
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
    split_exact,
    zero_masks,
)
from netpress.methods.sizing import FileSizer, refuse_unreachable, with_reference
from netpress.progress import progress_bar
from netpress.quant.bitdepth import bitdepth_codes, bitdepth_quantize

UNCERTAIN = 0.2  # 1 − max softmax above which a training example counts as uncertain (Zbeeb et al.)
# Below one bit a channel's grid is {−2^e, 0}, one sign only: it no longer carries its weights, and the guard
# brings it back like a dead one (Zbeeb et al. restore only channels at 0 bits, but the preserved accuracy
# collapses while the bit depths pass through (0, 1), before any channel is at 0: then nothing is restored).
FAILING_BITS = 1.0
PRESSURE_GROWTH = 1.1  # with a target: the hinge's weight grows by this at each check the bit depths are over it
MAX_SHIFT = 16.0  # bits a fit to the target may add to every channel
CODE_BITS = math.log2(MAX_ALPHABET)  # the widest grid a tensor's codes may have: the codec codes 2^16 levels
CUT_EXAMPLES = 64  # training samples the constants of dead channels are read on
FIT_STEPS = 12  # bisection steps of the fit: the shift to 1/4096 of its bracket


@dataclass
class SelfCompression:
    """Retrain with a learned bit depth per output channel, guarded by a preservation set of critical examples.

    ``steps`` Adam steps on batches of ``batch_size`` training samples: ``weight_lr`` for the model's
    parameters, ``bits_lr`` for the bit depths and exponents (PyTorch's ε: with Cséfalvay & Imber's 1e-3 the size
    term's gradient, ~1e-5 per bit depth, hardly moves them).
    Bit depths start at ``init_bits`` with each channel's largest weight on its grid's edge. ``gamma`` weighs
    the mean bits per weight against the cross-entropy; ``preserve`` critical training examples enter the loss
    with weight ``safety_weight`` (a batch of them each step) and are checked every ``check_every`` steps: a fall
    of more than ``guard`` in their accuracy brings back ``restore_fraction`` of the channels under one bit at
    ``restore_bits`` bits. Needs labelled training data. ``preservation``: your own critical examples (a
    labelled torch Dataset, not test data), guarded instead of the ``preserve`` netpress would choose.

    Without a target, ``gamma`` trades accuracy for size. With a ratio target the size term is a hinge on the
    mean bit depth the file's bytes allow, ``gamma`` growing while the bit depths are over it; then every live
    channel's grid is made finer or coarser by one shift of its bit depth (its range kept), the finest whose
    written file fits: the ratio is met on the file.
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
    cut_channels: bool = True
    seed: int = 0
    preservation: Dataset | None = None
    name: ClassVar[str] = "self-compress"
    needs: ClassVar[str] = "training"
    budgets: ClassVar[tuple[str, ...]] = ("ratio",)
    target_optional: ClassVar[bool] = True  # without one, gamma sets the size
    quantizes: ClassVar[bool] = True  # its codes are final: compress() refuses a stage after it

    def __post_init__(self) -> None:
        check_seed(self.seed)
        check_whole("steps", self.steps, 0)
        check_whole("batch_size", self.batch_size, 1)
        check_whole("preserve", self.preserve, 0)
        check_whole("check_every", self.check_every, 1)
        check_flag("cut_channels", self.cut_channels)
        for name in ("gamma", "weight_lr", "bits_lr", "safety_weight"):
            check_real(name, getattr(self, name), 0.0)
        check_real("guard", self.guard, 0.0, maximum=1.0, why=" (a fall in accuracy, as a fraction)")
        widest = ", the widest grid a file codes"
        check_real("init_bits", self.init_bits, 1.0, maximum=CODE_BITS, why=widest)
        check_real("restore_bits", self.restore_bits, 0.0, inclusive=False, maximum=CODE_BITS, why=widest)
        check_real("restore_fraction", self.restore_fraction, 0.0, maximum=1.0, why=" (a share of the failing channels)")
        if self.preservation is not None:
            if not isinstance(self.preservation, Dataset):
                raise DataError(f"preservation is a labelled torch Dataset, got {type(self.preservation).__name__}")
            check_labelled(self.preservation, "the preservation set")
            try:
                check_not_test(self.preservation)  # it is trained on
            except DataError:
                raise DataError(
                    "the preservation set is the test split: take your critical examples from the training data"
                ) from None
            if self.preserve not in (SelfCompression.preserve, len(self.preservation)):  # the default, or the set's own count
                raise BudgetError("give preserve (examples netpress chooses) or preservation (yours), not both")
            self.preserve = len(self.preservation)  # what the file's record says was guarded

    @seeds_torch
    def apply(self, model: nn.Module, data: Subset | None = None, budget: Budget | None = None) -> MethodResult:
        budget = with_reference(self, budget, model)
        inputs, labels = labelled_training_data(data, "self-compression")
        model = copy.deepcopy(model)
        check_labels(model, inputs, labels)
        weights = check_model(model, trains=True)
        refuse_tied(model, self.name)
        pruned_before = zero_masks(weights)  # an earlier stage's zeros stay zero
        sizer = FileSizer(model, self, budget, data) if budget is not None else None
        if self.preservation is not None:
            chosen = None
            preserved = stacked_examples(self.preservation, "the preservation set")
            check_labels(model, *preserved, what="preservation")
        else:
            with kept_modes(model):
                chosen = preservation_set(model, inputs, labels, self.preserve, self.seed)
            preserved = inputs[chosen], labels[chosen]
        with kept_modes(model):
            accuracy_before = _accuracy(model, *preserved)
        run = _Run(self, model, weights, inputs, labels, preserved, pruned_before, sizer)
        run.train()
        statistics = inputs[:BATCHNORM_SAMPLES]
        run.settle(statistics)
        if sizer is not None:  # fitted first: the channels a coarser grid leaves at 0 bits are cut too
            run.fit()
            run.settle(statistics)
        cut = run.cut(inputs[:CUT_EXAMPLES]) if self.cut_channels else None
        if sizer is not None:  # the cut frees bytes: fitted again to spend them
            run.fit()
            run.settle(statistics)
            if not run.fits():  # the new statistics take a few more bytes
                run.fit()
                run.settle()
        result = run.result()
        if sizer is not None:  # a file sized for a target is written in the dtype it was sized in, whatever the input's
            result.raw_dtype = sizer.raw_dtype
        if cut is not None:
            result.rows[0]["cut"] = cut
        with kept_modes(model):
            accuracy_after = _accuracy(model, *preserved)
        result.rows[0]["preservation"] = {
            "size": len(preserved[0]),
            **(
                {"indices": [data.indices[i] for i in chosen.tolist()]}
                if chosen is not None
                else {"yours_sha256": dataset_sha256(self.preservation)}
            ),
            "accuracy_before": accuracy_before,
            "accuracy_after": accuracy_after,
            "restores": run.restores,
        }
        return result

    def check_target(self, model: nn.Module, budget: Budget | None) -> None:
        refuse_unreachable(self, model, budget, _zero_codes)


class _Run:
    """One self-compression training run: the bit depths and exponents beside the model's weights."""

    def __init__(
        self,
        config: SelfCompression,
        model: nn.Module,
        weights: dict[str, nn.Parameter],
        inputs: torch.Tensor,
        labels: torch.Tensor,
        preserved: tuple[torch.Tensor, torch.Tensor],
        pruned: dict[str, torch.Tensor],
        sizer: FileSizer | None,
    ) -> None:
        """``preserved``: the preservation set's inputs and labels. ``sizer``: with a ratio target, what
        measures the file; the mean bit depth it allows is the hinge."""
        self.config, self.model, self.weights, self.sizer = config, model, weights, sizer
        self.inputs, self.labels, self.pruned = inputs, labels, pruned
        self.preserved_inputs, self.preserved_labels = preserved
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
        self.shift = 0.0  # bits added to every live channel's depth by the fit to the target (its range kept)
        self.allowed_bits = None
        if sizer is not None:
            minimum = sizer.check_reachable(_zero_codes(weights))
            self.allowed_bits = 8 * (sizer.target - minimum) / self.total

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
        preserving = len(self.preserved_inputs) > 0
        safety = config.safety_weight > 0 and preserving
        pressure = config.gamma
        last = self._preserved_accuracy() if preserving else None
        self.model.train()
        with progress_bar() as progress:
            task = progress.add_task("self-compression", total=config.steps)
            for step in range(1, config.steps + 1):
                idx = torch.randint(len(self.inputs), (config.batch_size,), generator=self.generator)
                quantized = self.quantized()
                error = F.cross_entropy(functional_call(self.model, quantized, (self.inputs[idx],)), self.labels[idx])
                size = self.mean_bits()
                bits = float(size.detach())
                if self.allowed_bits is None:
                    loss = error + config.gamma * size
                else:  # a hinge at the bits the file allows, its weight growing while the bits are over them
                    loss = error + pressure * F.relu(size - self.allowed_bits)
                    if step % config.check_every == 0 and bits > self.allowed_bits:
                        pressure *= PRESSURE_GROWTH
                if safety:
                    pick = torch.randint(len(self.preserved_inputs), (config.batch_size,), generator=self.generator)
                    preserved = functional_call(self.model, quantized, (self.preserved_inputs[pick],))
                    loss = loss + config.safety_weight * F.cross_entropy(preserved, self.preserved_labels[pick])
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
                progress.update(task, advance=1, description=f"self-compression {bits:.2f} bits/weight")
        self.model.eval()
        self.latent = {n: w.detach().clone() for n, w in self.weights.items()}  # what the final grids quantize

    def _preserved_accuracy(self) -> float:
        with kept_modes(self.model), torch.no_grad():
            self.model.eval()
            quantized = self.quantized()
            correct = 0
            for start in range(0, len(self.preserved_inputs), INFERENCE_BATCH):
                rows = slice(start, start + INFERENCE_BATCH)
                logits = functional_call(self.model, quantized, (self.preserved_inputs[rows],))
                correct += int((logits.argmax(dim=1) == self.preserved_labels[rows]).sum())
        return correct / len(self.preserved_inputs)

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

    def shifted(self, shift: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's bit depths and exponents with ``shift`` bits more on every live channel, its range kept; a
        channel is never given more than the codec's widest grid (``CODE_BITS``)."""
        out = {}
        for name, bits in self.bits.items():
            bits, exponents = bits.detach(), self.exponents[name].detach()
            live, over = bits > 0, bits + shift > CODE_BITS
            out[name] = (
                torch.where(live, torch.where(over, CODE_BITS, bits + shift), bits),
                torch.where(live, torch.where(over, exponents - (CODE_BITS - bits), exponents - shift), exponents),
            )
        return out

    def codes(self, shift: float) -> dict[str, Codes]:
        return {n: bitdepth_codes(self.latent[n], *grid) for n, grid in self.shifted(shift).items()}

    def fit(self) -> None:
        """The finest shift of every live channel's grid (a bisection on the written file) that meets the target;
        with every channel at 0 bits the file is the smallest, which ``check_reachable`` found within it."""
        fits = self.fits
        most = max(float(b.detach().max()) for b in self.bits.values())
        ceiling = max(0.0, min(MAX_SHIFT, CODE_BITS - most))  # finer would only widen grids ``shifted`` caps
        if fits(0.0):
            low, high = 0.0, min(1.0, ceiling)
            while high > low and fits(high):
                low, high = high, min(2 * high, ceiling)
            if high <= low:  # the finest grids the codec takes fit
                self.shift = low
                return
        else:
            low, high = -max(float(b.detach().max()) for b in self.bits.values()), 0.0
        for _ in range(FIT_STEPS):
            middle = (low + high) / 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        self.shift = low

    def fits(self, shift: float | None = None) -> bool:
        """Whether the file at ``shift`` (default: the current one) meets the target."""
        return self.sizer.bytes(self.codes(self.shift if shift is None else shift)) <= self.sizer.target

    def settle(self, inputs: torch.Tensor | None = None) -> None:
        """Put the weights on their grids (at the current shift); re-estimate BatchNorm statistics on ``inputs``."""
        with torch.no_grad():
            for name, codes in self.codes(self.shift).items():
                self.weights[name].copy_(codes.dequantize())
        if inputs is not None:
            recalibrate_batchnorm(self.model, inputs)

    def cut(self, example: torch.Tensor) -> list[dict]:
        """Cut the channels at 0 bits out of the model (``cut_dead_channels``), and out of the latent weights, bit
        depths and exponents; one row per group cut, or one naming why none could be (a model tracing cannot
        follow keeps its shapes)."""
        try:
            cuts = cut_dead_channels(self.model, example)
        except NetpressError as exc:
            return [{"reason": f"no channel cut: {one_line(exc)}"}]
        for cut in cuts:
            for member in cut.group.members:
                name = f"{member.module}.weight"
                if name not in self.latent:  # a BatchNorm: the cut maps its statistics itself
                    continue
                if member.role == "producer":  # its rows, each with its bit depth and exponent
                    self.latent[name] = self.latent[name][cut.kept]
                    self.bits[name] = self.bits[name].detach()[cut.kept]
                    self.exponents[name] = self.exponents[name].detach()[cut.kept]
                else:  # its input columns, ``expand`` per channel after a flatten
                    self.latent[name] = self.latent[name].index_select(1, block_index(cut.kept, member.expand))
        self.weights = compressible_weights(self.model)  # the cut layers hold new parameters
        self.per_channel = {n: w[0].numel() for n, w in self.weights.items()}
        self.total = sum(w.numel() for w in self.weights.values())
        return [{"group": cut.group.name, "channels": cut.group.channels, "kept": len(cut.kept)} for cut in cuts]

    def result(self) -> MethodResult:
        """The weights' codes on their final grids, and a row per layer (``settle`` has put the weights there)."""
        codes = self.codes(self.shift)
        result = MethodResult(self.model, codes)
        with torch.no_grad():
            for name, (bits, _) in self.shifted(self.shift).items():
                w = self.weights[name]
                bits = bits.clamp(min=0)
                result.rows.append(
                    {
                        "name": name,
                        "shape": list(w.shape),
                        "params": w.numel(),
                        "channels": w.shape[0],
                        "dead_channels": int((bits == 0).sum()),
                        "bit_depth": float(bits.mean()),
                        "levels": codes[name].num_levels,
                        "sparsity": codes[name].sparsity(),
                    }
                )
        result.rows[0]["mean_bit_depth"] = sum(r["bit_depth"] * r["params"] for r in result.rows) / self.total
        if self.sizer is not None:
            result.rows[0].update(allowed_bit_depth=self.allowed_bits, shift=self.shift)
        return result


def preservation_set(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices into ``inputs`` of up to ``size`` critical training examples, sorted.

    Up to half are the examples the model is least sure of (1 − max softmax above ``UNCERTAIN``, the most
    uncertain first); the rest cover every class: one example nearest each k-means centroid of the class's
    features (the input of the model's last coded layer), classes sharing the places in proportion to their
    counts. Call it on the training split: the examples are trained on.
    """
    check_whole("size", size, 0)
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
        with warnings.catch_warnings():  # fewer distinct points than k (a dead layer): equal centroids, and
            warnings.simplefilter("ignore", ConvergenceWarning)  # each still takes an example of its own below
            centroids = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(points).cluster_centers_
        distances = torch.cdist(torch.from_numpy(centroids), torch.from_numpy(points))
        for row in distances:  # nearest first; each example once
            for j in torch.argsort(row, stable=True).tolist():
                if not taken[pool[j]]:
                    taken[pool[j]] = True
                    break
    return taken.nonzero().reshape(-1)


def _logits_and_features(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits (eval mode) and the flattened input of the last coded layer it runs, for every input.

    That input stands for a sample only where the layer runs once per batch on a row per sample: a layer fed
    sequence-first (``nn.TransformerEncoder`` without ``batch_first``), by keywords, or twice in a pass gives the
    logits instead."""
    layer = _last_layer_run(model, inputs[:1])
    batches: list[int] = []
    seen: list[torch.Tensor | None] = []
    hooks = [model.register_forward_pre_hook(lambda _m, args: batches.append(len(args[0])))]
    if layer is not None:
        # A tensor of rows, or nothing (a packed sequence into an RNN): then the logits stand in.
        hooks.append(
            layer.register_forward_hook(
                lambda _m, args, _out: seen.append(args[0].detach() if args and torch.is_tensor(args[0]) else None)
            )
        )
    try:
        logits = predict(model, inputs)
    finally:
        for hook in hooks:
            hook.remove()
    rows = len(seen) == len(batches) and all(s is not None and s.dim() > 0 and len(s) == b for s, b in zip(seen, batches))
    if not rows:
        return logits, logits
    return logits, torch.cat([s.flatten(1) for s in seen])[: len(inputs)]  # predict pads its last batch: padding comes last


def _last_layer_run(model: nn.Module, sample: torch.Tensor) -> nn.Module | None:
    """The coded layer a forward pass calls last, which the order of declaration does not tell (a head declared
    first), nor does the last coded weight (an attention layer's output projection is used by its weight, its
    module never called)."""
    layers = dict.fromkeys(model.get_submodule(name.rpartition(".")[0]) for name in compressible_weights(model))
    called: list[nn.Module] = []
    hooks = [layer.register_forward_hook(lambda module, _args, _out: called.append(module)) for layer in layers]
    try:
        predict(model, sample)
    finally:
        for hook in hooks:
            hook.remove()
    return called[-1] if called else None


def _accuracy(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> float | None:
    return int((predict(model, inputs).argmax(dim=1) == labels).sum()) / len(inputs) if len(inputs) else None  # exact


def _zero_codes(weights: dict[str, torch.Tensor]) -> dict[str, Codes]:
    """Every coded weight zero, on per-channel tables: the smallest file the method can write."""
    zero = {n: torch.zeros(w.shape[0]) for n, w in weights.items()}
    return {n: bitdepth_codes(torch.zeros_like(w), zero[n], zero[n]) for n, w in weights.items()}
