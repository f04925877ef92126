"""The interface every compression method shares.

A method is a config dataclass with ``apply(model, data=None, budget=None) -> MethodResult``.
It declares which data it needs (``none``, ``calibration`` or ``training``) and which budget
kinds it accepts, so callers can check both before running it.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol, TypeVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from netpress.budget import Budget
from netpress.codec.codes import Encoded
from netpress.codec.container import DTYPES
from netpress.compressed import tied_aliases, tied_group
from netpress.data import Subset, class_indices, dataset_sha256
from netpress.data.text import Sentences
from netpress.errors import BudgetError, DataError, UnsupportedModelError
from netpress.evaluate import check_classes, kept_modes, predict
from netpress.graph.surgery import is_conv1d

T = TypeVar("T")
DataNeed = Literal["none", "calibration", "training"]
# Layers whose weight the weight stage compresses; every other tensor is stored raw. An embedding
# table is a weight matrix like any other, and in a language model it is often the largest one.
# A transposed convolution's weight is (in, out, kernel...): its rows are input channels, as GPT-2's Conv1D's are
# input features; a weight stage codes rows alike. Fold and the channel cut need output channels: they refuse a
# transposed convolution, and change a Conv1D as the Linear layer it computes (graph.surgery.conv1d_as_linear).
COMPRESSIBLE_LAYERS: tuple[type[nn.Module], ...] = (  # a recurrent layer codes several weights: weight_attributes
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Embedding,
    nn.MultiheadAttention,
    nn.RNN,
    nn.LSTM,
    nn.GRU,
    nn.RNNCell,
    nn.LSTMCell,
    nn.GRUCell,
)
COMPRESSIBLE_NAMES = ", ".join([*(t.__name__ for t in COMPRESSIBLE_LAYERS), "transformers' Conv1D (GPT-2)"])
# Training samples the retraining methods re-estimate BatchNorm statistics on once their weights are final.
BATCHNORM_SAMPLES = 1024


def is_compressible(module: nn.Module) -> bool:
    """Whether a weight stage codes the layer's weights: ``COMPRESSIBLE_LAYERS`` (among them the input and recurrent
    weights of ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` and their cells: their rows the gates' units, as a Linear's
    outputs); ``nn.MultiheadAttention``'s query/key/value projections (``nn.TransformerEncoderLayer``,
    torchvision's ViT: a quarter of their weights; its output projection is an ``nn.Linear`` of its own); and
    transformers' ``Conv1D``, the linear layer of GPT-2 and its kin (a weight stored (in, out), so its rows are input
    features), recognised by name, so that netpress does not import transformers for models without it."""
    return isinstance(module, COMPRESSIBLE_LAYERS) or is_conv1d(module)


def weight_attributes(module: nn.Module) -> list[str]:
    """The names of the parameters a weight stage codes in a compressible layer: ``weight``; an attention layer's
    packed ``in_proj_weight`` (its rows the outputs, queries then keys then values, as a Linear's), or with other key
    or value widths (``kdim``, ``vdim``) its ``q_proj_weight``, ``k_proj_weight`` and ``v_proj_weight``; or a recurrent layer's
    weights, layer by layer and direction by direction (``weight_ih_l0``, ``weight_hh_l0``, …; a cell's ``weight_ih``
    and ``weight_hh``; its biases stay raw)."""
    if isinstance(module, nn.MultiheadAttention):
        return ["in_proj_weight"] if module.in_proj_weight is not None else ["q_proj_weight", "k_proj_weight", "v_proj_weight"]
    if isinstance(module, nn.RNNBase):
        return [name for name in module._flat_weights_names if name.startswith("weight_")]  # parametrized ones too
    if isinstance(module, nn.RNNCellBase):
        return ["weight_ih", "weight_hh"]
    return ["weight"]


def weight_names(layer: str, module: nn.Module) -> list[str]:
    """The state-dict names of the weights a weight stage codes in the compressible layer ``layer``."""
    return [f"{layer}.{attribute}" if layer else attribute for attribute in weight_attributes(module)]


GATED_WEIGHT = re.compile(r"weight_(?:ih|hh)((?:_l\d+(?:_reverse)?)?)")  # a recurrent layer's, by layer and direction
GATES = (1, 3, 4)  # an RNN's, a GRU's and an LSTM's gates: a count inferred otherwise is not one, and splits nothing


def part_counts(weights: dict[str, torch.Tensor]) -> list[int]:
    """How many layers each coded weight holds as a per-layer allocation counts them (``{state-dict name: weight}`` of
    ``compressible_weights``): an attention layer's packed in-projection three, its query, key and value rows, as in
    the models that write them as three Linear layers (Hugging Face's BERT, LLaMA); a recurrent layer's input and
    recurrent weights one per gate (LSTM 4, GRU 3, RNN 1: rows of the hidden size, read from the layer's recurrent or
    projection weight; where a tie leaves one of those out, a count that is no gate count splits nothing); any other
    weight one. Stacked maps differ in scale and in how much pruning they bear: allocated as one layer (one ERK
    density, one LAMP normalisation, one FCPTS threshold), LAMP at 80 % lost 18 more points on
    benchmarks/attention.py's model, FCPTS at 80 % 5 on benchmarks/recurrent.py's LSTM."""
    counts = []
    for name, weight in weights.items():
        prefix, _, last = name.rpartition(".")
        gated = GATED_WEIGHT.fullmatch(last)
        if last == "in_proj_weight":
            counts.append(3)
        elif gated:
            layer = f"{prefix}." if prefix else ""
            projection, recurrent = (weights.get(f"{layer}weight_{w}{gated[1]}") for w in ("hr", "hh"))
            hidden = (projection if projection is not None else recurrent if recurrent is not None else weight).shape[1]
            gates = weight.shape[0] // hidden if weight.shape[0] % hidden == 0 else 1
            counts.append(gates if gates in GATES else 1)
        else:
            counts.append(1)
    return counts


def layer_parts(weight: torch.Tensor, count: int) -> list[torch.Tensor]:
    """``weight``'s ``count`` layers (``part_counts``), as views of its rows: pruning a part prunes the weight."""
    return list(weight.chunk(count)) if count > 1 else [weight]


def all_parts(weights: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Every layer the weights hold (``part_counts``), in order."""
    return [part for w, n in zip(weights.values(), part_counts(weights)) for part in layer_parts(w, n)]


def per_weight(values: list[T], weights: dict[str, torch.Tensor]) -> list[list[T]]:
    """Values listed per layer part (``all_parts(weights)``), grouped by the weight holding the parts."""
    lengths = part_counts(weights)
    if len(values) != sum(lengths):
        raise ValueError(f"internal error: {len(values)} values for {sum(lengths)} layer parts")
    it = iter(values)
    return [[next(it) for _ in range(n)] for n in lengths]


def pruned_row(name: str, weight: torch.Tensor, counts: list[int]) -> dict:
    """A pruned weight's report row: its sparsity, and each part's (``part_sparsity``) where it holds several."""
    row = {"name": name, "shape": list(weight.shape), "params": weight.numel(), "sparsity": sum(counts) / weight.numel()}
    if len(counts) > 1:
        row["part_sparsity"] = [c / (weight.numel() // len(counts)) for c in counts]
    return row


@dataclass
class MethodResult:
    """A method's output: the model with its new weights, the codes of what it compressed, report rows.

    ``raw_dtype`` is the precision the method chose for the float tensors it left uncoded (None: no choice).
    """

    model: nn.Module
    codes: dict[str, Encoded] = field(default_factory=dict)
    rows: list[dict] = field(default_factory=list)
    raw_dtype: str | None = None


class Method(Protocol):
    """Optional class attributes that compress() reads: ``structural = True`` (changes layer shapes: must
    come first), ``quantizes = True`` (its codes are final: must come last) and ``target_optional = True`` (it
    also runs without a target, which its settings then replace). An optional
    ``check_target(model, budget)`` refuses a target the model cannot reach, before any data is loaded. An
    expensive method may name a ``stand_in()``: a cheap data-free method whose files are about as large, which
    a ratio search (``netpress.size_search``) sizes with before running the method itself."""

    name: ClassVar[str]
    needs: DataNeed  # a class attribute, or a property where a setting decides (fold's data repair)
    budgets: ClassVar[tuple[str, ...]]

    def apply(self, model: nn.Module, data: Subset | None = None, budget: Budget | None = None) -> MethodResult: ...


class LayerwiseMethod(Method, Protocol):
    """A data-free weight stage that codes each layer's weight by itself, after at most one decision over
    the whole model (``plan``: how many weights each layer loses, say). compress() can then run it one layer
    at a time, holding the model once plus a layer's work, never a second copy of the model (DESIGN §8)."""

    def plan(self, weights: dict[str, torch.Tensor], budget: Budget | None) -> list: ...

    def code_layer(self, name: str, weight: torch.Tensor, setting: object) -> tuple[Encoded, dict]: ...


def apply_by_layer(method: LayerwiseMethod, model: nn.Module, budget: Budget | None) -> MethodResult:
    """``apply`` of a layer-wise method: its plan on the caller's weights (before copying them, so the
    plan's work and the copy are never in memory together), then a copy whose weights are their codes."""
    settings = method.plan(check_model(model), budget)
    model = copy.deepcopy(model)
    result = MethodResult(model)
    with torch.no_grad():
        for (name, weight), setting in zip(compressible_weights(model).items(), settings):
            codes, row = method.code_layer(name, weight.detach(), setting)
            weight.copy_(codes.dequantize())
            result.codes[name] = codes
            result.rows.append(row)
    return result


def one_at_a_time(items: Iterable[T]) -> Iterator[T]:
    """``items``, with the memory each one's work freed given back to the system before the next.

    Work done layer by layer frees as much as it takes, but glibc keeps freed blocks for reuse, and its
    heap, fragmented by layer-sized blocks, grew by up to a model copy over a pass through a model's
    layers (benchmarks/memory.py). ``malloc_trim`` returns the free pages; without glibc it is skipped."""
    for item in items:
        yield item
        if _MALLOC_TRIM is not None:
            _MALLOC_TRIM(0)


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError, TypeError):  # not glibc: musl, macOS, Windows
        return None


_MALLOC_TRIM = _malloc_trim()


KEPT = "_netpress_kept"  # the mark on a layer the caller asked to keep as it is (``compress(..., keep=...)``)


def kept_layers(model: nn.Module) -> list[str]:
    """Names of the layers the caller asked to keep: stored as floats, left out of every weight stage's work."""
    return [name for name, module in model.named_modules() if getattr(module, KEPT, False)]


def _coded_weights(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """``{state-dict name: (layer, attribute)}`` of the weights a weight stage codes, in model order.

    A weight reachable under several names (T5's table shared by encoder and decoder, a language model's
    embedding tied to its output layer, one layer used twice) is coded once, under its first layer: the
    file stores it under that name only, and loading ties the others to it. The weights of a layer the caller asked
    to keep (marked ``KEPT``) are left raw, under every name they are tied to."""
    kept = {key for m in model.modules() if is_compressible(m) and getattr(m, KEPT, False) for key in weight_keys(m)}
    weights: dict[str, tuple[nn.Module, str]] = {}
    seen = set(kept)
    for name, module in model.named_modules():
        if not is_compressible(module):
            continue
        for weight, attribute, key in zip(weight_names(name, module), weight_attributes(module), weight_keys(module)):
            if key not in seen:
                seen.add(key)
                weights[weight] = (module, attribute)
    return weights


def weight_keys(module: nn.Module) -> list[object]:
    """What identifies each of a layer's coded weights among its ties: the stored parameter (a parametrized layer
    computes a new ``weight`` at every access, so that weight of that layer stands for itself)."""
    stored = [(module._parameters.get(attribute), attribute) for attribute in weight_attributes(module)]
    return [id(weight) if weight is not None else (id(module), attribute) for weight, attribute in stored]


def compressible_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """``{state-dict name: weight}`` of every weight a weight stage codes (``is_compressible``), in model order."""
    return {name: getattr(module, attribute) for name, (module, attribute) in _coded_weights(model).items()}


def uncompressed_layers(model: nn.Module, kinds: tuple[type[nn.Module], ...] | None = None) -> dict[str, dict]:
    """``{module name: {"type", "params"}}`` of layers that hold weight matrices no weight stage compresses
    (a bilinear or custom layer): they go into the
    file raw, and the user should know. ``kinds``: the layer types a method changes, if not those."""
    if kinds is None:  # a layer whose weight is tied to a coded or kept one's is coded or kept with it
        layers = [m for m in model.modules() if is_compressible(m)]
        chosen = [*(m for m, _ in _coded_weights(model).values()), *(m for m in layers if getattr(m, KEPT, False))]
        weights = {key for m in chosen for key in weight_keys(m)}
        coded = {m for m in layers if set(weight_keys(m)) & weights}
    else:
        coded = {m for m in model.modules() if isinstance(m, kinds)}
    return {
        name: {"type": type(module).__name__, "params": sum(p.numel() for p in module.parameters(recurse=False))}
        for name, module in model.named_modules()
        if module not in coded
        and not getattr(module, KEPT, False)
        and any(_is_matrix(p) for p in module.parameters(recurse=False))
    }


def _is_matrix(tensor: torch.Tensor) -> bool:
    """A weight matrix (or a higher-dimensional weight) by its shape: two or more axes longer than 1. A layer scale
    of shape (C, 1, 1) (ConvNeXt) or a class token (1, 1, C) (ViT) is a vector held in more axes."""
    return sum(size > 1 for size in tensor.shape) > 1


def first_non_finite(state: dict[str, torch.Tensor]) -> str | None:
    """The first float tensor holding NaN or infinity: refused in a model given, and after every stage."""
    return next((n for n, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)


def refuse_tied(model: nn.Module, method: str) -> None:
    """Refuse a model with a weight under several names for a method that retrains it channel by channel (its
    per-layer state and channel cuts would part the tie)."""
    state = model.state_dict()
    alias = next(iter(sorted(tied_aliases(state))), None)
    if alias is not None:
        names = " = ".join(tied_group(state, alias))
        raise UnsupportedModelError(
            f"{names}: one weight under several names (tied), which {method} does not retrain; fcpts, l2 and the data-free "
            "methods take it (coded once)"
        )


def check_tensors_only(state: dict) -> None:
    """Refuse a state dict with values other than tensors: a module's ``get_extra_state``, which a .press file,
    holding tensors and no pickle, cannot store."""
    extra = [name for name, value in state.items() if not isinstance(value, torch.Tensor)]
    if extra:
        raise UnsupportedModelError(
            f"{extra[0]} is {type(state[extra[0]]).__name__} extra state (the module's get_extra_state), not a tensor; a "
            ".press file stores tensors only (no pickle): drop the module's get_extra_state, or keep that state apart"
        )


def check_storable(state: dict) -> None:
    """Refuse, before a compression's work, integer or complex tensors of a dtype a .press file does not store
    (floats are stored as floats of the file's precision). Loading and evaluating such a model is fine."""
    check_tensors_only(state)
    stored = set(DTYPES.values())
    odd = next((name for name, value in state.items() if not value.is_floating_point() and value.dtype not in stored), None)
    if odd is not None:
        raise UnsupportedModelError(
            f"{odd} is {state[odd].dtype}, which a .press file does not store (besides floats: int64, int32, uint8, bool); "
            "register it as one of those (e.g. .to(torch.int32)), or keep it apart"
        )


def check_model(model: nn.Module, *, trains: bool = False) -> dict[str, nn.Parameter]:
    """Refuse models a weight-stage method cannot work on; return their compressible weights (a weight tied
    under several names once, under its first layer's name).

    ``trains``: the method optimises the weights by gradient (FCPTS, L², soft weight-sharing, self-compression),
    which an Embedding with ``sparse=True`` (sparse gradients) does not allow."""
    state = model.state_dict()
    check_tensors_only(state)
    for name, tensor in state.items():
        if tensor.is_meta:
            raise UnsupportedModelError(f"{name} is on the meta device and holds no values; load the trained weights first")
    if (name := first_non_finite(state)) is not None:
        raise UnsupportedModelError(f"{name} holds NaN or infinite values; fix the model before compressing it")
    weights = compressible_weights(model)  # a weight under several names once, under its first layer's name
    renormed = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.max_norm is not None]
    if renormed:
        raise UnsupportedModelError(
            f"{renormed[0] or 'the model'} is an Embedding with max_norm, which rewrites its weight on every forward pass, "
            "so the stored codes would not stay the model's weights; build it with max_norm=None"
        )
    if trains:  # tied weights of two layers train as one tensor; one layer under two names does not yet
        trained = dict(model.named_parameters())  # each tensor under its first name, as the methods read them
        for name, weight in weights.items():
            other = next((n for n, p in trained.items() if p is weight), None) if name not in trained else None
            if other is not None:
                raise UnsupportedModelError(
                    f"{name} is the tensor {other} names first, outside the compressible layers; the methods that train "
                    "weights read it under that name: give the layer its own weight, or use a data-free method"
                )
        first: dict[int, str] = {}
        for name, module in model.named_modules(remove_duplicate=False):
            if is_compressible(module) and first.setdefault(id(module), name) != name:
                raise UnsupportedModelError(
                    f"{first[id(module)]} is also {name}: one layer used twice, which the methods that train weights "
                    "do not support; give each use its own copy, or use a data-free method"
                )
    sparse = [n for n, m in model.named_modules() if isinstance(m, nn.Embedding) and m.sparse] if trains else []
    if sparse:
        raise UnsupportedModelError(
            f"{sparse[0] or 'the model'} is an Embedding with sparse=True, whose sparse gradients this method cannot "
            "train with; build it with sparse=False (the weights are the same)"
        )
    for name, weight in weights.items():
        if name not in state:
            raise UnsupportedModelError(
                f"{name} is computed at every forward pass (weight_norm, spectral_norm or another parametrization), so "
                "there is no stored weight to compress; remove it first (torch.nn.utils.parametrize.remove_parametrizations, "
                "or torch.nn.utils.remove_weight_norm for the older weight_norm)"
            )
        if weight.dtype not in (torch.float32, torch.float64):
            raise UnsupportedModelError(
                f"{name} is {weight.dtype}; netpress compresses float32 weights: call model.float() (with --arch, have "
                "the factory return the float32 model; an fp16 state dict loads into it as it is)"
            )
        if weight.numel() == 0:
            raise UnsupportedModelError(f"{name} has no elements (shape {list(weight.shape)}); remove the empty layer first")
    if not weights:
        found = ", ".join(f"{name or 'the model'} ({layer['type']})" for name, layer in uncompressed_layers(model).items())
        where = f"; its weights are in {found}" if found else ""
        if isinstance(model, torch.jit.ScriptModule):  # its layers are compiled, no longer nn.Linear or nn.Conv2d
            where += "; it is a TorchScript model: compress the Python model, then script the one netpress.load returns"
        raise UnsupportedModelError(f"the model has no compressible layer{where}; supported: {COMPRESSIBLE_NAMES}")
    return weights


def method_record(method: Method, unset: bool = False) -> dict:
    """A method's name and settings for the file; a setting left at None (unset) is left out, so adding an
    optional setting changes no file made without it (``unset``: kept, for a size estimate on the safe side).
    Your own examples (self-compression's preservation set) are recorded by their count and a sha256."""
    settings = {k: v for k, v in vars(method).items() if not k.startswith("_") and (unset or v is not None)}
    for key, value in settings.items():
        if isinstance(value, Dataset):
            settings[key] = {"samples": len(value), "sha256": dataset_sha256(value)}
    return {"name": method.name, **settings}


def check_budget(method: Method, budget: Budget | None, required: bool = True) -> Budget | None:
    """One place that checks a budget fits a method, with a message that says what would."""
    if budget is None:
        if required and method.budgets and not getattr(method, "target_optional", False):
            python = " or ".join(f"Budget({b}=…)" for b in method.budgets)
            raise BudgetError(
                f"method {method.name!r} needs a target: {python} (CLI: {' or '.join('--' + b for b in method.budgets)})"
            )
        return None
    if budget.kind not in method.budgets:
        accepted = ", ".join(method.budgets) or "none"
        raise BudgetError(f"method {method.name!r} does not take a {budget.kind} target; it accepts: {accepted}")
    return budget


def target_zeros(sparsity: float, total: int) -> int:
    """Zeros that meet a sparsity target from the safe side: ⌈sparsity · total⌉ (float noise ignored)."""
    return math.ceil(round(sparsity * total, 6))


def split_exact(total: int, weights: list[float], caps: list[int], floors: list[int] | None = None) -> list[int]:
    """Integers proportional to ``weights``, each between its floor and its cap, summing exactly to ``total``.

    Largest-remainder rounding, so a per-layer allocation meets a global count exactly. A layer whose
    proportional share is below its floor (the zeros an earlier stage left in it) gets the floor, one
    whose share is above its cap gets the cap, and the others share the rest in their proportions.
    """
    floors = floors or [0] * len(weights)
    caps = [max(c, f) for c, f in zip(caps, floors)]
    if total > sum(caps):
        raise BudgetError(f"cannot place {total} items in layers holding {sum(caps)}")
    fixed: dict[int, int] = {}
    while True:
        free = [i for i in range(len(weights)) if i not in fixed]
        rest = total - sum(fixed.values())
        wsum = sum(weights[i] for i in free)
        raw = [float(fixed[i]) if i in fixed else (rest * weights[i] / wsum if wsum else 0.0) for i in range(len(weights))]
        bounded = {i: floors[i] for i in free if raw[i] < floors[i]} or {i: caps[i] for i in free if raw[i] > caps[i]}
        if not bounded:
            break
        fixed.update(bounded)
    out = [min(int(r), c) for r, c in zip(raw, caps)]
    order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
    while sum(out) < total:
        progressed = False
        for i in order:
            if sum(out) == total:
                break
            if out[i] < caps[i]:
                out[i] += 1
                progressed = True
        if not progressed:
            break
    return out


def zero_masks(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Where each layer is already exactly zero, for the layers that have zeros: an earlier stage pruned
    them, and a method that trains weights masks them after every step so that no stage revives them."""
    return {name: w == 0 for name, w in weights.items() if bool((w == 0).any())}


def check_not_below_zeros(sparsity: float, weights: list[torch.Tensor]) -> list[int]:
    """The weights already zero in each layer (an earlier stage pruned them, and no stage revives them), or
    an error when the target asks for fewer zeros than that."""
    zeros = [int((w == 0).sum()) for w in weights]
    total = sum(w.numel() for w in weights)
    if sum(zeros) == total:
        raise BudgetError(f"every one of this model's {total:,} weights is already zero: there is nothing left to prune")
    if target_zeros(sparsity, total) < sum(zeros):
        raise BudgetError(
            f"this model already has {sum(zeros):,} of its {total:,} weights at zero, and no stage revives pruned "
            f"weights: ask for a sparsity of at least {math.ceil(sum(zeros) / total * 1e4) / 1e4:.4f}"
        )
    return zeros


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence from the teacher's softened outputs at ``temperature``, scaled by T² (Hinton et al.)."""
    return (
        F.kl_div(
            F.log_softmax(student_logits / temperature, dim=1),
            F.softmax(teacher_logits / temperature, dim=1),
            reduction="batchmean",
        )
        * temperature**2
    )


def recalibrate_batchnorm(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> None:
    """Re-estimate BatchNorm running statistics on ``inputs`` (cumulative average), weights untouched."""
    running_statistics(model, lambda: [model(inputs[i : i + batch_size]) for i in range(0, len(inputs), batch_size)])


def batchnorm_layers(model: nn.Module) -> list[nn.Module]:
    """The model's BatchNorm layers (1d, 2d, 3d, synced) that keep running statistics, in module order: one
    built with ``track_running_stats=False`` normalises by each batch's own, with nothing to re-estimate."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None]


def running_statistics(model: nn.Module, run: Callable[[], object]) -> None:
    """Re-estimate BatchNorm running statistics (cumulative average) over the forward passes ``run`` makes;
    nothing runs when the model has no BatchNorm."""
    norms = batchnorm_layers(model)
    if not norms:
        return
    saved = [(m.momentum, m.training) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        run()
    for m, (momentum, training) in zip(norms, saved):
        m.momentum = momentum
        m.train(training)


def absorb_batchnorm_statistics(model: nn.Module) -> dict[str, float]:
    """Fold each BatchNorm's running mean and variance into its affine weight and bias (same eval-mode
    function), leaving mean 0 and variance 1: constants a file stores in a few bytes.

    Returns ``{state-dict name: constant}`` of the tensors made constant.
    """
    constants: dict[str, float] = {}
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, nn.modules.batchnorm._BatchNorm) or not m.affine or m.running_mean is None:
                continue
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            m.bias.copy_(m.bias - scale * m.running_mean)
            m.weight.copy_(scale * math.sqrt(1 + m.eps))
            m.running_mean.zero_()
            m.running_var.fill_(1.0)
            prefix = f"{name}." if name else ""
            constants.update({f"{prefix}running_mean": 0.0, f"{prefix}running_var": 1.0})
    return constants


def labelled_training_data(data: Subset | None, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The training inputs and their class labels, or an error that says what a retraining ``method`` needs."""
    if data is None:
        raise DataError(f"{method} retrains the model: it needs the training split (data=, CLI: --data)")
    if isinstance(data.dataset, Sentences):
        raise DataError(f"{method} retrains a classifier on labelled images; it does not train a Hugging Face model on sentences")
    inputs, labels = data.tensors()
    if labels is None:
        raise DataError(f"{method} retrains on labelled data: the training split has no labels (a data file needs train_labels)")
    return inputs, class_indices(labels, "the training split")


def seeds_torch(apply: Callable[..., MethodResult]) -> Callable[..., MethodResult]:
    """Run a method's ``apply`` with torch's global generator seeded from its ``seed``, and restored afterwards: the
    layers that draw from it while training (Dropout) then draw the same numbers every run, and the caller's
    random state is left as it was."""

    @functools.wraps(apply)
    def seeded(self, *args, **kwargs) -> MethodResult:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # manual_seed seeds CUDA's too
            torch.manual_seed(self.seed)
            return apply(self, *args, **kwargs)

    return seeded


def check_labels(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, what: str = "training") -> int:
    """The model's class count; refuses labels outside its classes (and inputs the model cannot take) before
    training, not with an index error in its first step."""
    with kept_modes(model):
        logits = predict(model, inputs[:1], batch_size=1)
    check_classes(logits)
    classes = logits.shape[-1]
    if labels.min() < 0 or labels.max() >= classes:
        raise DataError(
            f"the {what} labels run from {int(labels.min())} to {int(labels.max())}, but the model has {classes} classes"
        )
    return classes
