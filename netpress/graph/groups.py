"""Channel groups: every set of tensor axes that index the same channels, found by tracing.

The dependency graph comes from Torch-Pruning's ``DependencyGraph`` (autograd tracing): a group
holds the producers that write a set of channels (Linear/Conv output rows, their BatchNorm) and the
consumers that read them (Linear/Conv input columns), across flattens, element-wise ops and
residual adds, so one residual stream is one group. Structural methods change a group with two
matrices: ``producer`` (k×n) maps the n old channels' rows to k new rows, ``consumer`` (k×n) maps
old input columns to new ones; folding uses cluster means and sums, pruning uses selections.

Blocks tracing cannot see are named in ``OPAQUE_BLOCKS`` (attention: its head reshapes would need
head-aware folding); their layers are reported as not folded instead of being traced.
"""

from __future__ import annotations

import copy
import math
import traceback
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.ops import OPTYPE

from netpress.errors import NetpressError, UnsupportedModelError, one_line
from netpress.evaluate import cannot_run
from netpress.graph.surgery import set_tensor

Role = Literal["producer", "norm", "consumer"]
# Module classes whose name ends with one of these are not traced: their channels are not folded.
OPAQUE_BLOCKS: tuple[str, ...] = ("Attention",)
UNTRACED = "not reached by tracing (unused in forward)"  # the reason of a layer the tracing input never ran
# A layer that runs but whose output tracing does not follow (BERT's pooler: a ModelOutput's first item is followed).
OUTSIDE_TRACED = "runs, but outside the output tracing follows"
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CHANNEL_LAYERS = (nn.Linear, *_CONVS)  # the layers whose output channels a group can hold
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ROLE_TENSORS: dict[Role, tuple[tuple[str, int], ...]] = {
    "producer": (("weight", 0), ("bias", 0)),
    "norm": (("weight", 0), ("bias", 0), ("running_mean", 0), ("running_var", 0)),
    "consumer": (("weight", 1),),
}


@dataclass
class Member:
    """One layer's axis in a group. ``expand`` input columns per channel (conv → flatten → linear)."""

    module: str
    role: Role
    expand: int = 1
    source: str | None = None  # for a norm: the producer whose output it normalises


@dataclass
class ChannelGroup:
    """Coupled channels: ``reason`` says why the group cannot be changed (None when it can)."""

    name: str
    channels: int
    members: list[Member] = field(default_factory=list)
    reason: str | None = None

    def by_role(self, role: Role) -> list[Member]:
        return [m for m in self.members if m.role == role]

    def row(self) -> dict:
        """A report row: the group, its members by role, and why it was left alone."""
        out = {"group": self.name, "channels": self.channels}
        for role in ("producer", "norm", "consumer"):
            out[role + "s"] = [m.module for m in self.by_role(role)]
        if self.reason is not None:
            out["folded"] = False
            out["reason"] = self.reason
        return out


class ParamCounter:
    """Exact parameter count of the model after each group keeps ``kept[g]`` of its channels.

    A weight between two groups shrinks in both axes, so counts are products, not sums.
    """

    def __init__(self, model: nn.Module, groups: list[ChannelGroup]) -> None:
        axes: dict[tuple[str, str], list[int]] = {}
        for g, group in enumerate(groups):
            for member in group.members:
                for tensor_name, _ in _ROLE_TENSORS[member.role]:
                    axes.setdefault((member.module, tensor_name), []).append(g)
        self.channels = [group.channels for group in groups]
        self.terms: list[tuple[int, list[int]]] = []
        for name, param in model.named_parameters():
            module_name, _, tensor_name = name.rpartition(".")
            self.terms.append((param.numel(), axes.get((module_name, tensor_name), [])))

    def __call__(self, kept: list[int]) -> int:
        return round(sum(numel * math.prod(kept[g] / self.channels[g] for g in gs) for numel, gs in self.terms))


def _traced_output(output) -> torch.Tensor:
    """What tracing follows back: the sum of ``_output_tensors``."""
    return sum(t.float().sum() for t in _output_tensors(output))


def _output_tensors(output) -> list[torch.Tensor]:
    """A tensor output, every tensor of a (nested) tuple or list (an auxiliary head's channels are outputs too), or
    a Hugging Face ModelOutput's first item (its hidden states)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)) and any(item is not None for item in output):
        return [tensor for item in output if item is not None for tensor in _output_tensors(item)]
    if hasattr(output, "to_tuple"):
        return _output_tensors(output[0])
    raise UnsupportedModelError(
        f"the model returns a {type(output).__name__}; tracing its channels needs a tensor, a tuple or list of "
        "tensors, or a Hugging Face ModelOutput"
    )


def forward_once(model: nn.Module, example_inputs: torch.Tensor | dict) -> None:
    """One pass of the tracing input (a tensor, or a Hugging Face model's keyword inputs), without autograd."""
    with torch.no_grad():
        model(**example_inputs) if isinstance(example_inputs, dict) else model(example_inputs)


def check_still_runs(model: nn.Module, example_inputs: torch.Tensor | dict, changed: str, advice: str = "") -> None:
    """The model with changed channels must still run: a buffer or an operation the channel graph does not see (a
    mask sized by the channels, a view to a fixed width) can still expect the old widths. ``changed`` says what
    changed ("after fold"), ``advice`` ends the message."""
    try:
        forward_once(model, example_inputs)
    except Exception as exc:  # whatever the user's forward raises, the cause is the changed channels
        raise UnsupportedModelError(
            f"{changed} the model no longer runs ({type(exc).__name__}: {one_line(exc)}): something the channel tracing "
            f"does not see, e.g. a buffer or a reshape sized by a layer's channels, still expects the old width{advice}"
        ) from exc


def _layer_calls(model: nn.Module, example_inputs: torch.Tensor | dict) -> dict[nn.Module, int]:
    """How often one forward pass calls each Linear, Conv and BatchNorm layer (those it never calls are absent). A
    layer called more than once (fed its own output) couples its input and output channels, which a group's plan
    does not follow."""
    calls: dict[nn.Module, int] = {}
    hooks = [
        m.register_forward_hook(lambda module, *_: calls.update({module: calls.get(module, 0) + 1}))
        for m in model.modules()
        if isinstance(m, (*CHANNEL_LAYERS, *_NORMS))
    ]
    try:
        forward_once(model, example_inputs)
    except Exception as exc:  # whatever the user's forward raises on an input it cannot take: one line
        raise cannot_run(model, example_inputs, exc) from exc
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def _a(noun: str) -> str:
    """``noun`` with its indefinite article: "an Embedding", "a Conv2d", "an LSTM" (an initialism read letter by letter)."""
    vowels = "AEFHILMNORSX" if noun[:2].isupper() else "AEIOU"
    return f"{'an' if noun[:1] in vowels else 'a'} {noun}"


def is_depthwise(module: nn.Module) -> bool:
    """A convolution with one filter per channel: its output channels are its input channels, so it sits inside
    one group as a producer whose rows are that group's channels (MobileNet's 3x3 layers)."""
    return isinstance(module, _CONVS) and module.groups > 1 and module.groups == module.in_channels == module.out_channels


def _unsupported(module: nn.Module, node_type: OPTYPE, role: Role | None) -> str | None:
    """Why a member layer cannot be folded, or None."""
    if role is None:
        return f"{_a(type(module).__name__)} ({node_type.name}) shares these channels; folding it is not supported"
    if isinstance(module, _CONVS) and module.groups != 1 and not is_depthwise(module):
        return (
            f"a grouped {type(module).__name__} (groups={module.groups}, {module.in_channels} in, {module.out_channels} "
            "out) is not supported; plain and depthwise (one filter per channel) convolutions are"
        )
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return "transposed convolutions are not supported"
    if role == "norm" and module.running_var is None:
        return (
            f"{_a(type(module).__name__)} without running statistics (track_running_stats=False) normalises by each "
            "batch's own; only BatchNorm layers with running statistics are supported"
        )
    return None


def _role(module: nn.Module, out_side: bool) -> Role | None:
    if isinstance(module, CHANNEL_LAYERS):
        return "producer" if out_side else "consumer"
    if isinstance(module, _NORMS) and out_side:
        return "norm"
    return None


# The operation a step of Torch-Pruning's dependency analysis follows, by a word in its function's name.
TRACED_STEPS = (
    ("reshape", "a reshape or view of the channel axis (a flatten, a channel shuffle)"),
    ("flatten", "a flatten"),
    ("concat", "a concatenation"),
    ("split", "a split or chunk"),
    ("unbind", "an unbind"),
    ("expand", "an expand"),
    ("slice", "a slice"),
)


def _failing_step(exc: BaseException) -> str:
    """`` at <operation>`` where Torch-Pruning failed, read from the innermost of its frames in the traceback that
    names one (a helper it called may not): its own error (a division by zero) names none of the user's model."""
    frames = [f.name for f in traceback.extract_tb(exc.__traceback__) if "torch_pruning" in f.filename]
    for frame in reversed(frames):
        for word, operation in TRACED_STEPS:
            if word in frame:
                return f" at {operation}"
    return ""


def channel_groups(model: nn.Module, example_inputs: torch.Tensor | dict) -> list[ChannelGroup]:
    """All channel groups of ``model``, foldable or not, in model order.

    Groups whose channels reach the model's output, or that hold a layer netpress cannot fold
    (LayerNorm, embeddings, grouped convs, unwrapped parameters...), carry a ``reason``.
    """
    traced = copy.deepcopy(model).eval()
    for param in traced.parameters():  # tracing follows autograd: a frozen layer would look unused
        param.requires_grad_(True)
    if getattr(getattr(traced, "config", None), "use_cache", False):  # a Hugging Face model: no key/value cache, whose
        traced.config.use_cache = False  # concatenation Torch-Pruning cannot size (GPT-2's)
    names = {module: name for name, module in traced.named_modules()}
    parameters = {id(p): name for name, p in traced.named_parameters()}
    opaque = [m for m in traced.modules() if type(m).__name__.endswith(OPAQUE_BLOCKS)]
    hidden = {sub for block in opaque for sub in block.modules() if sub is not block}
    calls = _layer_calls(traced, example_inputs)
    reused = {m for m, count in calls.items() if count > 1}
    with torch.enable_grad():
        try:
            graph = tp.DependencyGraph().build_dependency(traced, example_inputs, output_transform=_traced_output, verbose=False)
        except NetpressError:
            raise
        except Exception as exc:  # Torch-Pruning's tracer met an operation it cannot follow
            raise UnsupportedModelError(
                f"the channel tracing (Torch-Pruning) cannot follow this model's forward pass{_failing_step(exc)} "
                f"({type(exc).__name__}: {one_line(exc)}); the weight-coding methods (magnitude, uniform, kmeans, fcpts, "
                "l2) do not trace it"
            ) from exc
    groups: list[ChannelGroup] = []
    seen: set[nn.Module] = set()
    for module in graph.module2node:
        if not isinstance(module, CHANNEL_LAYERS) or module in seen or module in hidden:
            continue
        pruner = graph.get_pruner_of_module(module)
        n = pruner.get_out_channels(module)
        group = ChannelGroup(names[module], n)
        try:
            tp_group = graph.get_pruning_group(module, pruner.prune_out_channels, list(range(n)))
        except NetpressError:
            raise
        except Exception as exc:  # Torch-Pruning's pruners cannot follow the channels into a consumer (an RNN's)
            failure = f"{type(exc).__name__}: {one_line(exc)}"
            group.reason = f"the channel tracing (Torch-Pruning) cannot follow its channels ({failure})"
            groups.append(group)
            continue
        for item in tp_group:
            dep, node = item.dep, item.dep.target
            out_side = graph.is_out_channel_pruning_fn(dep.handler)
            if node.type == OPTYPE.OUTPUT:
                group.reason = group.reason or "its channels are outputs of the model"
                continue
            target = node.module
            if not isinstance(target, nn.Module) or target not in names:
                if node.type == OPTYPE.PARAMETER:
                    named = parameters.get(id(target), "a parameter")
                    group.reason = group.reason or f"{named}, an unwrapped parameter (as RMSNorm's weight is), shares them"
                continue  # an operation (add, reshape...), not a layer
            if node.type in (OPTYPE.ELEMENTWISE, OPTYPE.RESHAPE):
                continue
            if is_depthwise(target):  # its input and output channels are the group's: one member, a producer
                if any(m.module == names[target] for m in group.members):
                    continue
                out_side = True
            if out_side:
                seen.add(target)
            role = _role(target, out_side)
            reason = _unsupported(target, node.type, role)
            if reason is None and target in hidden:
                reason = f"{names[target]} lies inside an attention block (heads are not folded)"
            if reason is None and target in reused:
                reason = "it runs more than once per forward pass (a reused layer is not folded)"
            if reason is None:
                expand, reason = _block_layout(target, role, item.idxs, item.root_idxs, n)
            if reason is not None:  # the layer is named where it is not the group's own producer
                group.reason = group.reason or (reason if names[target] == group.name else f"{names[target]}: {reason}")
                continue
            source = None
            if role == "norm":
                feeding = [i.module for i in node.inputs if isinstance(i.module, nn.Module) and i.module in names]
                source = names[feeding[0]] if len(feeding) == 1 and isinstance(feeding[0], CHANNEL_LAYERS) else None
                if source is None:
                    group.reason = group.reason or f"{names[target]}: a BatchNorm not directly after its producer"
            group.members.append(Member(names[target], role, expand, source))
        if group.reason is None and n < 2:
            group.reason = "a single channel cannot be folded"
        groups.append(group)
    _check_layouts(traced, [g for g in groups if g.reason is None], example_inputs)
    untraced = [
        module
        for module in names
        if isinstance(module, CHANNEL_LAYERS) and module not in graph.module2node and module not in hidden
    ]  # layers inside an attention block are reported with the block
    groups += [
        ChannelGroup(names[m], 0, [Member(names[m], "producer")], UNTRACED if m not in calls else OUTSIDE_TRACED)
        for m in untraced
    ]
    for block in opaque:
        inner = [names[m] for m in block.modules() if isinstance(m, CHANNEL_LAYERS)]
        groups.append(ChannelGroup(names[block], 0, [Member(n, "producer") for n in inner], "attention heads are not folded"))
    return groups


def _output_values(model: nn.Module, example_inputs: torch.Tensor | dict) -> torch.Tensor:
    """Every value the model outputs for an input, flattened (what ``_traced_output`` follows back)."""
    with torch.no_grad():
        output = model(**example_inputs) if isinstance(example_inputs, dict) else model(example_inputs)
    return torch.cat([t.detach().float().reshape(-1) for t in _output_tensors(output)])


def _layout_probe(model: nn.Module, example_inputs: torch.Tensor | dict) -> tuple[torch.Tensor | dict, torch.Tensor] | None:
    """An input for the layout check and the model's output on it: seeded N(0, 1) of the tracing input's shape
    (zeros, the usual tracing input, leave many layouts unseen), else the tracing input itself where the model
    refuses that input or gives no finite value on it; None where neither gives a finite value."""
    candidates = [example_inputs]
    if torch.is_tensor(example_inputs) and example_inputs.is_floating_point():
        noise = torch.randn(example_inputs.shape, generator=torch.Generator().manual_seed(0))
        candidates.insert(0, noise.to(example_inputs.dtype))
    for candidate in candidates:
        try:
            baseline = _output_values(model, candidate)
        except Exception:  # a forward that refuses such an input (negative pixels, say): tracing's own runs
            continue
        if bool(torch.isfinite(baseline).any()):
            return candidate, baseline
    return None


def _check_layouts(model: nn.Module, groups: list[ChannelGroup], example_inputs: torch.Tensor | dict) -> None:
    """Give a reason to each group whose channels do not reach their consumers where the tracing says.

    Torch-Pruning maps a flatten's columns channel by channel; a permute before it (channels last) or a channel
    shuffle written with ``view(b, g, -1, ...)`` moves them elsewhere, and a fold would then merge the wrong
    columns without any error. Permuting a group's channels (producer rows and consumer columns alike) leaves
    the function unchanged exactly when the layout is right. So all groups are permuted at once (seeded), and
    only if the output moves is each group tried alone; every permutation is put back by indexing, so the
    model is restored bit for bit. Without an input on which the model gives a finite value the check is skipped.
    """
    probe = _layout_probe(model, example_inputs)
    if probe is None or not groups:
        return
    inputs, baseline = probe
    finite = torch.isfinite(baseline)
    tolerance = 1e-3 * float(baseline[finite].abs().max()) + 1e-6  # reordered sums round differently, by far less
    generator = torch.Generator().manual_seed(0)
    orders = []
    for group in groups:
        order = torch.randperm(group.channels, generator=generator)
        orders.append(order if not torch.equal(order, torch.arange(group.channels)) else order.roll(1))

    def moves(chosen: list[int]) -> bool:
        for i in chosen:
            select_channels(model, groups[i], orders[i])
        try:
            moved = float((_output_values(model, inputs)[finite] - baseline[finite]).abs().max())
        except Exception:  # a permutation keeps every shape, so this is the layout too
            moved = math.inf
        for i in reversed(chosen):
            select_channels(model, groups[i], torch.argsort(orders[i]))
        return not moved <= tolerance

    if not moves(list(range(len(groups)))):
        return
    for i, group in enumerate(groups):
        if moves([i]):
            group.reason = (
                "its channels do not reach their consumers as traced (a permute before a flatten, a channel shuffle, "
                "or a branch the tracing input did not take)"
            )


def _block_layout(module: nn.Module, role: Role, idxs: list[int], roots: list[int], n: int) -> tuple[int, str | None]:
    """Channel c must own indices [c·e, (c+1)·e) of the whole axis; return e, or why not."""
    size = module.num_features if role == "norm" else module.weight.shape[1 if role == "consumer" else 0]
    if len(idxs) != size or size % n:
        side = "input" if role == "consumer" else "output"
        return 1, f"its {side} of width {size} does not hold the group's {n} channels whole (a slice, concatenation or split)"
    expand = size // n
    expected = [i // expand for i in range(size)]
    if [r for _, r in sorted(zip(idxs, roots))] != expected:
        return 1, "its indices are not laid out channel by channel"
    return expand, None


def _map_axis(tensor: torch.Tensor, matrix: torch.Tensor, axis: int, expand: int) -> torch.Tensor:
    """Apply ``matrix`` (k×n) to the n channel blocks (each ``expand`` wide) along ``axis``."""
    moved = tensor.movedim(axis, 0)
    blocks = moved.reshape(matrix.shape[1], expand, *moved.shape[1:])
    mapped = torch.einsum("kn,ne...->ke...", matrix.to(tensor.dtype), blocks)
    return mapped.reshape(matrix.shape[0] * expand, *moved.shape[1:]).movedim(0, axis).contiguous()


def _resize_attrs(module: nn.Module, role: Role) -> None:
    """Keep the constructor attributes in step with the new weight shape."""
    if role == "norm":
        module.num_features = module.running_mean.shape[0]  # a BatchNorm without affine parameters has no weight
        return
    shape = module.weight.shape
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = shape[0], shape[1]
    elif isinstance(module, _CONVS):
        if module.groups > 1:  # depthwise (the only grouped kind a group holds): one group per channel
            module.groups = shape[0]
        module.out_channels, module.in_channels = shape[0], shape[1] * module.groups


@torch.no_grad()
def transform_group(model: nn.Module, group: ChannelGroup, producer: torch.Tensor, consumer: torch.Tensor) -> None:
    """Replace the group's n channels by k, in place: producer rows ← producer·rows, inputs ← columns·consumerᵀ.

    BatchNorm statistics are mapped like rows, so they must be standardised first
    (``standardize_norms``): then a mean of rows is the right merged statistic.
    """
    for member in group.members:
        module = model.get_submodule(member.module)
        matrix = consumer if member.role == "consumer" else producer
        for tensor_name, axis in _ROLE_TENSORS[member.role]:
            tensor = getattr(module, tensor_name, None)
            if isinstance(tensor, torch.Tensor):
                set_tensor(module, tensor_name, _map_axis(tensor.detach(), matrix, axis, member.expand))
        _resize_attrs(module, member.role)


def block_index(kept: torch.Tensor, expand: int) -> torch.Tensor:
    """The positions along an axis of the channels ``kept`` when each channel spans ``expand`` of them (a
    consumer's input columns after a flatten)."""
    return (kept[:, None] * expand + torch.arange(expand)).reshape(-1)


def select_channels(model: nn.Module, group: ChannelGroup, kept: torch.Tensor) -> None:
    """Keep only the channels ``kept`` of the group, in place, by indexing: every value stays bit for bit by
    construction, where a product with a selection matrix (``transform_group``'s way) relies on the kernel adding
    exact zeros."""
    for member in group.members:
        module = model.get_submodule(member.module)
        index = block_index(kept, member.expand)
        for tensor_name, axis in _ROLE_TENSORS[member.role]:
            tensor = getattr(module, tensor_name, None)
            if isinstance(tensor, torch.Tensor):
                set_tensor(module, tensor_name, tensor.detach().index_select(axis, index).contiguous())
        _resize_attrs(module, member.role)


@torch.no_grad()
def standardize_norms(model: nn.Module, group: ChannelGroup) -> None:
    """Fold each BatchNorm's 1/σ into its producer so every channel's running variance is 1 − eps.

    The function is unchanged: W ← W/σ, b ← b/σ, μ ← μ/σ. Afterwards channels are on a common
    scale, and averaging rows (weights, μ, γ, β) is the exact merge of their statistics.
    """
    for norm_member in group.by_role("norm"):
        norm = model.get_submodule(norm_member.module)
        producer = model.get_submodule(norm_member.source)
        sigma = torch.sqrt(norm.running_var + norm.eps)
        shape = (-1,) + (1,) * (producer.weight.dim() - 1)
        producer.weight.div_(sigma.reshape(shape).to(producer.weight.dtype))
        if producer.bias is not None:
            producer.bias.div_(sigma.to(producer.bias.dtype))
        norm.running_mean.div_(sigma)
        norm.running_var.fill_(1.0 - norm.eps)


def group_features(model: nn.Module, group: ChannelGroup) -> torch.Tensor:
    """One row per channel: [producer rows, biases | norm γ, β | consumer columns] (n × D, float64)."""
    parts = []
    for member in group.members:
        module = model.get_submodule(member.module)
        for tensor_name, axis in _ROLE_TENSORS[member.role]:
            tensor = getattr(module, tensor_name, None)
            if isinstance(tensor, nn.Parameter):
                moved = tensor.detach().movedim(axis, 0)
                parts.append(moved.reshape(group.channels, -1).double())
    return torch.cat(parts, dim=1)
