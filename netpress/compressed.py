"""``CompressedModel``: everything a .press file holds, in memory."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from netpress.codec.codes import Codes, Encoded, SparseValues
from netpress.errors import BudgetError, ModelSourceError, one_line
from netpress.graph.surgery import resize_to


def fp32_file(model: nn.Module) -> bytes:
    """The model's state dict as an fp32 safetensors file (a tensor shared by several names stored once, as
    ``safetensors.torch.save_model`` does)."""
    state, seen, storages = {}, set(), set()
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), v.dtype, v.shape, v.stride())
        if v.numel() and key in seen:
            continue
        seen.add(key)
        value = (v.float() if v.is_floating_point() else v).contiguous()
        shares = value.numel() and value.untyped_storage().data_ptr() in storages
        storages.add(value.untyped_storage().data_ptr())
        state[k] = value.clone() if shares else value  # safetensors refuses tensors that share memory
    return safetensors_save(state)


def fp32_bytes(model: nn.Module) -> int:
    """Size of the fp32 safetensors file: the reference every ratio uses."""
    return len(fp32_file(model))


RAW_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def stored_tensors(state: dict[str, torch.Tensor], codes: dict[str, Encoded], raw_dtype: str = "fp32") -> dict:
    """What a file holds for a model state: the codes where a method made them, and every float stored
    as a float (a pruned tensor's survivors, tensors no method coded) in ``raw_dtype``."""
    dtype = RAW_DTYPES[raw_dtype]
    tensors: dict = {}
    for name, value in state.items():
        if isinstance(codes.get(name), SparseValues):
            tensors[name] = codes[name].survivors_in(dtype)
        elif name in codes:
            tensors[name] = codes[name]
        elif value.is_floating_point():
            tensors[name] = value.detach().to(dtype).clone()
        else:
            tensors[name] = value.detach().clone()
    for name, value in tensors.items():
        stored = value.values if isinstance(value, SparseValues) else value
        if isinstance(stored, torch.Tensor) and stored.dtype == torch.float16 and torch.isinf(stored).any():
            largest = float(state[name].abs().max())
            raise BudgetError(
                f"{name} holds values up to {largest:.4g}, beyond float16's range (65504): store its floats with "
                "raw_dtype fp32 (--raw-dtype fp32)"
            )
    return tensors


@dataclass
class CompressedModel:
    """The full state of a compressed model.

    ``tensors`` maps every state-dict entry to ``Codes``/``SparseValues`` (coded) or a plain tensor
    (stored raw). Shapes may differ from the source architecture after structural compression;
    ``to_module`` resizes the layers to match. ``source`` identifies the architecture, ``summary``
    is the short report stored in the file.
    """

    tensors: dict[str, Encoded | torch.Tensor]
    source: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)  # per-layer rows, calibration indices: report only, not stored

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The exact tensors the file gives back."""
        return {k: v.dequantize() if isinstance(v, (Codes, SparseValues)) else v for k, v in self.tensors.items()}

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
        if (name := self.non_finite()) is not None:
            raise ModelSourceError(f"{name} holds NaN or infinite values; a model built from it is not a working model")
        model = copy.deepcopy(model)
        resize_to(model, {k: tuple(v.shape) for k, v in self.tensors.items()})
        reference = model.state_dict()
        missing = [k for k in reference if k not in self.tensors]
        unexpected = [k for k in self.tensors if k not in reference]
        if missing or unexpected:
            problems = [f"{what} {', '.join(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
            raise ModelSourceError(f"the stored tensors do not fit this architecture: {'; '.join(problems)}")
        # One layer at a time (its own tensors, through its load_state_dict as a whole load would): the
        # decoded weights of the whole model are never in memory beside the model.
        by_layer: dict[str, dict[str, Encoded | torch.Tensor]] = {}
        for name, value in self.tensors.items():
            layer, _, local = name.rpartition(".")
            by_layer.setdefault(layer, {})[local] = value
        for layer, values in by_layer.items():
            prefix = f"{layer}." if layer else ""
            decoded = {
                local: (v.dequantize() if isinstance(v, (Codes, SparseValues)) else v).to(reference[prefix + local].dtype)
                for local, v in values.items()
            }
            try:
                model.get_submodule(layer).load_state_dict(decoded, strict=False)
            except RuntimeError as exc:
                raise ModelSourceError(f"the stored tensors do not fit this architecture: {one_line(exc)}") from exc
        return model.eval()
