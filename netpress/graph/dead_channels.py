"""Cutting channels that carry nothing: every producer's weights for them are zero.

Such a channel reaches its consumers as a constant (its bias, through BatchNorm and element-wise
operations). Where that constant is zero, the consumers' columns for it multiply zeros and the channel is
cut without changing the function; where it is not, a Linear consumer with a bias absorbs it (the function
changes only by rounding), and any other consumer keeps the channel. Self-compression cuts the channels
its bit depths have set to zero with this.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from netpress.graph.groups import CHANNEL_LAYERS, ChannelGroup, channel_groups, check_still_runs, forward_once, select_channels


@dataclass(frozen=True)
class Cut:
    """A group's channels after a cut: ``kept`` indexes the ones left, in order."""

    group: ChannelGroup
    kept: torch.Tensor


def cut_dead_channels(model: nn.Module, example: torch.Tensor) -> list[Cut]:
    """Cut, in place, the channels of ``model`` whose producers' weights are all zero and whose value every
    consumer reads as a zero, or as a constant it can absorb into its bias; one channel of a group always
    stays. ``example``: inputs to trace the model and read the constants with, in eval mode (the model is
    left in it).

    The cut is tried on a copy first: where the forward pass holds a width tracing does not see (a view to a
    fixed width, a buffer sized by the channels), the cut model would not run, and ``model`` is left whole
    (UnsupportedModelError says why). The trial costs a copy of the model and a second tracing: small beside the
    training run self-compression has just made."""
    trial = copy.deepcopy(model)
    if not _cut(trial, example):
        return []
    check_still_runs(trial, example, "with its dead channels cut")
    del trial
    return _cut(model, example)


@torch.no_grad()
def _cut(model: nn.Module, example: torch.Tensor) -> list[Cut]:
    """``cut_dead_channels`` without the check that the cut model runs."""
    groups = [g for g in channel_groups(model, example) if g.reason is None]
    seen = _consumer_inputs(model, groups, example)
    cuts = []
    for group in groups:
        dead = torch.ones(group.channels, dtype=torch.bool)
        for member in group.by_role("producer"):
            dead &= (model.get_submodule(member.module).weight.reshape(group.channels, -1) == 0).all(dim=1)
        consumers = [(member, model.get_submodule(member.module)) for member in group.by_role("consumer")]
        constants = {member.module: _channel_constants(seen[member.module], layer, group.channels) for member, layer in consumers}
        for member, layer in consumers:
            value = constants[member.module]
            absorbs = isinstance(layer, nn.Linear) and layer.bias is not None
            dead &= (value == 0) | (torch.isfinite(value) & absorbs)
        if dead.all():
            dead[0] = False
        if not dead.any():
            continue
        for member, layer in consumers:
            if isinstance(layer, nn.Linear) and layer.bias is not None:
                columns = torch.repeat_interleave(constants[member.module].nan_to_num() * dead, member.expand)
                layer.bias += layer.weight @ columns.to(layer.weight.dtype)
        kept = (~dead).nonzero().reshape(-1)
        select_channels(model, group, kept)
        cuts.append(Cut(group, kept))
    return cuts


def _consumer_inputs(model: nn.Module, groups: list[ChannelGroup], example: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input each consumer layer of ``groups`` receives on ``example``."""
    seen: dict[str, torch.Tensor] = {}
    names = {m.module for group in groups for m in group.by_role("consumer")}

    def keep(name: str, args: tuple) -> None:  # a hook that returned a value would replace the layer's output
        seen.setdefault(name, args[0].detach())

    hooks = [
        module.register_forward_hook(lambda _m, args, _out, name=name: keep(name, args))
        for name, module in model.named_modules()
        if name in names and isinstance(module, CHANNEL_LAYERS)
    ]
    try:
        forward_once(model.eval(), example)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _channel_constants(x: torch.Tensor, layer: nn.Module, channels: int) -> torch.Tensor:
    """Each input channel's value where it is the same at every sample and position, else NaN."""
    if isinstance(layer, nn.Linear):  # channels on the last axis, each ``expand`` columns wide after a flatten
        values = x.reshape(-1, channels, layer.in_features // channels)
    else:  # a convolution: channels on axis 1
        values = x.movedim(1, -1).reshape(-1, channels, 1)
    first = values[0, :, 0]
    constant = (values == first[None, :, None]).all(dim=2).all(dim=0)
    return torch.where(constant, first, torch.full_like(first, float("nan")))
