"""L²: lossy and lossless compression optimised together for one file-size target (Shi et al., ICCV 2023).

Every Linear/Conv/Embedding weight goes through a dead-zone quantizer (``netpress.quant.deadzone``) whose edge
and step are learned against a differentiable estimate of the range-coded size
(``netpress.quant.rate``). One global byte budget, set by the target ratio, is traded against
distillation from the dense model on a calibration subset, so the per-layer allocation emerges
from the optimisation. Rounds alternate a transform phase (edges and steps) and a reconstruction
phase (latent weights seen through the quantizer). Then the file itself is serialised, the grids
are rescaled to the finest that fits the target and the weights re-adapted; if the file is still
over, the grids are coarsened by bisection until it fits: the ratio a report gives is the ratio of
the written file. The reconstructed weights are written only if they distil better than the
original weights on the same grids (on fine grids they do not). See docs/methods/l2.md for where
netpress departs from the paper's code.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from netpress.budget import Budget
from netpress.codec.container import read_manifest
from netpress.compressed import RAW_DTYPES, check_float16_range, tied_names
from netpress.data import Subset
from netpress.errors import BudgetError, DataError, NetpressError, check_choice, check_flag, check_real, check_seed, check_whole
from netpress.methods.base import (
    MethodResult,
    absorb_batchnorm_statistics,
    batchnorm_layers,
    check_model,
    zero_masks,
)
from netpress.methods.sizing import FileSizer, with_reference
from netpress.methods.teacher import teacher_for
from netpress.progress import progress_bar
from netpress.quant.deadzone import deadzone_codes, deadzone_encode, deadzone_quantize
from netpress.quant.rate import estimated_bits

# How fast the rate multiplier reacts to the estimate being over (or under) budget, per step.
DUAL_RATE = 0.2
# The finest grid the fit phase may move to, relative to the learned one.
FILL_LIMIT = 0.7
# The finest initial grid: at most this many levels on each side of zero (a count table stays small),
# up to the tensor's largest weight or OUTLIER_RMS × its RMS, whichever is smaller: a transformer's
# outlier weights (a BERT output projection's largest is up to 175 × its RMS) must not coarsen the grid
# of the rest, and a tensor without outliers (a Gaussian's largest is about 5 × its RMS) is left as it was.
MAX_LEVELS_PER_SIDE = 127
OUTLIER_RMS = 8.0


@dataclass
class L2:
    """Dead-zone quantization + entropy coding, learned for a target file size (``--ratio``).

    ``rounds`` × (``transform_steps`` on the log edges and steps at ``transform_lr``, then
    ``reconstruction_steps`` on the latent weights at ``weight_lr``), batches of ``batch_size``.
    The task loss is distillation from the dense model, labels not needed: KL at ``temperature`` on a
    classifier's logits, the cosine distance of a Hugging Face encoder's sentence embeddings, the KL divergence of a
    causal language model's next-token distributions.
    The transform phase adds μ × estimated bytes / budget, μ starting at ``rate_weight`` × the ratio of
    the two gradients and adapted by dual ascent; reconstruction uses the task loss alone.
    ``per_channel`` learns an edge and step per output channel; ``raw_dtype`` stores biases and
    normalisation tensors in fp16 (default) or fp32. ``resolution`` sets the rate estimate's kernel width, the
    span of a tensor's codes over ``resolution`` (``netpress.quant.rate``).
    """

    rounds: int = 2
    transform_steps: int = 100
    reconstruction_steps: int = 300
    batch_size: int = 64
    transform_lr: float = 0.02
    weight_lr: float = 1e-4
    rate_weight: float = 1.0
    temperature: float = 4.0
    resolution: int = 64
    per_channel: bool = False
    raw_dtype: str = "fp16"
    seed: int = 0
    name: ClassVar[str] = "l2"
    needs: ClassVar[str] = "calibration"
    budgets: ClassVar[tuple[str, ...]] = ("ratio",)
    quantizes: ClassVar[bool] = True  # its codes are final: compress() refuses a stage after it
    calibrates_encoders: ClassVar[bool] = True  # takes calibration sentences for a Hugging Face encoder

    def __post_init__(self) -> None:
        check_seed(self.seed)
        for name, minimum in (
            ("rounds", 1),
            ("transform_steps", 0),
            ("reconstruction_steps", 0),
            ("batch_size", 1),
            ("resolution", 2),
        ):
            check_whole(name, getattr(self, name), minimum)
        for name in ("transform_lr", "weight_lr", "rate_weight"):
            check_real(name, getattr(self, name), 0.0)
        check_real("temperature", self.temperature, 0.0, inclusive=False)
        check_choice("raw_dtype", self.raw_dtype, RAW_DTYPES)
        check_flag("per_channel", self.per_channel)

    def apply(self, model: nn.Module, data: Subset | None = None, budget: Budget | None = None) -> MethodResult:
        if data is None:
            raise DataError("L² needs a calibration subset of the training split")
        return _Run(self, model, with_reference(self, budget, model), data).execute()

    def check_target(self, model: nn.Module, budget: Budget | None) -> None:
        """Refuse a ratio no file can reach, before any data is loaded or work done (sweep checks every point)."""
        _Run(self, model, with_reference(self, budget, model)).smallest_file_bytes()


class _Run:
    """One L² optimisation: the state shared by its phases."""

    def __init__(self, config: L2, model: nn.Module, budget: Budget, data: Subset | None = None) -> None:
        """Without ``data`` the run can only size files (``smallest_file_bytes``)."""
        self.config = config
        self.budget = budget
        self.target = budget.target_bytes()
        self.student = copy.deepcopy(model).eval()
        weights = check_model(self.student, trains=True)
        self.names = list(weights)
        if data is not None:
            self.teacher = teacher_for(model, data, config.temperature)  # distillation needs no labels
        self.generator = torch.Generator().manual_seed(config.seed)
        constants = absorb_batchnorm_statistics(self.student)
        _round_raw_tensors(self.student, set(self.names), config.raw_dtype)
        self.sizer = FileSizer(self.student, config, budget, data, config.raw_dtype, constants)
        self.original = copy.deepcopy(self.student.state_dict())  # the dense model as the file would store it
        self.latent = {n: nn.Parameter(w.detach().clone()) for n, w in weights.items()}
        self.pruned = zero_masks(weights)  # an earlier stage's zeros stay zero: masked after every step
        self.log_edge: dict[str, nn.Parameter] = {}
        self.log_step: dict[str, nn.Parameter] = {}

    # -- sizes -------------------------------------------------------------------------------------
    def _codes(self, scale: float = 1.0, weights: dict | None = None) -> dict:
        """Hard codes of ``weights`` (default: the latent weights) on the current grids times ``scale``."""
        weights = self.latent if weights is None else weights
        return {n: deadzone_codes(weights[n], self.log_edge[n].exp() * scale, self.log_step[n].exp() * scale) for n in self.names}

    def _estimated_bits(self, name: str) -> torch.Tensor:
        codes = deadzone_encode(self.latent[name], self.log_edge[name].exp(), self.log_step[name].exp())
        return estimated_bits(codes, self.config.resolution)

    def _estimated_bytes(self) -> torch.Tensor:
        return torch.stack([self._estimated_bits(n) for n in self.names]).sum() / 8

    def _calibrate_overhead(self) -> None:
        """Bytes the estimate does not see (headers, tables, raw tensors, coder overhead): real − estimate."""
        with torch.no_grad():
            estimate = float(self._estimated_bytes())
        self.rate_budget = max(self.target - (self.sizer.bytes(self._codes()) - estimate), 1.0)
        self.last_rate = estimate / self.rate_budget

    # -- the loss ------------------------------------------------------------------------------------
    def _quantized(self) -> dict[str, torch.Tensor]:
        return {n: deadzone_quantize(self.latent[n], self.log_edge[n].exp(), self.log_step[n].exp()) for n in self.names}

    def _backward_rate(self, multiplier: float) -> torch.Tensor:
        """Backpropagate ``multiplier`` × estimated bytes / budget one layer at a time, and return the rate (0-d,
        no graph). The estimate's graph holds about 130 bytes per weight, so only one layer's is alive at once;
        each layer's grid reaches only its own estimate, so the gradients are those of the sum, bit for bit."""
        bits = []
        for n in self.names:
            layer = self._estimated_bits(n)
            (multiplier * (layer / 8 / self.rate_budget)).backward()
            bits.append(layer.detach())
        return torch.stack(bits).sum() / 8 / self.rate_budget

    def _balance(self) -> None:
        """Start the rate multiplier where the task and rate gradients on the grids have equal norms."""
        transform = [*self.log_edge.values(), *self.log_step.values()]
        idx = self.teacher.chunks(256)[0]
        task = self.teacher.loss(self.teacher.outputs(self.student, idx, self._quantized()), idx)
        g_task = torch.autograd.grad(task, transform, allow_unused=True)
        for p in transform:
            p.grad = None
        self._backward_rate(1.0)
        g_rate = [p.grad for p in transform]
        for p in transform:
            p.grad = None
        norm = lambda gs: math.sqrt(sum(float((g**2).sum()) for g in gs if g is not None))  # noqa: E731
        self.multiplier = self.config.rate_weight * norm(g_task) / max(norm(g_rate), 1e-12)

    def _phase(
        self, params: list[nn.Parameter], lr: float, steps: int, label: str, progress, task, with_rate: bool = False
    ) -> None:
        """Adam on ``params``. ``with_rate`` (the grids learning) adds the rate term, whose multiplier
        follows dual ascent, so the estimate settles on the budget instead of chattering around a hinge."""
        if steps == 0 or lr == 0:
            progress.update(task, advance=steps)
            return
        optimizer = torch.optim.Adam(params, lr=lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            idx = self.teacher.batch(self.config.batch_size, self.generator)
            loss = self.teacher.loss(self.teacher.outputs(self.student, idx, self._quantized()), idx)
            loss.backward()
            if not math.isfinite(loss.item()):
                raise NetpressError(
                    f"L² {label}: the loss is not finite; calibration inputs far outside the range the model was "
                    "trained on (standardise them as for training) overflow it"
                )
            rate = self.last_rate
            if with_rate:
                rate_tensor = self._backward_rate(self.multiplier)
                loss, rate = loss.detach() + self.multiplier * rate_tensor, rate_tensor.item()
                if not math.isfinite(loss.item()):  # the multiplier overflowed: the size stayed far over the budget
                    raise BudgetError(
                        f"L² cannot bring the file to {self.target:,} bytes on these grids: the weights' codes stayed "
                        f"{rate:.0f}× the {self.rate_budget:,.0f} bytes the headers, tables and uncoded tensors leave them; "
                        "ask for a smaller ratio"
                        + (", or drop per_channel (CLI: --per-channel)" if self.config.per_channel else "")
                    )
            optimizer.step()
            schedule.step()
            self._keep_edges_wide()
            self._keep_pruned_zero()
            if with_rate:
                self.multiplier *= math.exp(DUAL_RATE * (rate - 1.0))
                self.last_rate = rate
            progress.update(task, advance=1, description=f"L² {label}: size {rate:.2f}× budget")

    def _keep_pruned_zero(self) -> None:
        with torch.no_grad():
            for n, mask in self.pruned.items():
                self.latent[n].masked_fill_(mask, 0.0)

    def _keep_edges_wide(self) -> None:
        """The zero bin is never narrower than the others (step ≤ 2 · edge); the step gives way, since
        widening the edge instead would coarsen the grid the task loss asked to refine."""
        with torch.no_grad():
            for n in self.names:
                self.log_step[n].copy_(torch.minimum(self.log_step[n], self.log_edge[n] + math.log(2)))

    # -- initialisation ------------------------------------------------------------------------------
    def _sensitivities(self) -> dict[str, float]:
        """Mean squared gradient per weight of the teacher's sensitivity loss (a diagonal Fisher estimate) for each
        layer. A weight the teacher's outputs never read has none (the floor, 1e-20): it starts on a far coarser
        grid than the weights that matter, and only the rate term moves it."""
        grads = {n: torch.zeros_like(w) for n, w in self.latent.items()}
        for idx in self.teacher.chunks(256):
            outputs = self.teacher.outputs(self.student, idx, dict(self.latent))
            loss = self.teacher.sensitivity_loss(outputs, idx)
            g = torch.autograd.grad(loss, [self.latent[n] for n in self.names], allow_unused=True)
            for n, gi in zip(self.names, g):
                if gi is not None:  # an output the teacher does not read (BERT's pooler under mean pooling)
                    grads[n] += gi.detach() ** 2
        return {n: float(grads[n].mean()) + 1e-20 for n in self.names}

    def _grid_shape(self, name: str) -> tuple[int, ...]:
        """One edge and step per output channel, or one per tensor."""
        return (self.latent[name].shape[0],) if self.config.per_channel else ()

    def _initialise(self, weight_bytes: float) -> None:
        """Steps ∝ 1/√sensitivity (equal distortion per bit across layers), scaled by bisection to the budget."""
        sens = self._sensitivities()
        shape = {n: self._grid_shape(n) for n in self.names}
        base = {n: 1.0 / math.sqrt(sens[n]) for n in self.names}
        spread = {n: float(self.latent[n].detach().abs().max()) + 1e-12 for n in self.names}
        finest = {
            n: min(spread[n], OUTLIER_RMS * float(self.latent[n].detach().pow(2).mean().sqrt())) / MAX_LEVELS_PER_SIDE
            for n in self.names
        }

        def set_scale(alpha: float) -> None:
            for n in self.names:
                step = min(max(alpha * base[n], finest[n]), spread[n])
                self.log_step[n] = nn.Parameter(torch.full(shape[n], math.log(step)))
                self.log_edge[n] = nn.Parameter(torch.full(shape[n], math.log(step)))

        low, high = 1e-12, 1e12
        for _ in range(60):  # geometric bisection on the estimated size
            alpha = math.sqrt(low * high)
            set_scale(alpha)
            with torch.no_grad():
                size = float(self._estimated_bytes())
            if size > weight_bytes:
                low = alpha
            else:
                high = alpha
            if high / low < 1.01:
                break
        set_scale(high)

    # -- finishing -----------------------------------------------------------------------------------
    def _apply_codes(self, codes: dict) -> None:
        with torch.no_grad():
            params = dict(self.student.named_parameters())
            for n, c in codes.items():
                params[n].copy_(c.dequantize())

    def _distillation(self) -> float:
        return self.teacher.score(self.student)

    def _fitting_scale(self) -> float:
        """The finest grid scale (at least ``FILL_LIMIT``; 1 = the learned grids) whose file fits the target."""
        if self.sizer.bytes(self._codes(1.0)) <= self.target:
            low, high = FILL_LIMIT, 1.0
            if self.sizer.bytes(self._codes(low)) <= self.target:
                return low
        else:
            low, high = 1.0, 1.25
            while self.sizer.bytes(self._codes(high)) > self.target:
                low, high = high, high * 1.25
                if high > 1e6:
                    raise BudgetError(f"cannot reach {self.target:,} bytes: the uncoded tensors and headers alone are larger")
        for _ in range(10):
            mid = math.sqrt(low * high)
            if self.sizer.bytes(self._codes(mid)) > self.target:
                low = mid
            else:
                high = mid
        return high

    def _rescale(self, scale: float) -> None:
        with torch.no_grad():
            for n in self.names:
                self.log_edge[n] += math.log(scale)
                self.log_step[n] += math.log(scale)

    def _finish(self) -> tuple[dict, float, bool]:
        """Hard codes whose file fits the target, from the reconstructed weights or from the original
        weights on the same grids, whichever is closer to the dense model on the calibration set.

        On grids fine enough that plain rounding is already close, reconstruction only adds noise
        (Adam moves each weight by about its learning rate per step, whatever the gradient), so the
        original weights win there; on coarse grids reconstruction wins by a wide margin.
        """
        # The fit phase already spent the budget; only ever tighten here.
        scale = 1.0 if self.sizer.bytes(self._codes(1.0)) <= self.target else self._fitting_scale()
        candidates = [(*self._settle(self._codes(scale)), True)]
        original = self._codes(scale, self.original)
        self.student.load_state_dict(self.original)
        if self.sizer.bytes(original) <= self.target:
            candidates.append((*self._settle(original), False))
        codes, state, _, reconstructed = min(candidates, key=lambda c: c[2])
        self.student.load_state_dict(state)
        if not reconstructed:
            with torch.no_grad():
                for n in self.names:  # the latent weights are the ones the codes came from
                    self.latent[n].copy_(self.original[n])
        return codes, scale, reconstructed

    def _settle(self, codes: dict) -> tuple[dict, dict, float]:
        """Put ``codes`` into the student (BatchNorm statistics re-estimated when that helps); return
        them with the student's state and its distillation loss on the calibration set."""
        self._apply_codes(codes)
        before = self._distillation()
        if not batchnorm_layers(self.student):  # nothing to re-estimate: scoring again would repeat ``before``
            return codes, copy.deepcopy(self.student.state_dict()), before
        saved = copy.deepcopy(self.student.state_dict())
        self.teacher.recalibrate(self.student)
        absorb_batchnorm_statistics(self.student)
        _round_raw_tensors(self.student, set(self.names), self.config.raw_dtype)
        after = self._distillation()
        if after > before or self.sizer.bytes(codes) > self.target:
            self.student.load_state_dict(saved)
            after = before
        return codes, copy.deepcopy(self.student.state_dict()), after

    def smallest_file_bytes(self) -> int:
        """The file with every weight zero: what the uncoded tensors and headers alone take; refused if over the target."""
        ones = {n: torch.ones(self._grid_shape(n)) for n in self.names}
        return self.sizer.check_reachable(
            {n: deadzone_codes(torch.zeros_like(w), ones[n], ones[n]) for n, w in self.latent.items()}
        )

    def execute(self) -> MethodResult:
        config = self.config
        minimum = self.smallest_file_bytes()
        self._initialise(weight_bytes=self.target - minimum)
        self._calibrate_overhead()
        self._balance()
        fit_steps = config.reconstruction_steps // 3
        total = config.rounds * (config.transform_steps + config.reconstruction_steps) + fit_steps
        with progress_bar() as progress:
            task = progress.add_task("L²", total=total)
            # Reconstruction also trains the other parameters (biases, normalisation): a free bias correction.
            coded = set(self.names)
            weights = [*self.latent.values(), *(p for n, p in self.student.named_parameters() if n not in coded)]
            for _ in range(config.rounds):
                transform = [*self.log_edge.values(), *self.log_step.values()]
                self._phase(transform, config.transform_lr, config.transform_steps, "transform", progress, task, with_rate=True)
                self._phase(weights, config.weight_lr, config.reconstruction_steps, "reconstruction", progress, task)
                self._calibrate_overhead()
            # Reconstruction moves weights, so the file ends over or under the target: rescale the grids
            # to the finest that fits, then let a short reconstruction adapt the weights to them.
            fit = self._fitting_scale()
            self._rescale(fit)
            self._phase(weights, config.weight_lr, fit_steps if fit != 1.0 else 0, "fit", progress, task)
        return self._result(*self._finish())

    def _result(self, codes: dict, scale: float, reconstructed: bool) -> MethodResult:
        manifest, _ = read_manifest(self.sizer.file(codes))
        coded = {r["name"]: r["length"] for r in manifest["tensors"]}
        result = MethodResult(self.student, {**codes, **self.sizer.constant_codes}, raw_dtype=self.config.raw_dtype)
        with torch.no_grad():
            for n in self.names:
                c = codes[n]
                numel = c.symbols.numel()
                estimate = float(self._estimated_bits(n))
                result.rows.append(
                    {
                        "name": n,
                        "shape": list(c.shape),
                        "params": numel,
                        "edge": float(self.log_edge[n].exp().mean()) * scale,
                        "step": float(self.log_step[n].exp().mean()) * scale,
                        "levels": c.num_levels,
                        "sparsity": c.sparsity(),
                        "bytes": coded[n],
                        "bits_per_weight": 8 * coded[n] / numel,
                        "estimated_bits_per_weight": estimate / numel,
                        "grid_scale": scale,
                        "reconstructed": reconstructed,
                    }
                )
        return result


def _round_raw_tensors(model: nn.Module, coded: set[str], raw_dtype: str) -> None:
    """Round every float tensor the method leaves uncoded to the precision the file stores, so the
    model the method evaluates is the model the file gives back."""
    with torch.no_grad():
        state = model.state_dict()
        coded = coded | tied_names(state, coded)  # another name of a coded tensor is that tensor
        for name, tensor in state.items():
            if name not in coded and tensor.is_floating_point():
                rounded = tensor.to(RAW_DTYPES[raw_dtype])
                check_float16_range(name, tensor, rounded, "store them with L2(raw_dtype='fp32') (CLI: --raw-dtype fp32)")
                tensor.copy_(rounded.to(tensor.dtype))
