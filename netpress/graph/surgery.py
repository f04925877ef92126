"""Surgery: give a model's layers the shapes a (structurally compressed) state dict asks for."""

from __future__ import annotations

import torch
from torch import nn

from netpress.errors import UnsupportedModelError

# Which constructor attribute each tensor axis of a resizable layer corresponds to.
_AXIS_ATTRS: dict[type, dict[str, tuple[str, ...]]] = {
    nn.Linear: {"weight": ("out_features", "in_features"), "bias": ("out_features",)},
    nn.Conv1d: {"weight": ("out_channels", "in_channels"), "bias": ("out_channels",)},
    nn.Conv2d: {"weight": ("out_channels", "in_channels"), "bias": ("out_channels",)},
    nn.Conv3d: {"weight": ("out_channels", "in_channels"), "bias": ("out_channels",)},
    nn.BatchNorm1d: {k: ("num_features",) for k in ("weight", "bias", "running_mean", "running_var")},
    nn.BatchNorm2d: {k: ("num_features",) for k in ("weight", "bias", "running_mean", "running_var")},
    nn.BatchNorm3d: {k: ("num_features",) for k in ("weight", "bias", "running_mean", "running_var")},
    nn.LayerNorm: {"weight": ("normalized_shape",), "bias": ("normalized_shape",)},
    nn.Embedding: {"weight": ("num_embeddings", "embedding_dim")},
}


# transformers' Conv1D (GPT-2's linear layer) stores its weight (in, out): ``nx`` inputs, ``nf`` outputs.
_CONV1D_ATTRS = {"weight": ("nx", "nf"), "bias": ("nf",)}


def is_conv1d(module: nn.Module) -> bool:
    """transformers' ``Conv1D``, the linear layer of GPT-2 and its kin, recognised by name so that netpress does not
    import transformers for models without it."""
    kind = type(module)
    return kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers.")


def conv1d_as_linear(model: nn.Module) -> dict[str, type[nn.Module]]:
    """Replace, in place, every transformers ``Conv1D`` by the ``nn.Linear`` it computes (its weight transposed):
    channel tracing and the structural methods know Linear layers. Returns ``{name: Conv1D class}`` for
    ``linear_as_conv1d``, which puts them back."""
    replaced = {}
    for name, module in list(model.named_modules()):
        if not is_conv1d(module):
            continue
        linear = nn.Linear(module.nx, module.nf, device="meta")
        linear.weight = nn.Parameter(module.weight.detach().t().contiguous(), requires_grad=module.weight.requires_grad)
        linear.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=module.bias.requires_grad)
        model.set_submodule(name, linear)
        replaced[name] = type(module)
    return replaced


def linear_as_conv1d(model: nn.Module, replaced: dict[str, type[nn.Module]]) -> None:
    """Undo ``conv1d_as_linear`` in place, at the Linear layers' present widths, so that the model keeps its own
    architecture (a Hugging Face model's state dict holds Conv1D weights as (in, out))."""
    for name, kind in replaced.items():
        linear = model.get_submodule(name)
        conv = kind.__new__(kind)
        nn.Module.__init__(conv)
        conv.nf, conv.nx = linear.out_features, linear.in_features
        conv.weight = nn.Parameter(linear.weight.detach().t().contiguous(), requires_grad=linear.weight.requires_grad)
        conv.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        model.set_submodule(name, conv)


def resize_to(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """Resize, in place, every parameter or buffer whose shape differs from ``shapes``.

    The tensors get new (uninitialised) storage of the right shape and the layer's size attributes
    follow, so ``load_state_dict`` then fills them. Layers of other types cannot be resized.
    """
    for full_name, shape in shapes.items():
        module_name, _, tensor_name = full_name.rpartition(".")
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            continue  # an unexpected key: load_state_dict names it
        current = getattr(module, tensor_name, None)
        if not isinstance(current, torch.Tensor) or tuple(current.shape) == tuple(shape):
            continue
        attrs = (_CONV1D_ATTRS if is_conv1d(module) else _AXIS_ATTRS.get(type(module), {})).get(tensor_name)
        if attrs is None or len(shape) != current.dim():
            supported = ", ".join([*(t.__name__ for t in _AXIS_ATTRS), "transformers' Conv1D"])
            raise UnsupportedModelError(
                f"{full_name}: cannot change the shape of a {type(module).__name__} "
                f"from {tuple(current.shape)} to {tuple(shape)}; resizable layers: {supported} (or this is not the "
                "architecture the file was made from)"
            )
        set_tensor(module, tensor_name, torch.empty(shape, dtype=current.dtype))
        for axis, attr in enumerate(attrs):
            if attr == "normalized_shape":
                module.normalized_shape = (shape[0],)
            elif attr == "in_channels":
                if module.groups > 1 and module.groups == module.in_channels and tensor_name == "weight":  # depthwise
                    module.groups = shape[0]
                module.in_channels = shape[1] * module.groups
            else:
                setattr(module, attr, shape[axis])
    return model


def set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace a parameter (keeping whether it trains) or a buffer by a tensor of another shape."""
    current = getattr(module, name)
    if isinstance(current, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=current.requires_grad))
    else:
        module.register_buffer(name, value)
