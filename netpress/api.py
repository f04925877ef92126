"""The Python face of netpress: load a model (see ``netpress.sources``), compress it, save/load .press files, evaluate.

handle = load_model("zoo:lenet5")
compressed = compress(handle, [MagnitudePruning(), UniformQuantization(5)], Budget(sparsity=0.9))
save(compressed, "lenet5.press")
model = load("lenet5.press")
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset
from torch.utils.data import Subset as TorchSubset

import netpress
from netpress import codec, hf, parallel, size_search
from netpress.budget import Budget
from netpress.codec.codes import Codes, Encoded
from netpress.codec.container import Packed
from netpress.compressed import (
    RAW_DTYPES,
    CompressedModel,
    fp32_bytes,
    stored_tensor,
    stored_tensors,
    tied_aliases,
    tied_group,
    tied_names,
)
from netpress.data import (
    DATASETS,
    Subset,
    batches,
    calibration_subset,
    check_dataset,
    check_labelled,
    check_not_test,
    dataset_sha256,
    load_dataset,
    load_preservation_set,
    sample_digests,
    stacked_examples,
)
from netpress.data.datasets import PRESERVATION_KEYS
from netpress.data.text import TEXT_DATA, Sentences, is_text_data, load_sentences
from netpress.errors import (
    BudgetError,
    DataError,
    ModelSourceError,
    NetpressError,
    NetpressWarning,
    OutputError,
    UnsupportedModelError,
    check_choice,
    check_press_suffix,
    check_seed,
    check_whole,
    check_writable,
    make_output_dir,
    output_mode,
    output_target,
)
from netpress.evaluate import INFERENCE_BATCH, Evaluation, Fidelity, count_params, kept_modes, predict
from netpress.evaluate import evaluate as _evaluate
from netpress.methods import METHODS
from netpress.methods.base import (
    KEPT,
    LayerwiseMethod,
    Method,
    check_budget,
    check_labels,
    check_model,
    check_storable,
    check_tensors_only,
    compressible_weights,
    first_non_finite,
    is_compressible,
    kept_layers,
    layer_parts,
    method_record,
    one_at_a_time,
    part_counts,
    uncompressed_layers,
    weight_keys,
    weight_names,
)
from netpress.methods.sizing import UNDRAWN_CALIBRATION
from netpress.sources import ModelHandle, architecture_for, build_architecture, input_bytes, kept_float_dtype, load_model

# A compressed classifier that keeps the original's top class on (up to) COLLAPSE_SAMPLES training samples no more
# often than halfway between always answering the original's most common class and the original itself is reported
# as collapsed: 55 % with ten balanced classes, 84 % for a binary task whose original answers 68 % one way; far
# below what a method leaves at a target it was made for (FCPTS at 90 % on ResNet-20 keeps 93 % agreement on the
# test split). Fewer than COLLAPSE_MIN_SAMPLES samples say too little to judge.
COLLAPSE_SAMPLES = 512
COLLAPSE_MIN_SAMPLES = 32


DEFAULT_CALIB = 1024  # calibration samples drawn from the training split when the caller names no number


def _as_handle(model: ModelHandle | nn.Module) -> ModelHandle:
    if isinstance(model, ModelHandle):
        return model
    if not isinstance(model, nn.Module):
        hint = "; for a file or zoo name, call netpress.load_model() first" if isinstance(model, str | os.PathLike) else ""
        raise ModelSourceError(f"the model must be a torch.nn.Module or a netpress ModelHandle, got {type(model).__name__}{hint}")
    return ModelHandle(model)


def _method_list(methods: Method | Sequence[Method]) -> list[Method]:
    """One method or several, as a list; a method's name is not a method."""
    if isinstance(methods, str):
        raise BudgetError(
            f"{methods!r} is a name; pass method objects, e.g. MagnitudePruning() or [MagnitudePruning(), UniformQuantization(5)]"
        )
    return [methods] if not isinstance(methods, Sequence) else list(methods)


def earlier_methods(handle: ModelHandle) -> list[list[str]]:
    """The method names of each stage a .press input went through, oldest first."""
    earlier = handle.source.get("earlier")
    stages = [s for s in earlier if isinstance(s, dict)] if isinstance(earlier, list) else []
    return [[m.get("name") for m in s.get("methods") or [] if isinstance(m, dict)] for s in stages]


def _check_earlier_stages(handle: ModelHandle, methods: list[Method]) -> None:
    """The order rules of one call, across runs: a model loaded from a .press file keeps its earlier
    stages' work, so a structural method may not follow a weight stage, and a quantized input must
    end in a quantizer (else its few distinct values are stored as floats again, a larger file)."""
    stages = earlier_methods(handle)
    weight_stages = [n for names in stages for n in names if not getattr(METHODS.get(n), "structural", False)]
    structural = next((m for m in methods if getattr(m, "structural", False)), None)
    if weight_stages and structural is not None:
        raise BudgetError(
            f"the input file's weights were already pruned or quantized ({weight_stages[0]}); {structural.name} merges "
            "or removes channels, which would mix those zeros and codes into dense channels: run "
            f"{structural.name} on the model from before that stage, then prune or quantize"
        )
    quantized = [n for n in stages[-1] if getattr(METHODS.get(n), "quantizes", False)] if stages else []
    if quantized and not getattr(methods[-1], "quantizes", False):
        raise BudgetError(
            f"the input file's weights are quantized ({quantized[0]}); {methods[-1].name} would store them as floats "
            "again and throw the codes away, a larger file: end with a quantizer (UniformQuantization or "
            "KMeansQuantization; CLI: --bits or --levels), or compress the model from before the quantization"
        )


def _stage_invariants(model: nn.Module, codes: dict) -> dict[str, tuple[torch.Tensor, int | None]]:
    """What the next stage must keep, per coded weight: where it is zero, and for a quantized tensor its
    number of distinct values. A bool mask, not a copy of the weights: a quarter of the memory."""
    return {
        name: (w.detach() == 0, len(torch.unique(w.detach())) if isinstance(codes.get(name), Codes) else None)
        for name, w in compressible_weights(model).items()
    }


def _check_stage_invariants(before: dict[str, tuple[torch.Tensor, int | None]], model: nn.Module, stage: str) -> None:
    """Stages never undo each other: a pruned weight stays zero; a quantized tensor gains no new values.
    And a stage that trains leaves finite weights (a diverged one is named here, not at save)."""
    after = model.state_dict()
    if (name := first_non_finite(after)) is not None:
        raise NetpressError(
            f"{stage} left NaN or infinite values in {name}: its optimisation diverged (inputs far outside the range "
            "the model was trained on, or learning rates too high)"
        )
    for name, (zeros, distinct) in before.items():
        if name not in after:
            continue  # removed by a structural stage
        if zeros.shape == after[name].shape and bool((zeros & (after[name] != 0)).any()):
            raise _revived(stage, name)
        if distinct is not None and len(torch.unique(after[name])) > distinct:
            raise NetpressError(f"{stage} added distinct values to the quantized tensor {name}")


def _revived(stage: str, name: str) -> NetpressError:
    return NetpressError(f"{stage} revived pruned weights of {name}; stages must not undo each other")


def _check_call(handle: ModelHandle, methods: list[Method], budget: Budget | None, raw_dtype: str | None) -> None:
    """The arguments' types, a target some method takes, and an order of methods that keeps every
    stage's work: checked by compress, press and sweep before any work."""
    if not methods:
        raise BudgetError("give at least one method")
    check_storable(handle.module.state_dict())  # a .press file holds tensors only, of the dtypes it stores
    for given in (raw_dtype, handle.raw_dtype):
        if given is not None:
            check_choice("raw dtype", given, RAW_DTYPES)
    for method in methods:
        if isinstance(method, type) or not callable(getattr(method, "apply", None)):
            raise BudgetError(f"{method!r} is not a method; pass an instance such as FCPTS() or MagnitudePruning('lamp')")
    if budget is not None and not isinstance(budget, Budget):
        raise BudgetError(f"the target must be a Budget, e.g. Budget(sparsity=0.8), got {budget!r}")
    if budget is not None and not any(budget.kind in m.budgets for m in methods) and not _searched_ratio(budget, methods):
        takes = "; ".join(f"{m.name} takes {' or '.join(m.budgets) or 'no target'}" for m in methods)
        raise BudgetError(f"no chosen method takes a {budget.kind} target ({takes})")
    for method in methods:  # L² sizes the file in its own raw dtype; another one would break the fit
        if raw_dtype is not None and getattr(method, "raw_dtype", raw_dtype) != raw_dtype:
            raise BudgetError(
                f"{method.name} sizes the file with raw_dtype={method.raw_dtype!r}: set raw_dtype={raw_dtype!r} "
                f"on the method ({type(method).__name__}(raw_dtype={raw_dtype!r})) instead of on compress()"
            )
    names = [m.name for m in methods]
    if len(set(names)) < len(names):  # the report keys each stage's rows by its method
        twice = next(n for n in names if names.count(n) > 1)
        raise BudgetError(f"{twice} appears twice in one call; run it once, or compress its file again for a second pass")
    quantizer = next((m for m in methods[:-1] if getattr(m, "quantizes", False)), None)
    if quantizer is not None:
        raise BudgetError(
            f"put {quantizer.name} last: a stage after it would store its weights as floats again and throw its codes "
            "away (prune first, then quantize)"
        )
    structural = [i for i, m in enumerate(methods) if getattr(m, "structural", False)]
    if structural and structural[-1] >= len(structural):
        raise BudgetError("put fold / channel-l1 first: they change layer shapes, which codes made before them would not fit")
    _check_earlier_stages(handle, methods)
    if budget is None:
        return
    # The methods that see the input's shapes (all of them, or the structural one that comes first) can tell
    # now whether their target is reachable, so sweep refuses such a point before any work.
    traced = _traced(handle, methods)
    for method in traced[:1] if structural else traced:
        if budget.kind in method.budgets and hasattr(method, "check_target"):
            method.check_target(handle.module, _with_source(budget, handle))


def _check_searched_ratios(
    handle: ModelHandle, methods: list[Method], budgets: Sequence[Budget | None], raw_dtype: str | None = None
) -> None:
    """Refuse, before any work, ratio targets that the file at the searched setting's extreme does not meet (for
    a sweep, one such file for all its points). The fraction of parameters a structural method can remove is
    checked by the method itself."""
    ratios = [b for b in budgets if b is not None and _searched_ratio(b, methods)]
    methods = _traced(handle, methods)
    setting = size_search.searched(methods)
    if not ratios or setting == "params":
        return
    if setting == "sparsity":
        extreme = _most_sparsity(handle.module, methods)
    else:
        extreme = methods[-1].ranges[setting][0]

    calibrates = any(m.needs != "none" for m in methods)

    def run(chain: list[Method], given: Budget | None, searched: dict) -> CompressedModel:
        made = _compressed(handle, chain, given, None, raw_dtype, recorded=_with_source(ratios[0], handle), searched=searched)
        if calibrates:  # the real file records its calibration subset (not drawn yet): a record as long or longer
            made.summary["calibration"] = {**UNDRAWN_CALIBRATION, "indices_sha256": hashlib.sha256(b"").hexdigest()}
        return made

    smallest = size_search.smallest_file(methods, setting, run, extreme)
    for budget in (_with_source(b, handle) for b in ratios):
        if smallest is not None and smallest > budget.target_bytes():
            shown = f"{setting} {extreme:.6g}" if setting == "sparsity" else f"{extreme} {setting}"
            raise BudgetError(
                f"a {budget.ratio:g}x ratio is out of reach for {' + '.join(m.name for m in methods)}: even at {shown} "
                f"the file takes {smallest:,} bytes, over the {budget.target_bytes():,} allowed; {budget.advice(smallest)}"
            )


def _searched_ratio(budget: Budget, methods: list[Method]) -> bool:
    """Whether a ratio target is met by searching the methods' own setting (size_search)."""
    return budget.kind == "ratio" and size_search.searched(methods) is not None


def _with_source(budget: Budget | None, handle: ModelHandle) -> Budget | None:
    """A ratio budget as the methods size files with it: against the handle's fp32 bytes (unless given), and
    with the source record the file will carry (a .press input's earlier stages take bytes too)."""
    if budget is None or budget.kind != "ratio":
        return budget
    return replace(budget, reference_bytes=budget.reference_bytes or fp32_bytes(handle.module), source=dict(handle.source))


def _traced(handle: ModelHandle, methods: list[Method]) -> list[Method]:
    """Structural methods trace the model with an input of the handle's shape, unless they name their own."""
    if handle.input_shape is None:
        return methods
    traced = {"input_shape": handle.input_shape, **({"input_dtype": handle.input_dtype} if handle.input_dtype else {})}
    return [replace(m, **traced) if getattr(m, "input_shape", 0) is None else m for m in methods]


def compress(
    model: ModelHandle | nn.Module,
    methods: Method | Sequence[Method],
    budget: Budget | None = None,
    data: Subset | None = None,
    *,
    raw_dtype: str | None = None,
    keep: Sequence[str] = (),
) -> CompressedModel:
    """Apply methods in order (structure, then weights) and collect the exact codes of every tensor.

    The budget goes to every method that accepts its kind; a method that needs data gets ``data``.
    Floats stored as floats (a pruned tensor's survivors, tensors no method coded) are in ``raw_dtype``;
    by default in the precision the last method chose for them, else fp16 for a model read from a .press file whose
    floats are all fp16 (``ModelHandle.raw_dtype``), else fp32.
    A ratio budget is checked on the serialised file. ``details["uncompressed_layers"]`` names the layers stored as
    floats because no method here codes their type (``nn.Bilinear``, a custom layer).
    Data-free layer-wise stages (magnitude pruning, then uniform or k-means quantization) run one layer at a time and
    hold each coded tensor as its stream (``Packed``; ``.unpack()`` gives its codes), so a large model is never in memory twice.
    """
    handle = _as_handle(model)
    methods = _method_list(methods)
    with _keeping(handle, methods, keep):
        _check_call(handle, methods, budget, raw_dtype)
        return _compress(handle, methods, budget, data, raw_dtype)


@contextmanager
def _keeping(handle: ModelHandle, methods: list[Method], keep: Sequence[str]) -> Iterator[None]:
    """Within it, the layers ``keep`` names (shell-style patterns on module names, ``"fc3"``, ``"features.*"``, or on
    the names of the weights they code, as ``inspect`` shows them, ``"fc3.weight"``) are marked ``KEPT``: every weight
    stage leaves them out, and they are stored as floats. An attention layer named by its module name is kept whole,
    its output projection too; by ``….in_proj_weight``, only its in-projection (with ``kdim``/``vdim``, by any of its
    three projections, all three). A recurrent layer named by one of its weights is kept whole (the mark is on the
    module). The marks go when the call ends, so
    the caller's model is as it was."""
    if not isinstance(keep, str | Iterable):
        raise BudgetError(f"keep takes layer names or patterns (strings), e.g. keep=['conv1', 'fc3'], got {keep!r}")
    patterns = [keep] if isinstance(keep, str) else list(keep)
    if not patterns:
        yield
        return
    if not all(isinstance(p, str) and p for p in patterns):
        raise BudgetError(f"keep takes layer names or patterns (strings), e.g. keep=['conv1', 'fc3'], got {keep!r}")
    structural = [m.name for m in methods if getattr(m, "structural", False)]
    if structural:
        raise BudgetError(
            f"keep works with weight stages; {structural[0]} changes the widths of whole channel groups, kept layers "
            "included: fold in one run, then compress the file with keep in the next"
        )
    modules = handle.module.named_modules(remove_duplicate=False)  # a layer under two names answers to both
    layers = {name: module for name, module in modules if is_compressible(module)}
    weights = {name: weight_names(name, m) for name, m in layers.items()}
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for name in layers for n in [name, *weights[name]]):
            shown = ", ".join(list(layers)[:12]) + (", …" if len(layers) > 12 else "")
            raise BudgetError(f"keep: {pattern!r} names no compressible layer or its weight; the layers are {shown}")
    by_name = [m for n, m in layers.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    # A recurrent layer named by one of its weights is kept whole.
    named = by_name + [m for n, m in layers.items() if any(fnmatch.fnmatchcase(w, p) for w in weights[n] for p in patterns)]
    # An attention layer kept by name is kept whole: its output projection is a Linear of its own, run by its weight.
    named += [m.out_proj for m in by_name if isinstance(m, nn.MultiheadAttention)]
    kept = list({id(m): m for m in named}.values())
    if {k for m in kept for k in weight_keys(m)} >= {k for m in layers.values() for k in weight_keys(m)}:  # ties too
        raise BudgetError("keep names every compressible layer: nothing would be compressed")
    for module in kept:
        setattr(module, KEPT, True)
    try:
        yield
    finally:
        for module in kept:
            delattr(module, KEPT)


def _compress(
    handle: ModelHandle, methods: list[Method], budget: Budget | None, data: Subset | None, raw_dtype: str | None
) -> CompressedModel:
    """``compress`` after ``_check_call``, which press and sweep run once themselves."""
    if data is not None and not isinstance(data, Subset):
        raise DataError("data must be a calibration Subset: netpress.data.calibration_subset(load_dataset(name, 'train'), n)")
    if data is not None:
        check_not_test(data.dataset)
    if data is not None and isinstance(data.dataset, Sentences):
        _check_encoder_calibration([m for m in methods if m.needs != "none"])
    if not any(m.needs != "none" for m in methods):
        data = None  # unused, so not recorded in the file either
    methods = _traced(handle, methods)
    budget = _with_source(budget, handle)
    if budget is not None and budget.kind == "ratio" and (setting := size_search.searched(methods)):

        def run(chain: list[Method], given: Budget | None, searched: dict) -> CompressedModel:
            return _compressed(handle, chain, given, data, raw_dtype, recorded=budget, searched=searched)

        if setting == "sparsity":
            compressed = size_search.meet_ratio(
                methods, budget, setting, run, _own_sparsity(handle.module), _most_sparsity(handle.module, methods)
            )
        else:
            compressed = size_search.meet_ratio(methods, budget, setting, run)
    else:
        compressed = _compressed(handle, methods, budget, data, raw_dtype)
        if budget is not None and budget.kind == "ratio":
            size = len(codec.to_bytes(compressed))
            if size > budget.target_bytes():
                raise BudgetError(
                    f"the file would take {size:,} bytes, over the {budget.target_bytes():,} a {budget.ratio:g}x ratio "
                    f"allows: {' + '.join(m.name for m in methods)} did not meet the target it accepted"
                )
    _warn_emptied_layers(handle.module, compressed, methods, budget)  # the final file's, not a search's trials
    _warn_float64_rounded(handle.module, compressed)
    _warn_collapsed(handle.module, compressed, methods, budget, data)
    return compressed


def _warn_collapsed(
    model: nn.Module, compressed: CompressedModel, methods: list[Method], budget: Budget | None, data: Subset | None
) -> None:
    """A classifier compressed with training data whose answers on them are nearer a constant answer than the
    original's has most likely collapsed (a soft weight-sharing mixture that never formed on a small model, a target
    past what the model holds): ``compress()`` measures no accuracy, so only this says so."""
    if data is None or isinstance(data.dataset, Sentences) or len(data.indices) < COLLAPSE_MIN_SAMPLES:
        return
    inputs, _ = next(batches(data.dataset, COLLAPSE_SAMPLES, data.indices[:COLLAPSE_SAMPLES]))
    try:
        with kept_modes(model):
            before = predict(model, inputs)
        after = predict(compressed.to_module(model), inputs)
    except UnsupportedModelError:  # not a (batch, classes) output: no top class to compare
        return
    if before.shape[1] < 2:
        return
    top = before.argmax(dim=1)
    kept = float((top == after.argmax(dim=1)).float().mean())
    constant = float(torch.bincount(top).max()) / len(top)  # what always answering the most common class keeps
    if kept <= (1 + constant) / 2:
        warnings.warn(
            f"the compressed model keeps the original's top class on only {kept:.0%} of {len(inputs)} training samples "
            f"after {' + '.join(m.name for m in methods)}"
            f"{f' at {budget.kind} {budget.value:g}' if budget is not None else ''}, nearer the {constant:.0%} of "
            "always giving the most common answer than the original: it has most likely collapsed; "
            f"{'ask for a smaller target' if budget is not None else 'choose settings that compress less'}, or try "
            "another method (docs/methods/ says which suit which models)",
            NetpressWarning,
            stacklevel=4,
        )


def _warn_float64_rounded(model: nn.Module, compressed: CompressedModel) -> None:
    """A float64 tensor the file keeps as floats is stored in fp32 or fp16, the floats a .press file holds: its values
    are rounded (16777217 becomes 16777216 in fp32), which no method's report shows."""
    rounded = {
        name: kept
        for name, value in model.state_dict().items()
        if value.dtype == torch.float64 and (kept := kept_float_dtype(compressed.tensors.get(name))) not in (None, "float64")
    }
    if rounded:
        one = len(rounded) == 1
        names = ", ".join(list(rounded)[:5]) + (f" and {len(rounded) - 5} more" if len(rounded) > 5 else "")
        warnings.warn(
            f"{names}: float64 in the model, stored as {'/'.join(sorted(set(rounded.values())))} (a .press file "
            f"keeps floats in fp32 or fp16), so {'its' if one else 'their'} values are rounded; convert the model first "
            "(model.float()) if that matters",
            NetpressWarning,
            stacklevel=4,
        )


def _warn_emptied_layers(model: nn.Module, compressed: CompressedModel, methods: list[Method], budget: Budget | None) -> None:
    """A layer whose every weight the methods set to zero passes only its bias: the file is smaller, but the model
    has most likely lost what that layer computed, which a report's overall sparsity does not show. The same holds for
    a part of a stacked weight (an LSTM's gate, an attention layer's keys: ``part_counts``)."""
    before = compressible_weights(model)
    emptied = [
        name
        for name, value in compressed.tensors.items()
        if name in before and not isinstance(value, torch.Tensor) and value.sparsity() == 1.0 and bool(before[name].any())
    ]
    for (name, weight), count in zip(before.items(), part_counts(before)):  # a gate's or the queries' rows
        value = compressed.tensors.get(name)
        if count == 1 or name in emptied or value is None or isinstance(value, torch.Tensor):
            continue
        coded = (value.unpack() if isinstance(value, Packed) else value).dequantize()
        parts = zip(layer_parts(coded, count), layer_parts(weight, count))
        emptied += [f"{name} (part {i + 1} of {count})" for i, (new, old) in enumerate(parts) if not new.any() and old.any()]
    if emptied:
        one = len(emptied) == 1
        remedy = "ask for a smaller target" if budget is not None else "choose settings that compress less"
        warnings.warn(
            f"every weight of {', '.join(emptied)} is zero after {' + '.join(m.name for m in methods)}"
            f"{f' at {budget.kind} {budget.value:g}' if budget is not None else ''}: "
            f"{'that layer passes' if one else 'those layers pass'} only a bias there, so the model has likely lost what "
            f"it computed; {remedy}, or keep {'it' if one else 'them'} uncompressed (--keep, keep=)",
            NetpressWarning,
            stacklevel=4,
        )


def _most_sparsity(model: nn.Module, methods: list[Method]) -> float:
    """The most sparsity a ratio search tries: all but one weight, or less where a stage keeps more (FCPTS keeps 1 %
    of every layer)."""
    most = 1 - 1 / max(2, sum(w.numel() for w in compressible_weights(model).values()))
    return min([most] + [m.most_sparsity(model) for m in methods if hasattr(m, "most_sparsity")])


def _own_sparsity(model: nn.Module) -> float:
    """The fraction of zeros among the weights a weight stage codes (a model pruned by an earlier stage)."""
    weights = compressible_weights(model).values()
    return sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))


def _compressed(
    handle: ModelHandle,
    methods: list[Method],
    budget: Budget | None,
    data: Subset | None,
    raw_dtype: str | None,
    recorded: Budget | None = None,
    searched: dict | None = None,
) -> CompressedModel:
    """The methods' work on the model, once, as a compressed model whose summary records ``recorded`` (by
    default ``budget``) and, for a ratio search, the ``searched`` setting it tried."""
    recorded = recorded or budget
    if data is None and _layerwise(methods):
        tensors, rows = _compress_by_layer(handle.module, methods, budget, raw_dtype or handle.raw_dtype or "fp32")
    else:
        tensors, rows = _compress_by_model(handle.module, methods, budget, data, raw_dtype, handle.raw_dtype)
    coded = {name: value for name, value in tensors.items() if not isinstance(value, torch.Tensor)}
    tied = _tied_map(handle.module, set(tensors))
    summary = {
        "netpress": netpress.__version__,
        "methods": [method_record(m) for m in methods],
        "budget": recorded.to_dict() if recorded else None,
        **({"searched": searched} if searched else {}),
        **({"kept": kept} if (kept := kept_layers(handle.module)) else {}),
        **({"tied": tied} if tied else {}),
        "sparsity": codec.weight_sparsity(coded),
        "params": sum(torch.Size(v.shape).numel() for v in tensors.values() if _is_float(v)),
    }
    if data is not None:
        summary["calibration"] = {
            "n": len(data.indices),
            "seed": data.seed,
            "indices_sha256": hashlib.sha256(",".join(map(str, data.indices)).encode()).hexdigest(),
        }
    details = {
        "layers": rows,
        "calibration_indices": list(data.indices) if data is not None else None,
        "uncompressed_layers": uncompressed_layers(handle.module),  # stored as floats: no method codes their type
    }
    return CompressedModel(tensors, dict(handle.source), summary, details)


def _tied_map(model: nn.Module, stored: set[str]) -> dict[str, str]:
    """``{alias: stored name}`` for each name of the model's state the file leaves out because it holds the same
    tensor as a stored name (tied weights): recorded, so a model built without the tie gets the tensor too."""
    state = model.state_dict()
    return {alias: next(n for n in tied_group(state, alias) if n in stored) for alias in tied_names(state, stored)}


def _given(budget: Budget | None, method: Method) -> Budget | None:
    """The budget a method gets: the pipeline's, if the method takes its kind."""
    return budget if budget is not None and budget.kind in method.budgets else None


def _compress_by_model(
    model: nn.Module,
    methods: list[Method],
    budget: Budget | None,
    data: Subset | None,
    raw_dtype: str | None,
    default_dtype: str | None = None,
) -> tuple[dict, dict[str, list[dict]]]:
    """The stages one after another, each on the whole model the one before returned: what a method that
    calibrates, trains or changes shapes needs. Returns the stored tensors and each stage's report rows.
    Floats kept as floats are in ``raw_dtype``, else the last method's choice, else ``default_dtype`` (the input
    file's), else fp32."""
    current = model
    codes: dict = {}
    rows: dict[str, list[dict]] = {}
    chosen_dtype = default_dtype or "fp32"
    for method in methods:
        if method.needs != "none" and data is None:
            raise DataError(
                f"method {method.name!r} needs {method.needs} data; pass data=, a Subset of the training split "
                "(netpress.data.calibration_subset), or use netpress.press(..., data=NAME) (CLI: --data)"
            )
        given = _given(budget, method)
        check_budget(method, given)
        before = _stage_invariants(current, codes)
        # Methods run the caller's model in eval mode (left as it was after), and those that optimise need
        # autograd even when the caller runs under torch.no_grad() or inference_mode().
        with kept_modes(model), torch.inference_mode(False), torch.enable_grad():
            result = method.apply(current, data if method.needs != "none" else None, given)
        _check_stage_invariants(before, result.model, method.name)
        current = result.model
        codes.update(result.codes)
        rows[method.name] = result.rows
        chosen_dtype = result.raw_dtype or chosen_dtype
    state = current.state_dict()
    for name, value in codes.items():
        if name in state and not torch.equal(value.dequantize(), state[name]):
            raise NetpressError(f"internal error: the codes of {name} disagree with the model's weights")
    return stored_tensors(state, codes, raw_dtype or chosen_dtype), rows


def _layerwise(methods: list[Method]) -> bool:
    """Whether the stages can run one layer at a time: every one is a data-free ``LayerwiseMethod``, and only
    the first plans from the weights (a quantizer after it codes each layer by itself)."""
    return all(m.needs == "none" and callable(getattr(m, "code_layer", None)) for m in methods) and all(
        getattr(m, "quantizes", False) for m in methods[1:]
    )


def _compress_by_layer(
    model: nn.Module, methods: list[LayerwiseMethod], budget: Budget | None, raw_dtype: str
) -> tuple[dict, dict[str, list[dict]]]:
    """The stages run layer by layer: each layer's weight goes through every stage and into its stream
    before the next layer is read, so memory holds the model once, the streams written so far and one
    layer's work, never a second copy of the model (DESIGN §8). The file is the one the stages run on the
    whole model would give (tested)."""
    weights = {name: w.detach() for name, w in check_model(model).items()}
    settings = []
    for method in methods:
        given = _given(budget, method)
        check_budget(method, given)
        settings.append(method.plan(weights, given))
    rows: dict[str, list[dict]] = {m.name: [] for m in methods}
    packed: dict[str, Packed] = {}
    with torch.no_grad():
        for i, (name, weight) in one_at_a_time(enumerate(weights.items())):
            for method, setting in zip(methods, settings):
                code, row = method.code_layer(name, weight, setting[i])
                coded = code.dequantize()
                if bool(((weight == 0) & (coded != 0)).any()):
                    raise _revived(method.name, name)
                weight = coded
                rows[method.name].append(row)
            packed[name] = Packed.of(name, stored_tensor(name, weight, code, raw_dtype))
    state = model.state_dict()
    aliases = tied_aliases(state, set(packed))
    names = [name for name in state if name not in aliases]
    return {name: packed[name] if name in packed else stored_tensor(name, state[name], None, raw_dtype) for name in names}, rows


def _is_float(value: Encoded | torch.Tensor) -> bool:
    """Whether a stored tensor holds floats (coded tensors always do)."""
    return not isinstance(value, torch.Tensor) or value.is_floating_point()


def save(compressed: CompressedModel, path: str | os.PathLike) -> int:
    """Write a .press file; returns its size in bytes."""
    if not isinstance(compressed, CompressedModel):
        raise OutputError(f"save() writes what netpress.compress() returns, got {type(compressed).__name__}")
    check_press_suffix(path)
    if (name := compressed.non_finite()) is not None:
        raise OutputError(f"{name} holds NaN or infinite values; netpress writes working models only")
    return codec.save(compressed, path)


def evaluate(model: ModelHandle | nn.Module, dataset: Dataset, batch_size: int = INFERENCE_BATCH) -> Evaluation:
    """Top-1 and per-class accuracy of a model (or a handle's) on a labelled dataset."""
    return _evaluate(_as_handle(model).module, dataset, batch_size)


def load(path: str | os.PathLike, model: ModelHandle | nn.Module | None = None, arch: str | None = None) -> nn.Module:
    """Rebuild the compressed model from a .press file.

    The architecture comes from ``model``, from ``arch``, or (for zoo models) from the file itself.
    A file made from a user architecture names it but never imports it on its own: pass ``arch``.
    """
    if model is not None and arch is not None:
        raise ModelSourceError("give the architecture once: model or arch, not both")
    model = model.module if isinstance(model, ModelHandle) else model
    if model is not None and not isinstance(model, nn.Module):
        raise ModelSourceError(f"model must be an nn.Module instance (or a ModelHandle), got {model!r}")
    if model is not None:
        check_tensors_only(model.state_dict())
    if model is not None and any(t.is_meta for t in model.state_dict().values()):
        raise ModelSourceError("the model is on the meta device: materialise it first, e.g. model.to_empty(device='cpu')")
    compressed = codec.read(path, lazily=True)
    if model is None:  # an architecture built for the file: loaded in place, not copied
        return compressed.load_into(architecture_for(compressed.source, arch))
    return compressed.to_module(model)


def inspect(path: str | os.PathLike) -> dict:
    """Per-tensor and total figures of a .press file; see ``netpress.codec.inspect``."""
    return codec.inspect(path)


def resolve_dataset(data: str | Dataset, split: str = "test", input_shape: tuple[int, ...] | None = None) -> Dataset:
    """A dataset by name (see ``netpress.data.DATASETS``) or a torch Dataset, checked for shape."""
    _refuse_text(data)
    dataset = load_dataset(data, split) if isinstance(data, str) else data
    check_dataset(dataset, input_shape)
    return dataset


def press(
    model: ModelHandle | nn.Module,
    methods: Method | Sequence[Method],
    budget: Budget | None = None,
    *,
    out: str | os.PathLike,
    data: str | os.PathLike | tuple[Dataset, Dataset] | tuple[Sequence[str], Sequence[str]] | None = None,
    calib: int | None = None,
    seed: int = 0,
    raw_dtype: str | None = None,
    keep: Sequence[str] = (),
    preservation: str | os.PathLike | Dataset | None = None,
) -> dict:
    """Compress, write the file, and measure it: the one-call pipeline behind the CLI and benchmarks.

    Accuracy after compression is measured on the model loaded back from the written file.
    Calibration samples come from the training split (``calib`` of them: by default ``DEFAULT_CALIB`` or the
    whole split if smaller, and the whole split for a method that retrains); evaluation uses the test split.
    ``data``: a dataset name, a .safetensors data file, or your own ``(train, test)`` pair of map-style torch
    Datasets of (input, label); for a Hugging Face model ``fortunes``, a .txt file of your text (one text per
    line), or a ``(train, test)`` pair of lists of texts.
    ``preservation``: your critical examples (a .safetensors file holding ``PRESERVATION_KEYS``, or a labelled
    torch Dataset), measured before and after like the test split (``report["preservation"]``, which counts
    those that are also in the test split) and guarded by self-compression, which refuses them in the test split.
    """
    handle = _as_handle(model)
    check_press_suffix(out)  # before any work: a ratio check may compress a stand-in
    check_writable(out, keep=(handle.path,) if handle.path else ())
    data = _data_name(data)
    handle = _with_input_shape(handle, data)
    methods = _method_list(methods)
    preservation, methods = _preservation_and_methods(preservation, methods, handle)
    with _keeping(handle, methods, keep):
        _check_call(handle, methods, budget, raw_dtype)
        _check_searched_ratios(handle, methods, [budget], raw_dtype)
        prepared = _prepare(handle, methods, data, calib, seed, preservation)
        return _press(handle, methods, budget, out, prepared, raw_dtype)


def _data_name(data: str | os.PathLike | tuple | None) -> str | tuple | None:
    """A dataset name, or a data file's path as a string (what load_dataset takes); anything else is left for
    _prepare to refuse with advice."""
    return os.fspath(data) if isinstance(data, os.PathLike) else data


def _with_input_shape(handle: ModelHandle, data: str | None) -> ModelHandle:
    """A user's model declares no input shape: take a sample's shape and dtype from the dataset ``data`` names,
    so that fold can trace it."""
    if handle.input_shape is not None or hf.is_hf_source(handle.source):
        return handle
    if isinstance(data, tuple | list):
        sample = _own_datasets(data)[1][0][0]
    elif isinstance(data, str) and not is_text_data(data):
        sample = resolve_dataset(data, "test")[0][0]
    else:
        return handle
    dtype = None if sample.dtype == torch.float32 else str(sample.dtype).removeprefix("torch.")  # token ids, float64
    return replace(handle, input_shape=tuple(sample.shape), input_dtype=dtype)


OWN_DATASETS = "your (train, test) datasets"  # the report's name for them
OWN_TEXTS = "your (train, test) texts"


def _preservation_set(preservation: str | os.PathLike | Dataset | None, handle: ModelHandle) -> Dataset | None:
    """Your critical examples, read and checked: labelled inputs of the model's shape."""
    if preservation is None:
        return None
    if hf.is_hf_source(handle.source):
        raise DataError(
            "a preservation set holds a classifier's labelled inputs, and a Hugging Face model is measured on sentences: drop it"
        )
    if isinstance(preservation, str | os.PathLike):
        preservation = load_preservation_set(preservation)
    elif not isinstance(preservation, Dataset):
        raise DataError(
            f"preservation is a .safetensors file holding {PRESERVATION_KEYS}, or a labelled torch Dataset; "
            f"got {type(preservation).__name__}"
        )
    check_labelled(preservation, "your preservation set", handle.input_shape)
    return preservation


def _preservation_and_methods(
    preservation: str | os.PathLike | Dataset | None, methods: list[Method], handle: ModelHandle
) -> tuple[Dataset | None, list[Method]]:
    """Your preservation set, given to press / sweep or to a method that guards one (self-compression), read
    and checked; and the methods, those that guard one given it."""
    if preservation is None:  # one a method holds is measured and checked as well
        preservation = next((m.preservation for m in methods if getattr(m, "preservation", None) is not None), None)
    preservation = _preservation_set(preservation, handle)
    return preservation, _guarding(methods, preservation)


def _guarding(methods: list[Method], preservation: Dataset | None) -> list[Method]:
    """The methods, those that guard a preservation set while they train (self-compression) given yours."""
    if preservation is None:
        return methods
    guarded = []
    for method in methods:
        if hasattr(method, "preservation"):
            if method.preservation is not None and method.preservation is not preservation:
                raise DataError(f"give the preservation set once: to press / sweep or to {method.name}, not both")
            method = replace(method, preservation=preservation)
        guarded.append(method)
    return guarded


def _own_datasets(data: tuple) -> tuple[Dataset, Dataset]:
    """A user's ``(train, test)`` pair of map-style torch Datasets of ``(input, label)`` items, checked: two of
    them, not one object twice (calibration must never see the test data), the test one labelled."""
    if len(data) != 2 or not all(isinstance(d, Dataset) for d in data):
        raise DataError("data must be a dataset name, a .safetensors data file, or a (train, test) pair of torch Datasets")
    train, test = data
    if train is test:
        raise DataError("the train and test datasets are the same object: netpress never calibrates on test data")
    check_dataset(train)
    check_labelled(test, "your test dataset")
    shapes = [tuple(d[0][0].shape) for d in data]
    if shapes[0] != shapes[1]:
        raise DataError(f"your training inputs have shape {shapes[0]} and your test inputs {shapes[1]}: give both the model's")
    return train, test


def _refuse_test_samples(calibration: Subset, test: Dataset, data_file: str | None = None) -> None:
    """Your own splits (a (train, test) pair, or a data file's) are compared by content: a calibration sample that
    is also a test sample (a copy of it) would let the test accuracy flatter the file."""
    seen = set(sample_digests(test, exact=True))
    drawn = sample_digests(TorchSubset(calibration.dataset, calibration.indices), exact=True)
    shared = [i for i, digest in zip(calibration.indices, drawn) if digest in seen]
    if shared:
        listed = ", ".join(map(str, shared[:5])) + (", …" if len(shared) > 5 else "")
        where, positions, fix = (
            ("your test dataset", "training positions", "the training dataset")
            if data_file is None
            else (f"{data_file}'s test_inputs", "train_inputs positions", "train_inputs")
        )
        raise DataError(
            f"{len(shared)} of the {len(calibration.indices)} calibration samples {'is' if len(shared) == 1 else 'are'} "
            f"also in {where} ({positions} {listed}): netpress never calibrates on test data; remove them from {fix}"
        )


def _own_texts(data: tuple) -> tuple[list[str], list[str]]:
    """Your ``(train, test)`` texts for a Hugging Face model, checked: two lists of non-empty strings, and no test
    text among the training ones (calibration must never see the test data)."""
    if len(data) != 2 or any(isinstance(d, str) or not isinstance(d, Sequence) for d in data):
        raise DataError(f"a Hugging Face model's data is {TEXT_DATA}, or a (train, test) pair of lists of texts")
    train, test = (list(d) for d in data)
    for split, texts in (("training", train), ("test", test)):
        if not texts:
            raise DataError(f"your {split} texts are an empty list")
        bad = next((i for i, text in enumerate(texts) if not isinstance(text, str) or not text.strip()), None)
        if bad is not None:
            raise DataError(f"your {split} texts: item {bad} is {texts[bad]!r}, not a non-empty string")
    shared = len(set(train) & set(test))
    if shared:
        raise DataError(
            f"{shared} of your training texts {'is' if shared == 1 else 'are'} also among the test texts: netpress never "
            "calibrates on test data; drop them from one of the lists"
        )
    return train, test


@dataclass
class _Prepared:
    """What press needs besides the methods, drawn and checked before any work (a sweep reuses it for every
    point): calibration samples, the test data, and once measured, the original's figures on it."""

    dataset: str | None
    calibration: Subset | None = None
    test: Dataset | None = None
    before: Evaluation | None = None
    sentences: list[str] | None = None
    reference: Any = None  # the original's figures on the sentences: its embeddings or next-token predictions
    sentences_cut: int = 0  # of them longer than the model's positions, measured on the tokens that fit
    preservation: Dataset | None = None  # your critical examples
    preservation_record: dict | None = None  # what the report says of them besides their accuracy
    preservation_before: Evaluation | None = None


def _prepare(
    handle: ModelHandle,
    methods: list[Method],
    data: str | None,
    calib: int | None,
    seed: int,
    preservation: Dataset | None = None,
) -> _Prepared:
    prepared = _prepare_data(handle, methods, data, calib, seed)
    if preservation is not None:
        prepared.preservation = preservation
        _check_preservation(handle, prepared, methods)
    return prepared


def _prepare_data(handle: ModelHandle, methods: list[Method], data: str | None, calib: int | None, seed: int) -> _Prepared:
    check_seed(seed)
    own = own_texts = None
    if isinstance(data, tuple | list):  # your own (train, test) pair
        if hf.is_hf_source(handle.source):
            own_texts, data = _own_texts(data), OWN_TEXTS
        else:
            own, data = _own_datasets(data), OWN_DATASETS
    elif data is not None and not isinstance(data, str):
        raise DataError(
            "data must be a dataset name, a .safetensors data file, or a (train, test) pair of torch Datasets (or of "
            "lists of texts, for a Hugging Face model)"
        )
    prepared = _Prepared(data if data is not None else handle.dataset)  # "" is a wrong name, not "use the default"
    name = prepared.dataset
    calibrating = [m for m in methods if m.needs != "none"]
    if calib is not None and not calibrating:  # a silently ignored setting would be a wrong result
        raise BudgetError(f"{' + '.join(m.name for m in methods)} uses no calibration data; drop calib (CLI: --calib)")
    if calibrating and hf.is_hf_source(handle.source):
        _check_encoder_calibration(calibrating)
    if name is None:
        if calibrating:
            needs = "training" if any(m.needs == "training" for m in calibrating) else "calibration"
            raise DataError(f"{' + '.join(m.name for m in calibrating)} needs {needs} data; pass data= (CLI: --data)")
        return prepared
    text = own_texts is not None or (own is None and _is_text(handle, name))
    if calibrating:
        if own is not None:
            train = resolve_dataset(own[0], "train", handle.input_shape)
        elif text:
            train = Sentences(own_texts[0] if own_texts else load_sentences(name, "train"), "train", _encoder(handle))
        else:
            train = resolve_dataset(name, "train", handle.input_shape)
        if calib is None:
            calib = len(train) if any(m.needs == "training" for m in methods) else min(DEFAULT_CALIB, len(train))
        prepared.calibration = calibration_subset(train, calib, seed)
    with kept_modes(handle.module):  # one sample through the model: data it cannot take fails before any work
        if text:
            prepared.sentences = own_texts[1] if own_texts else load_sentences(name)
            _encoder(handle).reference(handle.module, [max(prepared.sentences, key=len)])  # the longest: it has tokens
        else:
            prepared.test = resolve_dataset(own[1] if own else name, "test", handle.input_shape)
            _check_finite_output(handle.module, prepared.test[0][0], "test")
            if prepared.calibration is not None and own is not None:
                _refuse_test_samples(prepared.calibration, prepared.test)
            elif prepared.calibration is not None and name not in DATASETS:  # a data file: your own splits too
                _refuse_test_samples(prepared.calibration, prepared.test, name)
            if prepared.calibration is not None:
                sample = prepared.calibration.dataset[prepared.calibration.indices[0]][0]
                _check_finite_output(handle.module, sample, "training")
    return prepared


def _check_finite_output(module: nn.Module, sample: torch.Tensor, split: str) -> None:
    """One sample through the model: data it cannot take, or takes to NaN, fails before any work."""
    if not bool(torch.isfinite(predict(module, sample.unsqueeze(0))).all()):
        norms = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        negative = [n for n, m in norms if m.running_var is not None and bool((m.running_var + m.eps < 0).any())]
        if negative:
            raise UnsupportedModelError(
                f"{negative[0]}.running_var holds a negative variance: the model's BatchNorm statistics are damaged"
            )
        raise DataError(
            f"the model's output on a {split} input is not finite: the inputs are out of the range it was "
            "trained on (standardise them as for training), or the model's weights overflow on them"
        )


def _check_preservation(handle: ModelHandle, prepared: _Prepared, methods: list[Method]) -> None:
    """Check your preservation set on the model (labels within its classes, a finite output), record what
    identifies it and how many of its examples are also in the test split (None: no test split to compare);
    refuse those for a method that trains on them (the test accuracy would flatter its file)."""
    preservation = prepared.preservation
    inputs, labels = stacked_examples(preservation, "the preservation set")
    with kept_modes(handle.module):
        check_labels(handle.module, inputs, labels, what="preservation")
        _check_finite_output(handle.module, inputs[0], "preservation")
    shared = None
    if prepared.test is not None:
        test = set(sample_digests(prepared.test))
        shared = sum(digest in test for digest in sample_digests(preservation))
    trains = [m.name for m in methods if getattr(m, "preservation", None) is not None]
    if shared and trains:
        raise DataError(
            f"{shared} of the {len(preservation)} preservation examples {'is' if shared == 1 else 'are'} also in the test "
            f"split: {trains[0]} trains on them, so the test accuracy would flatter the file; take them from the training data"
        )
    prepared.preservation_record = {"samples": len(preservation), "sha256": dataset_sha256(preservation), "in_test_split": shared}


def _check_encoder_calibration(methods: list[Method]) -> None:
    """Refuse, for a Hugging Face model, a method whose data must be a classifier's labelled images: fold's BatchNorm
    repair reads them, soft weight-sharing and self-compression retrain on them."""
    images_only = [m.name for m in methods if not getattr(m, "calibrates_encoders", False)]
    if images_only:
        raise DataError(
            f"{', '.join(images_only)} {'needs' if len(images_only) == 1 else 'need'} a classifier's labelled images "
            "(to retrain on, or to repair BatchNorm statistics); a Hugging Face model takes "
            "fcpts and l2 (calibrated on sentences) and the data-free methods: uniform, kmeans, magnitude, fold and "
            "channel-l1 (repair none)"
        )


def _measure_original(handle: ModelHandle, prepared: _Prepared) -> None:
    """The original's accuracy or figures on the sentences, once per sweep; press calls it after compressing (a
    method's own errors come first) and before writing (a sentence too long for the model stops the run there)."""
    with kept_modes(handle.module):
        if prepared.test is not None and prepared.before is None:
            prepared.before = _evaluate(handle.module, prepared.test)
        if prepared.preservation is not None and prepared.preservation_before is None:
            prepared.preservation_before = _evaluate(handle.module, prepared.preservation)
        if prepared.sentences is not None and prepared.reference is None:
            prepared.reference = _encoder(handle).reference(handle.module, prepared.sentences)
            prepared.sentences_cut = hf.sentences_cut(_encoder(handle), prepared.sentences)


def _press(
    handle: ModelHandle,
    methods: list[Method],
    budget: Budget | None,
    out: str | os.PathLike,
    prepared: _Prepared,
    raw_dtype: str | None,
) -> dict:
    """``press`` once its arguments are checked and its data prepared."""
    start = time.perf_counter()
    compressed = _compress(handle, methods, budget, prepared.calibration, raw_dtype)
    seconds = time.perf_counter() - start
    _measure_original(handle, prepared)
    # The file is measured under a hidden name and renamed over ``out`` last: a run that fails while
    # measuring it (a compressed model that no longer runs) leaves an existing ``out`` as it was.
    target = output_target(out)  # a link is written through, as every other output
    measured = _hidden_sibling(target)
    try:
        start = time.perf_counter()
        file_bytes = save(compressed, measured)
        seconds += time.perf_counter() - start
        made = _Written(compressed.summary, compressed.details, _stored_params(compressed, handle.module))
        del compressed  # its codes: measuring reads them back from the file, and both need not be in memory at once
        report = _measured_report(handle, made, measured, file_bytes, seconds, prepared)
        try:
            os.chmod(measured, output_mode(target))  # the hidden file is private, as mkstemp made it
            os.replace(measured, target)
        except OSError as exc:
            raise OutputError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        measured.unlink(missing_ok=True)
    report["file"] = str(out)
    return report


def _hidden_sibling(path: Path) -> Path:
    """A new, short, hidden .press name in ``path``'s folder (a name built on ``path``'s could pass the
    file system's length limit)."""
    try:
        handle, name = tempfile.mkstemp(prefix=".netpress-", suffix=".press", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"cannot write in {path.parent}: {exc.strerror or exc}") from exc
    os.close(handle)
    return Path(name)


@dataclass(frozen=True)
class _Written:
    """What press's report takes from the compressed model besides the file itself."""

    summary: dict
    details: dict
    params: int


def _measured_report(
    handle: ModelHandle, made: _Written, path: Path, file_bytes: int, seconds: float, prepared: _Prepared
) -> dict:
    """press's report of the file at ``path``, measured on the model loaded back from it."""
    original_bytes = fp32_bytes(handle.module)
    report = {
        "source": handle.source,
        "methods": made.summary["methods"],
        "budget": made.summary["budget"],
        "original_bytes": original_bytes,
        "file_bytes": file_bytes,
        "ratio": original_bytes / file_bytes,
        "seconds": round(seconds, 3),
        "params_before": count_params(handle.module),
        "params_after": made.params,
        **({"searched": made.summary["searched"]} if "searched" in made.summary else {}),
        "sparsity": made.summary["sparsity"],
        "file": None,  # its final name, once measured
        "uncompressed_layers": made.details["uncompressed_layers"],
        **({"kept_layers": made.summary["kept"]} if "kept" in made.summary else {}),
    }
    if handle.first_original_bytes is not None:  # the input is itself a .press file
        report["first_original_bytes"] = handle.first_original_bytes
        report["overall_ratio"] = handle.first_original_bytes / file_bytes
    if handle.path is not None and (given := input_bytes(handle.path)):  # a .press input re-quantized finer, or a
        report["input_file_bytes"] = given  # half-precision model, can be smaller than the file netpress writes
    loaded = functools.cache(lambda: load(path, model=handle.module))
    measuring = prepared.dataset
    try:
        if prepared.test is not None:
            after = _evaluate(loaded(), prepared.test)
            report.update(dataset=prepared.dataset, accuracy_before=prepared.before.accuracy, accuracy_after=after.accuracy)
            report["agreement"] = after.agreement(prepared.before)  # test inputs the file classifies as the original does
            per_class = {"before": prepared.before.to_dict()["per_class"], "after": after.to_dict()["per_class"]}
            report["per_class_accuracy"] = per_class  # a class the file lost shows here, not in the mean
        if prepared.preservation is not None:
            measuring = "your preservation set"
            report["preservation"] = {
                **prepared.preservation_record,
                "accuracy_before": prepared.preservation_before.accuracy,
                "accuracy_after": _evaluate(loaded(), prepared.preservation).accuracy,
            }
        if prepared.reference is not None:  # a text model is measured against itself uncompressed
            reader = handle.encoder
            measured = reader.compare(loaded(), prepared.sentences, prepared.reference)
            report.update({"dataset": prepared.dataset, reader.report_key: measured})
            if prepared.sentences_cut:
                report["sentences_cut"] = prepared.sentences_cut
    except DataError as exc:  # the original ran on this data: the compression broke the model
        structural = [m["name"] for m in made.summary["methods"] if getattr(METHODS.get(m["name"]), "structural", False)]
        hint = (
            f"; {structural[0]} traces the model with one input, so a branch that input did not take may still expect "
            "the old widths"
            if structural
            else ""
        )
        raise UnsupportedModelError(
            f"the compressed model does not run on {measuring}, which the original runs on ({exc}){hint}"
        ) from exc
    if prepared.calibration is not None:
        report["calibration"] = {**made.summary["calibration"], "indices": prepared.calibration.indices}
    report["layers"] = made.details["layers"]
    if "search" in made.details:
        report["search"] = made.details["search"]
    if "sparsity" in {**(report["budget"] or {}), **report.get("searched", {})}:
        report["survivors_rounded_to_zero"] = _survivors_rounded_to_zero(report["layers"], report["sparsity"])
    return report


def _survivors_rounded_to_zero(layers: dict[str, list[dict]], sparsity: float) -> int:
    """Zeros a quantizer behind a pruning stage added (survivors under half its step): the file's zeros
    minus the pruning stage's, so a report can say why its sparsity is above the target."""
    stages = list(layers.values())
    pruned = next((rows for rows in stages if rows and "sparsity" in rows[0]), None)
    if pruned is None or stages[-1] is pruned:
        return 0
    weights = sum(row["params"] for row in pruned)
    return round(sparsity * weights) - round(sum(row["sparsity"] * row["params"] for row in pruned))


def _is_text(handle: ModelHandle, dataset: str) -> bool:
    """Whether ``dataset`` is text for a Hugging Face model (else images for a classifier); a mismatch is refused."""
    text_model = hf.is_hf_source(handle.source)
    if text_model and not is_text_data(dataset):
        raise DataError(f"a Hugging Face model is measured on text: data={TEXT_DATA} (CLI: --data), not {dataset!r}")
    if not text_model:
        _refuse_text(dataset)
    return text_model


def _refuse_text(dataset: object) -> None:
    """Text given where a classifier's images are measured (load_dataset would call it an unknown name)."""
    if is_text_data(dataset):
        raise DataError(f"{dataset} is text: it measures models read from a Hugging Face model directory")


def _encoder(handle: ModelHandle) -> hf.TextEncoder | hf.TokenPredictor:
    """How the handle reads text (its tokenizer, and an encoder's pooling), or an error that says where to find it."""
    if handle.encoder is not None:
        return handle.encoder
    if handle.path is not None and Path(handle.path).suffix.lower() == ".press":
        raise DataError(
            f"{handle.path} holds the network, not its tokenizer, so it cannot read text: compress it with a data-free "
            "method and no data (CLI: no --data), and measure a file against the directory it came from with "
            "netpress.fidelity(netpress.load_model(FILE), netpress.load_model(DIR)) "
            "(CLI: `netpress eval FILE --data fortunes --reference DIR`)"
        )
    raise DataError(f"{handle.path or 'the model'} has no tokenizer, so netpress cannot read text with it")


def fidelity(model: ModelHandle | nn.Module, reference: ModelHandle, sentences: str | Sequence[str] = "fortunes") -> Fidelity:
    """How close ``model``'s sentence embeddings stay to ``reference``'s (a handle from a Hugging Face directory,
    whose tokenizer and pooling embed both), on a text dataset by name or a list of sentences."""
    return Fidelity(**compare_text(model, reference, sentences, hf.TextEncoder))


def perplexity(
    model: ModelHandle | nn.Module, reference: ModelHandle | None = None, sentences: str | Sequence[str] = "fortunes"
) -> dict:
    """A causal language model's perplexity on the sentences before (``reference``, a handle from the Hugging Face
    directory ``model`` was compressed from, whose tokenizer reads both) and after, with the share of tokens at
    which both predict the same next token. Without a reference, ``model`` is a directory's handle measured on its
    own (before and after are its perplexity)."""
    if reference is None:
        if not (isinstance(model, ModelHandle) and isinstance(model.encoder, hf.TokenPredictor)):
            raise DataError("a model measured on its own is the handle of a causal language model's directory (its tokenizer)")
        sentences = load_sentences(sentences) if isinstance(sentences, str) else list(sentences)
        with kept_modes(model.module):
            figures = model.encoder.score(model.module, sentences)
        return model.encoder.figures(figures, figures, len(sentences))
    return compare_text(model, reference, sentences, hf.TokenPredictor)


def compare_text(
    model: ModelHandle | nn.Module, reference: ModelHandle, sentences: str | Sequence[str] = "fortunes", kind: type | None = None
) -> dict:
    """``model`` against ``reference`` on sentences, as a report measures it: an encoder's ``fidelity``, a causal
    language model's ``perplexity`` (``kind``: the reader that must measure it, or None for either)."""
    if not isinstance(reference, ModelHandle):
        raise ModelSourceError("the reference is the handle of the uncompressed model: netpress.load_model(DIR)")
    if isinstance(model, ModelHandle):
        _check_same_model(model, reference)
    reader = _encoder(reference)
    if kind is not None and not isinstance(reader, kind):
        other = {"fidelity": "netpress.fidelity", "perplexity": "netpress.perplexity"}[reader.report_key]
        raise DataError(f"the reference is measured by its {reader.report_key}: use {other}")
    sentences = load_sentences(sentences) if isinstance(sentences, str) else list(sentences)
    module = _as_handle(model).module
    with kept_modes(module), kept_modes(reference.module):
        return reader.compare(module, sentences, reader.reference(reference.module, sentences))


# Config entries that make two Hugging Face models different networks (fold changes layer widths, not these)
IDENTITY_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings")


def _check_same_model(model: ModelHandle, reference: ModelHandle) -> None:
    """Refuse to compare a compressed model with a reference it was not made from."""
    mine, theirs = (h.source.get(hf.SOURCE_KEY, {}) for h in (model, reference))
    if not mine or not theirs:
        return
    differ = [k for k in IDENTITY_KEYS if mine["config"].get(k) != theirs["config"].get(k)]
    if mine["class"] != theirs["class"] or differ:
        what = [f"{k} {mine['config'].get(k)!r} against {theirs['config'].get(k)!r}" for k in differ]
        if mine["class"] != theirs["class"]:
            what.insert(0, f"{mine['class']} against {theirs['class']}")
        raise DataError(
            f"the model and the reference are different networks ({', '.join(what)}); compare a compressed file with "
            "the directory it was compressed from"
        )


def _stored_params(compressed: CompressedModel, module: nn.Module) -> int:
    """Parameters in the file, counted like ``params_before`` (BatchNorm statistics are buffers, not parameters)."""
    names = {name for name, _ in module.named_parameters()}
    return sum(torch.Size(t.shape).numel() for name, t in compressed.tensors.items() if name in names)


def sweep(
    model: ModelHandle | nn.Module,
    methods: Method | Sequence[Method],
    budgets: Sequence[Budget],
    *,
    out_dir: str | os.PathLike,
    data: str | os.PathLike | tuple[Dataset, Dataset] | tuple[Sequence[str], Sequence[str]] | None = None,
    calib: int | None = None,
    seed: int = 0,
    raw_dtype: str | None = None,
    workers: int = 1,
    keep: Sequence[str] = (),
    preservation: str | os.PathLike | Dataset | None = None,
) -> list[dict]:
    """``press`` once per budget, each file in ``out_dir`` named after the method and target.

    Every point is measured on its written file, so the list is an honest accuracy-vs-bytes curve. The points
    are independent: with ``workers`` > 1 that many local processes share them, and in a torch.distributed
    group (processes launched by ``torchrun``) its processes do, each writing its own points' files (on several
    machines, ``out_dir`` should be a shared folder) and every one returning the whole list. Local workers are
    started afresh (``spawn``), so a script that asks for them runs its work under ``if __name__ == "__main__":``.
    ``preservation`` is measured at every point, as in ``press``.
    """
    check_whole("workers", workers, 1)
    if not isinstance(out_dir, str | os.PathLike):
        raise OutputError(f"out_dir is a folder's path (a str or pathlib.Path), got {type(out_dir).__name__}")
    out_dir = Path(out_dir)
    if workers > 1 and parallel.in_group():
        raise BudgetError(
            "this process is in a torch.distributed group, whose processes share the points; drop workers (--workers)"
        )
    data = _data_name(data)
    handle = _with_input_shape(_as_handle(model), data)
    methods = _method_list(methods)
    preservation, methods = _preservation_and_methods(preservation, methods, handle)
    with _keeping(handle, methods, keep):
        if isinstance(budgets, Budget) or not isinstance(budgets, Sequence) or not budgets:
            raise BudgetError("give a list of targets to sweep, e.g. [Budget(sparsity=0.5), Budget(sparsity=0.8)]")
        for budget in budgets:  # all checked before the output directory is made
            if budget is None:
                raise BudgetError("give a Budget for every point of the sweep")
            _check_call(handle, methods, budget, raw_dtype)
        label = "+".join(m.name for m in methods)
        names = [f"{label}-{budget.kind}{budget.value:g}.press" for budget in budgets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise BudgetError(f"two targets would write the same file ({', '.join(twice)}); give distinct targets")
        for name in names:
            check_writable(out_dir / name, keep=(handle.path,) if handle.path else (), made=out_dir)
        _check_searched_ratios(handle, methods, budgets, raw_dtype)  # may compress a stand-in: after the cheap checks
        prepared = _prepare(handle, methods, data, calib, seed, preservation)
        make_output_dir(out_dir)
        points = [(budget, out_dir / name) for budget, name in zip(budgets, names)]
        task = functools.partial(_press_points, handle, methods, data, calib, seed, raw_dtype, preservation)
        if parallel.in_group():
            return parallel.shared(functools.partial(task, prepared=prepared), points)
        workers = min(workers, len(points))  # no process without a point
        if workers > 1:  # each process draws the same seeded calibration subset: no data are sent
            return parallel.on_local_workers(workers, task, points)
        return task(points, prepared)


def _press_points(
    handle: ModelHandle,
    methods: list[Method],
    data: str | None,
    calib: int | None,
    seed: int,
    raw_dtype: str | None,
    preservation: Dataset | None,
    points: list[tuple[Budget, Path]],
    prepared: _Prepared | None = None,
) -> list[dict]:
    """``_press`` at each of ``points`` (one process's share of a sweep), with ``prepared`` data or its own."""
    if prepared is None:
        prepared = _prepare(handle, methods, data, calib, seed, preservation)
    return [_press(handle, methods, budget, out, prepared, raw_dtype) for budget, out in points]


__all__ = [
    "Evaluation",
    "ModelHandle",
    "architecture_for",
    "build_architecture",
    "compress",
    "evaluate",
    "fidelity",
    "fp32_bytes",
    "inspect",
    "load",
    "load_model",
    "perplexity",
    "press",
    "resolve_dataset",
    "save",
    "sweep",
]
