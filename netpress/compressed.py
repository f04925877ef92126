"""``CompressedModel``: everything a .press file holds, in memory."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from netpress.codec.codes import Encoded, SparseValues
from netpress.errors import BudgetError, FormatError, ModelSourceError, one_line
from netpress.graph.surgery import resize_to

# The dtypes a model's fp32 file holds (floats become float32), by name and in the order safetensors lays
# tensors out: its dtype enum from last to first, then by name.
_SAFETENSORS_DTYPES = {
    torch.uint64: "U64",
    torch.int64: "I64",
    torch.complex64: "C64",
    torch.float32: "F32",
    torch.uint32: "U32",
    torch.int32: "I32",
    torch.uint16: "U16",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_LAYOUT_RANK = {dtype: rank for rank, dtype in enumerate(_SAFETENSORS_DTYPES)}


def fp32_bytes(model: nn.Module) -> int:
    """Size of the model's state dict as an fp32 safetensors file: the reference every ratio uses. A tensor
    shared by several names counts once (its first), as ``safetensors.torch.save_model`` stores it.

    Counted, not written: the header is laid out as safetensors lays it (tested against its writer), so a
    model is sized without a second copy of it in memory (DESIGN §8)."""
    entries: dict[str, tuple[torch.dtype, list[int]]] = {}
    seen = set()
    for name, value in model.state_dict().items():
        key = (value.data_ptr(), value.dtype, value.shape, value.stride())
        if value.numel() and key in seen:
            continue
        seen.add(key)
        dtype = torch.float32 if value.is_floating_point() else value.dtype
        if dtype not in _SAFETENSORS_DTYPES:
            raise ModelSourceError(f"{name} is {value.dtype}, which netpress cannot store; supported: floats, integers, bool")
        entries[name] = (dtype, list(value.shape))
    header, offset = {}, 0
    for name in sorted(entries, key=lambda n: (_LAYOUT_RANK[entries[n][0]], n.encode())):
        dtype, shape = entries[name]
        size = math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return 8 + len(text) + (-len(text) % 8) + offset


RAW_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def stored_tensors(state: dict[str, torch.Tensor], codes: dict[str, Encoded], raw_dtype: str = "fp32") -> dict:
    """What a file holds for a model state: the codes where a method made them, and every float stored
    as a float (a pruned tensor's survivors, tensors no method coded) in ``raw_dtype``; a tensor the state
    holds under several names (tied weights) once, under the name it was coded under, else its first."""
    aliases = tied_aliases(state, set(codes))
    return {name: stored_tensor(name, value, codes.get(name), raw_dtype) for name, value in state.items() if name not in aliases}


def _storage_groups(state: dict[str, torch.Tensor]) -> list[list[str]]:
    """The names of a state, grouped by the tensor they share (one group per distinct non-empty tensor)."""
    groups: dict[tuple, list[str]] = {}
    for name, value in state.items():
        if value.numel():
            groups.setdefault((value.data_ptr(), value.shape, value.stride()), []).append(name)
    return list(groups.values())


def tied_aliases(state: dict[str, torch.Tensor], coded: set[str] = frozenset()) -> set[str]:
    """The names of a state that hold a tensor another name holds (tied weights: a language model's embedding and
    output layer): a file stores the tensor once, under the name it was ``coded`` under, else the first."""
    aliases = set()
    for names in _storage_groups(state):
        kept = next((n for n in names if n in coded), names[0])
        aliases.update(n for n in names if n != kept)
    return aliases


def tied_in(summary: dict) -> dict[str, str]:
    """A file summary's ``{alias: stored name}`` (its ``tied`` record, what of it is well formed)."""
    tied = summary.get("tied", {})
    return {a: k for a, k in tied.items() if isinstance(a, str) and isinstance(k, str)} if isinstance(tied, dict) else {}


def tied_group(state: dict[str, torch.Tensor], name: str) -> list[str]:
    """Every name of ``state`` that holds the tensor ``name`` holds, ``name`` included, in state order."""
    return next((names for names in _storage_groups(state) if name in names), [name])


def tied_names(expected: dict[str, torch.Tensor], held: set[str]) -> set[str]:
    """The names of an architecture's state a file may leave out, because the architecture ties them to a name the
    file holds: loading that one fills them too."""
    return {k for names in _storage_groups(expected) if any(k in held for k in names) for k in names if k not in held}


def stored_tensor(name: str, value: torch.Tensor, code: Encoded | None, raw_dtype: str = "fp32") -> Encoded | torch.Tensor:
    """What a file holds for one tensor of a model state (``code``: its codes, if a method made them)."""
    dtype = RAW_DTYPES[raw_dtype]
    if isinstance(code, SparseValues):
        stored = code.survivors_in(dtype)
    elif code is not None:
        return code
    elif value.is_floating_point():
        stored = value.detach().to(dtype).clone()
    else:
        return value.detach().clone()
    if isinstance(stored, SparseValues):
        check_float16_range(name, code.values, stored.values)
    else:
        check_float16_range(name, value, stored)
    return stored


RAW_FP32_FIX = "store its floats with raw_dtype fp32 (--raw-dtype fp32)"


def check_float16_range(name: str, original: torch.Tensor, converted: torch.Tensor, fix: str = RAW_FP32_FIX) -> None:
    """Refuse values that float16 stores as infinities (beyond 65504), naming the largest as it was."""
    if converted.dtype == torch.float16:
        overflow = torch.isinf(converted)
        if overflow.any():
            largest = float(original[overflow].abs().max())
            raise BudgetError(f"{name} holds values up to {largest:.4g}, beyond float16's range (65504): {fix}")


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # what DataParallel / DistributedDataParallel and torch.compile add


def prefix_hint(missing: list[str], unexpected: list[str], fix: str = "save {}.state_dict()") -> str:
    """Advice when the file's names are the architecture's behind a wrapper's prefix (a wrapped model's state dict,
    or the .press file of one); ``fix`` says what to do with the wrapped model's name."""
    for prefix in WRAPPER_PREFIXES:
        if missing and sorted(k.removeprefix(prefix) for k in unexpected if k.startswith(prefix)) == sorted(missing):
            wrapped = f"model.{prefix[:-1]}"
            return f" (every name in the file has the prefix {prefix!r} of a wrapped model: {fix.format(wrapped)})"
    return ""


def _source_label(source: dict) -> str:
    """A model source in a few words: ``zoo:NAME``, the factory, a Hugging Face class (its whole config would be a page)."""
    if isinstance(source.get("zoo"), str):
        return f"zoo:{source['zoo']}"
    if isinstance(source.get("arch"), str):
        return source["arch"]
    hf_source = source.get("hf")
    if isinstance(hf_source, dict):
        return f"Hugging Face {hf_source.get('class', 'model')}"
    return "a module passed in"


@dataclass
class CompressedModel:
    """The full state of a compressed model.

    ``tensors`` maps every state-dict entry to ``Codes``/``SparseValues`` (coded), the same already
    encoded (``codec.container.Packed``, from a compression run one layer at a time), or a plain tensor
    (stored raw). Shapes may differ from the source architecture after structural compression;
    ``to_module`` resizes the layers to match. ``source`` identifies the architecture, ``summary``
    is the short report stored in the file.
    """

    tensors: dict[str, Encoded | torch.Tensor]
    source: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # per-layer rows, calibration indices: report only, not stored

    def __repr__(self) -> str:
        """What it is in one line: the generated repr printed every tensor (every coded stream's bytes: megabytes
        for a small model, gigabytes for a large one)."""
        coded = sum(not isinstance(v, torch.Tensor) for v in self.tensors.values())
        methods = " + ".join(str(m.get("name")) for m in self.summary.get("methods", []) if isinstance(m, dict))
        parts = [f"{len(self.tensors)} tensors ({coded} coded)", f"source={_source_label(self.source)!r}"]
        parts += [f"methods={methods!r}"] if methods else []
        parts += [f"budget={self.summary['budget']!r}"] if self.summary.get("budget") else []
        return f"CompressedModel({', '.join(parts)})"

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The exact tensors the file gives back, under every name the model held them (a tied tensor under each)."""
        state = {k: v if isinstance(v, torch.Tensor) else v.dequantize() for k, v in self.tensors.items()}
        return {**state, **{alias: state[kept] for alias, kept in self.tied().items() if kept in state}}

    def tied(self) -> dict[str, str]:
        """``{alias: stored name}`` of the tensors the model held under several names (the file stores each once)."""
        return tied_in(self.summary)

    def non_finite(self) -> str | None:
        """The first tensor holding NaN or infinity, if any: compress() refuses such models, so a file that
        holds one was made another way, and a model built from it would only score noise."""
        for name, value in self.tensors.items():
            stored = value.values if isinstance(value, SparseValues) else value
            if isinstance(stored, torch.Tensor) and stored.is_floating_point() and not torch.isfinite(stored).all():
                return name
        return None

    def to_module(self, model: nn.Module) -> nn.Module:
        """Load the state into a copy of ``model`` (its architecture), resizing layers where needed."""
        return self.load_into(copy.deepcopy(model))

    def load_into(self, model: nn.Module) -> nn.Module:
        """Load the state into ``model`` itself, an architecture built for it, resizing layers where needed.

        One layer at a time (its own tensors, through its load_state_dict as a whole load would), a coded
        tensor decoded just before its layer takes it: the decoded weights of the whole model are never in
        memory beside the model."""
        resize_to(model, {k: tuple(v.shape) for k, v in self.tensors.items()})
        reference = model.state_dict()
        aliases = {alias: kept for alias, kept in self.tied().items() if kept in self.tensors}
        for alias, kept in aliases.items():  # the summary is not needed to decode, so its record is checked here
            if alias in reference and tuple(reference[alias].shape) != tuple(self.tensors[kept].shape):
                raise FormatError(
                    f"the file ties {alias} {tuple(reference[alias].shape)} to {kept} {tuple(self.tensors[kept].shape)}: "
                    "the shapes differ, so its summary is damaged"
                )
        tied = tied_names(reference, set(self.tensors)) | set(aliases)
        missing = [k for k in reference if k not in self.tensors and k not in tied]
        unexpected = [k for k in self.tensors if k not in reference]
        if missing or unexpected:
            problems = [f"{what} {', '.join(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
            hint = prefix_hint(missing, unexpected, "compress {} instead")
            raise ModelSourceError(f"the stored tensors do not fit this architecture: {'; '.join(problems)}{hint}")
        by_layer: dict[str, dict[str, Encoded | torch.Tensor]] = {}
        for name, value in self.tensors.items():
            layer, _, local = name.rpartition(".")
            by_layer.setdefault(layer, {})[local] = value
        for layer, values in by_layer.items():
            prefix = f"{layer}." if layer else ""
            decoded = {}
            for local, stored in values.items():
                value = stored if isinstance(stored, torch.Tensor) else stored.dequantize()
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise ModelSourceError(
                        f"{prefix + local} holds NaN or infinite values; a model built from it is not a working model"
                    )
                decoded[local] = value.to(reference[prefix + local].dtype)
            try:
                model.get_submodule(layer).load_state_dict(decoded, strict=False)
            except RuntimeError as exc:
                raise ModelSourceError(f"the stored tensors do not fit this architecture: {one_line(exc)}") from exc
        # An alias the architecture does not tie to its stored name (a factory that builds the layers apart) gets a copy.
        state = model.state_dict()
        with torch.no_grad():
            for alias, kept in aliases.items():
                if alias in state and kept in state and state[alias].data_ptr() != state[kept].data_ptr():
                    state[alias].copy_(state[kept])
        return model.eval()
