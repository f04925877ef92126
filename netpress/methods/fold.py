"""Model folding (Wang et al., ICLR 2025) and its structured-pruning baseline, channel-l1.

Both act on the channel groups of ``netpress.graph.groups``: per group, Ward (or k-means) on the
concatenated [producer rows | norm γ, β | consumer columns] merges channels (producers by cluster
mean, consumers by cluster sum) in ``Fold``, optionally after dropping a share of the channels of
smallest L1 norm; ``ChannelL1`` keeps the k channels of largest L1 norm of the same rows.
A ``Budget(params=P)`` is split over groups (``allocate``). Repair is a separate step (``repair``)
that both methods run: ``none``, ``ar`` (data-free variance correction), ``dir`` (BatchNorm
statistics from DeepInversion samples of the original model) or ``data`` (from calibration data).
See docs/methods/fold.md.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, replace
from typing import ClassVar, Literal

import numpy as np
import torch
from scipy.cluster.hierarchy import cut_tree, linkage
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits
from torch import nn
from torch.nn import functional as F

from netpress.budget import Budget
from netpress.data import Subset
from netpress.errors import (
    BudgetError,
    DataError,
    NetpressWarning,
    UnsupportedModelError,
    check_choice,
    check_real,
    check_seed,
    check_whole,
)
from netpress.evaluate import count_params
from netpress.graph.groups import (
    CHANNEL_LAYERS,
    UNTRACED,
    ChannelGroup,
    ParamCounter,
    channel_groups,
    check_still_runs,
    group_features,
    standardize_norms,
    transform_group,
)
from netpress.graph.surgery import conv1d_as_linear, linear_as_conv1d
from netpress.methods.base import (
    MethodResult,
    batchnorm_layers,
    check_budget,
    check_model,
    recalibrate_batchnorm,
    uncompressed_layers,
)
from netpress.progress import progress_bar

Repair = Literal["auto", "none", "ar", "dir", "data"]
REPAIRS: tuple[str, ...] = ("auto", "none", "ar", "dir", "data")
GroupAllocation = Literal["uniform", "adaptive"]
GROUP_ALLOCATIONS: tuple[str, ...] = ("uniform", "adaptive")
Clustering = Literal["kmeans", "ward"]
CLUSTERINGS: tuple[str, ...] = ("kmeans", "ward")
WARD_BLOCK = 1024  # rows of the distance matrix ward_linkage builds at a time: 8 MB per 1,024 channels


@dataclass
class GroupPlan:
    """What happened to one group: ``clusters[j]`` lists the old channels behind new channel j
    (channels in no cluster were dropped)."""

    group: ChannelGroup
    clusters: list[list[int]]
    features: torch.Tensor  # the clustered rows (n × D) before the change: the ar repair's correlations

    def matrices(self, merge: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(producer, consumer) maps: cluster mean / cluster sum when merging, else a selection."""
        producer = torch.zeros(len(self.clusters), self.group.channels, dtype=torch.float64)
        for j, members in enumerate(self.clusters):
            producer[j, members] = 1.0 / len(members)
        return producer, (producer > 0).double() if merge else producer


def check_reachable(sizes: list[int], count: ParamCounter, limit: int) -> None:
    """Refuse a parameter limit that even one channel per group exceeds, naming the largest target."""
    floor = count([1] * len(sizes))
    if floor > limit:
        raise BudgetError(
            f"even one channel per foldable group leaves {floor} parameters; {limit} were asked for: "
            f"the most this model can lose is params={math.floor(1e4 * (1 - floor / count(sizes))) / 1e4:g}"
        )


def allocate(sizes: list[int], count: ParamCounter, limit: int, allocation: str, merge_costs: list[np.ndarray]) -> list[int]:
    """Channels each group keeps so the model has at most ``limit`` parameters, with the least overshoot.

    ``uniform``: the same removed fraction p in every group, p found by bisection; groups then
    step one channel at a time from the largest p that misses the target to the smallest that
    meets it, so each group is within one channel of the uniform rounding. ``adaptive``: across
    all groups, remove first the channels whose merge raises the group's relative clustering
    error least per parameter saved (``merge_costs``: Ward merge costs, ascending), never more
    than twice the uniform fraction of a group: groups whose channels are far apart are protected.
    """
    check_reachable(sizes, count, limit)

    def kept_at(p: float) -> list[int]:
        return [max(1, n - round(p * n)) for n in sizes]

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if count(kept_at(mid)) <= limit else (mid, hi)
    kept, upper = kept_at(lo), kept_at(hi)
    if allocation == "adaptive":
        full = count(sizes)
        saved = [full - count([n - (g == i) for i, n in enumerate(sizes)]) for g in range(len(sizes))]
        floors = [max(1, n - math.ceil(2 * hi * n)) for n in sizes]
        steps = sorted(
            (float(mc[i]) / max(saved[g], 1), g) for g, mc in enumerate(merge_costs) for i in range(sizes[g] - floors[g])
        )
        greedy = list(sizes)
        for _, g in steps:
            if count(greedy) <= limit:
                return greedy
            greedy[g] -= 1
        if count(greedy) <= limit:
            return greedy
    for g in range(len(sizes)):
        if count(kept) <= limit:
            break
        kept[g] = upper[g]
    return kept


def ward_linkage(features: torch.Tensor) -> np.ndarray:
    """scipy's Ward linkage of the rows (n ≥ 2), their Euclidean distances from matrix products (float64, rows centred
    first so that |a|² + |b|² − 2a·b loses few digits), built WARD_BLOCK rows at a time into the condensed matrix
    scipy reads: scipy's own distance loop took 2–4 s of a 2,048-channel group's 2.5–4.5 s, this 0.3–0.5 s, with the
    same clusters in all 58 groups of five models compared (rows closer than about 1e-8 of their norm may merge in
    another order, at no cost)."""
    x = features.double().numpy()
    x = x - x.mean(axis=0)
    n = len(x)
    squares = np.einsum("ij,ij->i", x, x)
    condensed = np.empty(n * (n - 1) // 2)
    for start in range(0, n, WARD_BLOCK):
        stop = min(start + WARD_BLOCK, n)
        block = squares[start:stop, None] + squares[None, :] - 2 * (x[start:stop] @ x.T)
        for i in range(start, stop):
            first = i * n - i * (i + 1) // 2  # the condensed index of the pair (i, i + 1)
            condensed[first : first + n - i - 1] = block[i - start, i + 1 :]
    np.sqrt(np.maximum(condensed, 0, out=condensed), out=condensed)
    return linkage(condensed, "ward")


def ward_tree(features: torch.Tensor) -> np.ndarray:
    """``ward_linkage`` of the rows, or an empty tree for a single row (nothing to merge)."""
    return ward_linkage(features) if len(features) > 1 else np.zeros((0, 4))


def ward_merge_costs(features: torch.Tensor, tree: np.ndarray) -> np.ndarray:
    """Increase of the within-cluster sum of squares of each successive Ward merge (``tree``, the rows'
    ``ward_tree``), relative to Σ‖x‖²."""
    return tree[:, 2] ** 2 / 2 / max(float((features.double() ** 2).sum()), 1e-30)


def _groups(labels, k: int) -> list[list[int]]:
    """Channels grouped by label, as exactly ``k`` clusters: where the labels name fewer (channels with
    equal rows), the largest cluster gives up members, which costs nothing since they are equal."""
    clusters: dict[int, list[int]] = {}
    for c, label in enumerate(labels):
        clusters.setdefault(int(label), []).append(c)
    groups = list(clusters.values())
    while len(groups) < k:
        largest = max(groups, key=len)
        groups.append([largest.pop()])
    return sorted(groups)


def _kmeans_clusters(features: torch.Tensor, k: int, seed: int, n_init: int) -> list[list[int]]:
    if k >= len(features):
        return [[c] for c in range(len(features))]
    distinct, same = torch.unique(features, dim=0, return_inverse=True)
    if len(distinct) <= k:  # k-means cannot find k clusters among fewer distinct rows; equal rows belong together
        return _groups(same.tolist(), k)
    with threadpool_limits(1):  # OpenMP threads thrash on a shared machine; one thread is fast and steady
        labels = KMeans(k, n_init=n_init, random_state=seed).fit(features.numpy()).labels_
    return _groups(labels, k)


def _ward_clusters(features: torch.Tensor, k: int, tree: np.ndarray | None = None) -> list[list[int]]:
    """Exactly k clusters of Ward's agglomerative clustering (deterministic), cut from ``tree`` where the rows'
    ``ward_tree`` is already built."""
    if k >= len(features):
        return [[c] for c in range(len(features))]
    return _groups(cut_tree(ward_tree(features) if tree is None else tree, n_clusters=k).ravel(), k)


def _largest_l1(features: torch.Tensor, k: int) -> list[int]:
    """The k channels of largest L1 norm of their clustered rows, in channel order."""
    scores = features.abs().sum(dim=1)
    return sorted(torch.argsort(scores, descending=True, stable=True)[:k].tolist())


def example_inputs(input_shape: tuple[int, ...] | None, input_dtype: str, data: Subset | None) -> torch.Tensor:
    """One input to trace the model with: zeros of ``input_shape`` or the first calibration sample."""
    if input_shape is not None:
        return torch.zeros((1, *input_shape), dtype=getattr(torch, input_dtype))
    if data is not None:
        return data.dataset[data.indices[0]][0].unsqueeze(0)
    raise UnsupportedModelError(
        "tracing the channel groups needs an input: give input_shape (CLI: --data, whose samples have it)"
    )


def deep_inversion(model: nn.Module, input_shape: tuple[int, ...], samples: int, steps: int, seed: int) -> torch.Tensor:
    """Synthetic inputs whose BatchNorm input statistics match the model's running statistics.

    DeepInversion (Yin et al., CVPR 2020), small: Adam on the pixels of a batch drawn from N(0, 1),
    loss = Σ_BN ‖μ_batch − μ_run‖₂ + ‖σ²_batch − σ²_run‖₂ + cross-entropy to a random class per sample
    (drawn once, as DeepInversion fixes each image's target) + 1e-4·total variation. Bounded by ``steps``.
    """
    teacher = copy.deepcopy(model).eval()
    teacher.requires_grad_(False)
    norms = batchnorm_layers(teacher)
    losses: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: torch.Tensor) -> None:
        x = inputs[0].transpose(0, 1).reshape(inputs[0].shape[1], -1)
        losses.append(torch.norm(x.mean(1) - module.running_mean) + torch.norm(x.var(1, unbiased=False) - module.running_var))

    handles = [m.register_forward_hook(hook) for m in norms]
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((samples, *input_shape), generator=generator).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=0.1)
    try:
        with progress_bar() as progress:
            task = progress.add_task("DeepInversion samples", total=steps)
            labels = None  # one target class per sample for the whole run, drawn once the class count is known
            for step in range(steps):
                losses.clear()
                out = teacher(x)
                if step == 0 and out.dim() == 2:
                    labels = torch.randint(0, out.shape[1], (samples,), generator=generator)
                loss = torch.stack(losses).sum()
                if labels is not None:
                    loss = loss + F.cross_entropy(out, labels)
                diffs = [x.diff(dim=d).abs().mean() for d in range(2, x.dim())]
                loss = loss + 1e-4 * sum(diffs, torch.zeros(()))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                progress.update(task, advance=1)
    finally:
        for h in handles:
            h.remove()
    return x.detach()


@torch.no_grad()
def repair_ar(model: nn.Module, plans: list[GroupPlan]) -> None:
    """Fold-AR: scale each merged BatchNorm γ by √(n_c / (1 + (n_c − 1)·ρ̄_c)).

    ρ̄_c is the mean pairwise cosine of the members' clustered rows (standardised producer rows, γ, β
    and consumer columns, as in the paper's code), clipped to [0, 1] so the correction never exceeds
    √n_c. Producer rows alone were measured to overshoot more (docs/methods/fold.md).
    """
    for plan in plans:
        rows = F.normalize(plan.features, dim=1)
        for norm_member in plan.group.by_role("norm"):
            norm = model.get_submodule(norm_member.module)
            scale = torch.ones(len(plan.clusters), dtype=torch.float64)
            for j, members in enumerate(plan.clusters):
                n = len(members)
                if n > 1:
                    cos = rows[members] @ rows[members].T
                    rho = float((cos.sum() - n) / (n * (n - 1)))
                    scale[j] = math.sqrt(n / (1 + (n - 1) * min(max(rho, 0.0), 1.0)))
            if norm.weight is not None:
                norm.weight.mul_(scale.to(norm.weight.dtype))
            else:  # no γ to scale (affine=False): the same change of the output, through σ = √(var + eps)
                norm.running_var.copy_((norm.running_var + norm.eps) / scale.to(norm.running_var.dtype) ** 2 - norm.eps)


def repair(
    model: nn.Module,
    plans: list[GroupPlan],
    kind: str,
    inputs: torch.Tensor | None = None,
) -> None:
    """Repair a structurally changed model in place; ``inputs``: calibration data or DeepInversion samples."""
    if kind == "ar":
        repair_ar(model, plans)
    elif kind in ("dir", "data"):
        if inputs is None:
            raise DataError(f"the {kind} repair needs inputs to re-estimate BatchNorm statistics")
        recalibrate_batchnorm(model, inputs)


def _foldable(groups: list, model: nn.Module) -> list:
    """The channel groups (of ``model``) that can change, or an error naming why none can."""
    foldable = [g for g in groups if g.reason is None]
    if not foldable:
        reasons = "; ".join(f"{g.name}: {g.reason}" for g in groups)
        left = uncompressed_layers(model, CHANNEL_LAYERS)
        others = ", ".join(f"{name or 'the model itself'} ({layer['type']})" for name, layer in left.items())
        raise UnsupportedModelError(
            (f"no channel group can be changed ({reasons})" if groups else "the model has no Linear or Conv layer")
            + (f"; fold and channel-l1 change Linear and Conv layers only, not {others}" if others else "")
        )
    return foldable


def _params_limit(before: int, budget: Budget) -> int:
    """The most parameters the changed model may keep, of the ``before`` it has."""
    return before - round(budget.params * before)


@dataclass
class _GroupReduction:
    """Shared pipeline: trace groups, standardise BatchNorms, allocate the budget, change groups, repair."""

    repair: Repair = "none"
    allocation: GroupAllocation = "uniform"
    input_shape: tuple[int, ...] | None = None
    input_dtype: str = "float32"
    seed: int = 0
    dir_samples: int = 256
    dir_steps: int = 100
    budgets: ClassVar[tuple[str, ...]] = ("params",)
    merge: ClassVar[bool] = True
    structural: ClassVar[bool] = True  # changes layer shapes: compress() refuses it after a weight stage

    def __post_init__(self) -> None:
        check_seed(self.seed)
        check_whole("dir_samples", self.dir_samples, 1)
        check_whole("dir_steps", self.dir_steps, 1)
        shape = self.input_shape
        whole = isinstance(shape, (tuple, list)) and all(not isinstance(d, bool) and isinstance(d, int) and d > 0 for d in shape)
        if shape is not None and not (whole and shape):
            raise BudgetError(f"input_shape is one sample's shape without the batch, e.g. (1, 28, 28); got {shape!r}")
        if not isinstance(getattr(torch, str(self.input_dtype), None), torch.dtype):
            raise BudgetError(f"input_dtype must name a torch dtype such as 'float32' or 'int64', got {self.input_dtype!r}")
        check_choice("repair", self.repair, REPAIRS)
        check_choice("allocation", self.allocation, GROUP_ALLOCATIONS)

    @property
    def needs(self) -> str:
        """Only the ``data`` repair reads data; every other setting is data-free."""
        return "calibration" if self.repair == "data" else "none"

    def stand_in(self) -> _GroupReduction:
        """The same reduction without a repair that reads samples: such a repair changes BatchNorm values, not the
        file's size, and costs most of the time (DeepInversion's steps, passes over the calibration set), so a ratio
        search sizes with this first. ``ar`` costs next to nothing and stays (``auto`` runs at most it)."""
        return self if self.repair in ("auto", "none", "ar") else replace(self, repair="none")

    def clusters(self, features: torch.Tensor, k: int, tree: np.ndarray | None = None) -> list[list[int]]:
        """``k`` clusters of the group's channels (their ``features`` rows); ``tree`` is the rows' ``ward_tree`` where
        the adaptive allocation built it, so that Ward clustering does not build it again."""
        raise NotImplementedError

    def check_target(self, model: nn.Module, budget: Budget | None) -> None:
        """Refuse a params target no allocation reaches, before any work (sweep checks every point). A model
        traced with its first calibration sample (no ``input_shape``) is checked when that sample is loaded."""
        budget = check_budget(self, budget)
        check_model(model)  # an empty layer, NaN weights: named before the trace stumbles on them
        if self.input_shape is not None:
            copied = copy.deepcopy(model).eval()
            conv1d_as_linear(copied)
            groups = _foldable(channel_groups(copied, example_inputs(self.input_shape, self.input_dtype, None)), copied)
            limit = _params_limit(count_params(model), budget)
            check_reachable([g.channels for g in groups], ParamCounter(copied, groups), limit)

    def reduce(self, model: nn.Module, budget: Budget, example: torch.Tensor) -> tuple[nn.Module, list[GroupPlan], list[dict]]:
        """The structural change without repair: a smaller copy of ``model``, the plans, report rows."""
        reduced = copy.deepcopy(model).eval()
        transposed = conv1d_as_linear(reduced)  # GPT-2's Conv1D layers, changed as the Linear layers they compute
        groups = channel_groups(reduced, example)
        foldable = _foldable(groups, reduced)
        for group in foldable:
            standardize_norms(reduced, group)
        before = count_params(model)
        features = [group_features(reduced, g) for g in foldable]
        trees = [ward_tree(f) if self.allocation == "adaptive" else None for f in features]
        merge_costs = [ward_merge_costs(f, t) for f, t in zip(features, trees)] if self.allocation == "adaptive" else []
        limit = _params_limit(before, budget)
        kept = allocate([g.channels for g in foldable], ParamCounter(reduced, foldable), limit, self.allocation, merge_costs)
        plans, rows = [], []
        with progress_bar() as progress:
            task = progress.add_task(f"{self.name}: channel groups", total=len(foldable))
            for group, feats, k, tree in zip(foldable, features, kept, trees):
                plan = GroupPlan(group, self.clusters(feats, k, tree), feats)
                transform_group(reduced, group, *plan.matrices(self.merge))
                plans.append(plan)
                rows.append({**group.row(), "channels_after": k, "folded": k < group.channels})
                progress.update(task, advance=1)
        rows += [g.row() for g in groups if g.reason is not None]
        # Rows in the model's layer order (tracing order puts e.g. fc2 before fc1), for reports and plots.
        position = {name: i for i, (name, _) in enumerate(model.named_modules())}
        rows.sort(key=lambda r: min((position.get(p, len(position)) for p in r["producers"]), default=len(position)))
        advice = (
            f"; {self.name} supports channels that flow through Linear, Conv and BatchNorm layers and element-wise operations"
        )
        changed = [f"{r['group']} {r['channels']}→{r['channels_after']}" for r in rows if r.get("folded")]
        linear_as_conv1d(reduced, transposed)
        check_still_runs(reduced, example, f"after {self.name} ({', '.join(changed)} channels)", advice)
        after = count_params(reduced)
        rows.append({"group": "total", "params_before": before, "params_after": after, "params_removed": 1 - after / before})
        return reduced, plans, rows

    def applied_repair(self, model: nn.Module) -> str:
        """The repair ``apply`` runs: ``auto`` is the data-free ``ar`` where there are BatchNorm statistics to
        correct, else ``none`` (a model without BatchNorm has nothing for a repair to change)."""
        if self.repair != "auto":
            return self.repair
        return "ar" if batchnorm_layers(model) else "none"

    def apply(self, model: nn.Module, data: Subset | None = None, budget: Budget | None = None) -> MethodResult:
        budget = check_budget(self, budget)
        check_model(model)
        kind = self.applied_repair(model)
        if kind != "none" and not batchnorm_layers(model):
            raise UnsupportedModelError(
                f"the {kind} repair corrects BatchNorm statistics and this model has no BatchNorm layer with "
                "running statistics; use repair='none' (CLI: --repair none)"
            )
        if kind == "data" and data is None:
            raise DataError("the data repair needs a calibration subset of the training split")
        example = example_inputs(self.input_shape, self.input_dtype, data)
        reduced, plans, rows = self.reduce(model, budget, example)
        untraced = [r["group"] for r in rows if r.get("reason") == UNTRACED]
        if untraced and any(r.get("folded") for r in rows):
            warnings.warn(
                f"{', '.join(untraced)}: not reached by tracing with inputs of shape {tuple(example.shape[1:])}, so "
                f"{'its' if len(untraced) == 1 else 'their'} inputs keep their old width; if the model runs "
                f"{'it' if len(untraced) == 1 else 'them'} on other inputs, the {self.name} model will fail there",
                NetpressWarning,
                stacklevel=2,
            )
        inputs = None
        if kind == "data":
            inputs = data.tensors()[0]
        elif kind == "dir":
            inputs = deep_inversion(model, tuple(example.shape[1:]), self.dir_samples, self.dir_steps, self.seed)
        repair(reduced, plans, kind, inputs)
        rows[-1]["repair"] = kind
        return MethodResult(reduced.eval(), rows=rows)


@dataclass
class Fold(_GroupReduction):
    """Model folding: merge similar channels of each group.

    ``repair``: ``auto`` (default) is ``ar``, data-free, on a model with BatchNorm statistics (with the adaptive
    allocation at or above no repair at 13 of 18 measured cells, at most 0.25 point below, up to 38 points above),
    else ``none``; the last report row says which ran. ``none``, ``ar``, ``dir`` (DeepInversion samples) and ``data`` as named.
    ``allocation``: ``adaptive`` (default) removes channels first where merging them costs least, per
    parameter saved, so groups of dissimilar channels keep more of them; ``uniform`` (the paper's) removes
    the same share of every group. With no repair, at 40 % of the parameters removed, adaptive took ResNet-20
    from 64 % accuracy to 86 % and MobileNetV2 from 34 % to 91 % (2,000 test images; docs/methods/fold.md).
    ``clustering``: ``ward`` (default; agglomerative, the paper's LLM code; deterministic) or ``kmeans`` (the
    paper's CNN code; ``n_init`` seeded k-means++ restarts). Both minimise the within-cluster sum of squares; with
    the k near n that fold keeps, Ward's was lower in every group measured and took seconds where k-means took
    minutes on 2,048-channel layers (docs/methods/fold.md). ``prune_fraction``: the share of each group's removed
    channels that are dropped outright, smallest L1 norm first, before the rest are folded: a channel that
    carries almost nothing costs less dropped than averaged into a live one (on MiniLM's FFN
    neurons, 0.5 turns fold from worse than magnitude pruning into better; docs/methods/fold.md).
    """

    repair: Repair = "auto"
    allocation: GroupAllocation = "adaptive"
    n_init: int = 3
    clustering: Clustering = "ward"
    prune_fraction: float = 0.0
    name: ClassVar[str] = "fold"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("clustering", self.clustering, CLUSTERINGS)
        check_real("prune_fraction", self.prune_fraction, 0.0, maximum=1.0)
        check_whole("n_init", self.n_init, 1)

    def clusters(self, features: torch.Tensor, k: int, tree: np.ndarray | None = None) -> list[list[int]]:
        n = len(features)
        live = _largest_l1(features, n - round(self.prune_fraction * (n - k)))
        kept = features[live]
        if self.clustering == "ward":
            clusters = _ward_clusters(kept, k, tree if len(live) == n else None)  # a tree of all the rows
        else:
            clusters = _kmeans_clusters(kept, k, self.seed, self.n_init)
        return sorted([live[i] for i in members] for members in clusters)


@dataclass
class ChannelL1(_GroupReduction):
    """Structured pruning (data-free unless repair="data"): keep each group's channels of largest L1 norm (the
    groups fold uses)."""

    name: ClassVar[str] = "channel-l1"
    merge: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.repair in ("ar", "auto"):  # a silently ignored setting is a wrong result
            raise BudgetError(
                f"the {self.repair} repair corrects merged channels and channel-l1 merges none; use none, dir or data"
            )

    def clusters(self, features: torch.Tensor, k: int, tree: np.ndarray | None = None) -> list[list[int]]:
        return [[c] for c in _largest_l1(features, k)]
