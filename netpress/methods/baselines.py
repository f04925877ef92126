"""Data-free baselines every other method must beat: magnitude pruning, uniform and k-means quantization."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import nn

from netpress.budget import Budget
from netpress.codec.codes import Codes, SparseValues, table_of_each_weight
from netpress.data import Subset
from netpress.errors import BudgetError, check_choice, check_flag, check_whole
from netpress.methods.base import (
    MethodResult,
    all_parts,
    apply_by_layer,
    check_budget,
    check_model,
    check_not_below_zeros,
    layer_parts,
    one_at_a_time,
    per_weight,
    pruned_row,
    split_exact,
    target_zeros,
)

Allocation = Literal["global", "uniform", "erk", "lamp"]
ALLOCATIONS: tuple[str, ...] = ("global", "uniform", "erk", "lamp")


def _erk_prune_weights(weights: list[torch.Tensor], sparsity: float) -> list[float]:
    """Erdős–Rényi-kernel densities (∝ sum of dims / product of dims, capped at 1) as prune counts."""
    raw = [sum(w.shape) / w.numel() for w in weights]
    sizes = [w.numel() for w in weights]
    keep_total = (1 - sparsity) * sum(sizes)
    dense: set[int] = set()
    while True:
        free = [i for i in range(len(weights)) if i not in dense]
        if not free:  # a target at or near 0 keeps every layer dense
            break
        budget = keep_total - sum(sizes[i] for i in dense)
        eps = budget / sum(raw[i] * sizes[i] for i in free)
        newly = {i for i in free if eps * raw[i] > 1}
        if not newly:
            break
        dense |= newly
    return [0.0 if i in dense else sizes[i] * (1 - eps * raw[i]) for i in range(len(weights))]


def _lamp_scores(w: torch.Tensor) -> torch.Tensor:
    """LAMP score of each weight: w² over the sum of w² of all weights at least as large in its layer."""
    sq = w.detach().reshape(-1).double() ** 2
    order = torch.argsort(sq, stable=True)
    sorted_sq = sq[order]
    tail = torch.flip(torch.cumsum(torch.flip(sorted_sq, [0]), 0), [0])
    scores = torch.empty_like(sq)
    scores[order] = sorted_sq / tail.clamp_min(1e-300)
    return scores


def smallest_mask(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Boolean mask of the ``count`` lowest scores (ties broken by position, so counts are exact): the
    first ``count`` of a stable sort, found by selection, which costs a sixth of the sort on a large layer."""
    flat = scores.reshape(-1)
    if count <= 0 or count >= flat.numel():
        return torch.full(scores.shape, count > 0, dtype=torch.bool)
    kth = torch.kthvalue(flat, count).values
    mask = flat < kth
    mask[(flat == kth).nonzero().reshape(-1)[: count - int(mask.sum())]] = True
    return mask.reshape(scores.shape)


def reachable_zeros(weights: list[torch.Tensor], sparsity: float) -> list[int]:
    """The zeros each layer already has, once the target is known to keep a weight and to ask for no
    fewer zeros than the model has; else the error that says which target would do."""
    total = sum(w.numel() for w in weights)
    if target_zeros(sparsity, total) >= total:
        raise BudgetError(
            f"sparsity {sparsity} removes all {total:,} weights of this model (it rounds up); the largest target "
            f"that keeps one is {math.floor((total - 1) / total * 1e9) / 1e9:.9f}"
        )
    return check_not_below_zeros(sparsity, weights)


def prune_counts(weights: list[torch.Tensor], sparsity: float, allocation: str) -> list[int]:
    """How many weights to remove per layer so the total is exactly ⌈sparsity · N⌉."""
    zeros = reachable_zeros(weights, sparsity)
    sizes = [w.numel() for w in weights]
    total = target_zeros(sparsity, sum(sizes))
    # A per-layer allocation keeps one weight in every layer whenever the target leaves room:
    # rounding must not disconnect a small layer.
    caps = [n - 1 for n in sizes] if total <= sum(sizes) - len(sizes) else sizes
    if allocation == "uniform":
        return split_exact(total, [float(n) for n in sizes], caps, zeros)
    if allocation == "erk":
        return split_exact(total, _erk_prune_weights(weights, sparsity), caps, zeros)
    # Ranking by score: a zero scores lowest (magnitude 0, LAMP 0), so it is always among the chosen.
    score_fn = _lamp_scores if allocation == "lamp" else _magnitudes
    return _lowest_per_layer(weights, total, score_fn)


def _magnitudes(w: torch.Tensor) -> torch.Tensor:
    """Global magnitude pruning's score: |w|, exact in the weights' own dtype (no float64 copy)."""
    return w.detach().reshape(-1).abs()


def _lowest_per_layer(weights: list[torch.Tensor], total: int, score_fn: Callable[[torch.Tensor], torch.Tensor]) -> list[int]:
    """How many of each layer's weights are among the ``total`` lowest scores of the whole model, ties
    broken by position (``smallest_mask`` over all layers at once), one layer's scores in memory at a time.

    The float32 k-th score is found by radix selection on its bit pattern (an order-keeping integer for
    scores ≥ 0): one pass counts the high 16 bits of every layer's scores, a second the low 16 bits of
    those in the chosen high bucket. Rounding to float32 keeps the order (a < b gives f(a) ≤ f(b)), so
    every score below the float32 k-th is chosen, every one above is not, and only the few equal to it
    are ranked by their exact scores. No copy of the model's scores is made, so a model larger than
    memory allows twice over can still be pruned by a global ranking (DESIGN §8)."""
    sizes = [w.numel() for w in weights]
    if total <= 0 or total >= sum(sizes):
        return [n if total > 0 else 0 for n in sizes]

    def bit_patterns(w: torch.Tensor) -> torch.Tensor:
        return score_fn(w).float().view(torch.int32)  # ≥ 0, finite: ordered like the scores

    high = [torch.bincount(bit_patterns(w) >> 16, minlength=1 << 15) for w in one_at_a_time(weights)]
    bucket, before = _bucket_of(torch.stack(high).sum(0), total)
    low = []
    for w in one_at_a_time(weights):
        bits = bit_patterns(w)
        low.append(torch.bincount(bits[(bits >> 16) == bucket] & 0xFFFF, minlength=1 << 16))
    value, _ = _bucket_of(torch.stack(low).sum(0), total - before)
    kth = (bucket << 16) | value
    below = [int(h[:bucket].sum()) + int(lo[:value].sum()) for h, lo in zip(high, low)]
    tied = [int(lo[value]) for lo in low]
    if sum(below) + sum(tied) == total:  # every tie is chosen: no exact ranking needed
        return [b + t for b, t in zip(below, tied)]
    none = torch.zeros(0, dtype=torch.float64)
    exact = torch.cat([score_fn(w)[bit_patterns(w) == kth].double() if t else none for w, t in zip(weights, tied)])
    chosen = torch.split(smallest_mask(exact, total - sum(below)), tied)
    return [b + int(c.sum()) for b, c in zip(below, chosen)]


def _bucket_of(counts: torch.Tensor, rank: int) -> tuple[int, int]:
    """The bucket holding the ``rank``-th smallest (1-based) of a histogram, and how many lie below it."""
    reached = torch.cumsum(counts, 0)
    bucket = int(torch.searchsorted(reached, torch.tensor(rank, dtype=reached.dtype)))
    return bucket, int(reached[bucket - 1]) if bucket else 0


@dataclass
class MagnitudePruning:
    """Remove the smallest-magnitude weights of every Linear/Conv/Embedding layer to an exact global sparsity.

    ``allocation`` decides how many weights each layer loses: one global magnitude threshold
    (``global``), the same fraction per layer (``uniform``), Erdős–Rényi-kernel densities (``erk``),
    or layer-adaptive magnitude scores (``lamp``). Surviving weights keep their float values.
    """

    allocation: Allocation = "global"
    name: ClassVar[str] = "magnitude"
    needs: ClassVar[str] = "none"
    budgets: ClassVar[tuple[str, ...]] = ("sparsity",)

    def __post_init__(self) -> None:
        check_choice("allocation", self.allocation, ALLOCATIONS)

    def check_target(self, model: nn.Module, budget: Budget | None) -> None:
        """Refuse a sparsity no file can have, before any work (sweep checks every point)."""
        reachable_zeros(all_parts(check_model(model)), check_budget(self, budget).sparsity)

    def apply(self, model: nn.Module, data: Subset | None = None, budget: Budget | None = None) -> MethodResult:
        return apply_by_layer(self, model, budget)

    def plan(self, weights: dict[str, torch.Tensor], budget: Budget | None) -> list[list[int]]:
        """How many weights each layer loses (per part of a weight that stacks several, ``part_counts``): the one
        decision that reads the whole model."""
        return per_weight(prune_counts(all_parts(weights), check_budget(self, budget).sparsity, self.allocation), weights)

    def code_layer(self, name: str, weight: torch.Tensor, counts: list[int]) -> tuple[SparseValues, dict]:
        mask = torch.cat([smallest_mask(part.abs(), c) for part, c in zip(layer_parts(weight, len(counts)), counts)])
        return SparseValues.from_tensor(weight.masked_fill(mask, 0.0)), pruned_row(name, weight, counts)


class _LayerByLayer:
    """A quantizer with nothing to decide over the whole model: each layer is coded by itself, one at a time, with
    the count ``ranges`` names (bits, levels) checked where the config is built."""

    ranges: ClassVar[dict[str, tuple[int, int]]]

    def _check_count(self, name: str) -> None:
        check_whole(name, getattr(self, name), *self.ranges[name])

    def apply(self, model: nn.Module, data: Subset | None = None, budget: Budget | None = None) -> MethodResult:
        return apply_by_layer(self, model, budget)

    def plan(self, weights: dict[str, torch.Tensor], budget: Budget | None) -> list[None]:
        check_budget(self, budget, required=False)
        return [None] * len(weights)


@dataclass
class UniformQuantization(_LayerByLayer):
    """Symmetric uniform quantization to ``bits`` bits (2^bits − 1 levels, zero exact).

    One scale per tensor, per output channel with ``per_channel``, or, instead, per run of about
    ``group_size`` consecutive weights of an output channel (⌈n / group_size⌉ runs of near-equal length; a
    channel with fewer weights is one run): at 4 bits one outlier then coarsens the grid of its group only, for
    one scale per group in the file (float16 where the scales fit its range). ``clip="max"`` spans the
    largest magnitude; ``"mse"`` clips it where the squared rounding error is least (the ratios in
    ``MSE_CLIP_RATIOS``), which helps at 4–5 bits for the same reason. Zeros stay zero, so it can follow a pruning method.
    """

    bits: int = 8
    per_channel: bool = False
    clip: str = "max"
    group_size: int | None = None
    name: ClassVar[str] = "uniform"
    needs: ClassVar[str] = "none"
    budgets: ClassVar[tuple[str, ...]] = ()
    quantizes: ClassVar[bool] = True  # its codes are final: compress() refuses a stage after it
    ranges: ClassVar[dict[str, tuple[int, int]]] = {"bits": (2, 16)}  # also what a ratio search may choose

    def __post_init__(self) -> None:
        self._check_count("bits")
        check_flag("per_channel", self.per_channel)
        check_choice("clip", self.clip, CLIPS)
        if self.group_size is not None:
            check_whole("group_size", self.group_size, 1)
            if self.per_channel:
                raise BudgetError(
                    "give per_channel (--per-channel) or group_size (--group-size), not both: groups already have "
                    "scales of their own within each channel"
                )

    def plan(self, weights: dict[str, torch.Tensor], budget: Budget | None) -> list[None]:
        """Refuse, before any layer is coded, level tables this machine cannot build: a table of 2^bits float32
        levels per scale (16 bits with a scale per weight would take 57 GiB for LeNet-300's first layer)."""
        limit = _memory_bytes() // 2
        for w in weights.values():
            table_bytes = self._tables(w) * 2**self.bits * 4
            if table_bytes > limit:
                fix = (
                    "fewer bits or larger groups (a group of g weights takes at most g values)"
                    if self.group_size
                    else "fewer bits"
                )
                raise BudgetError(
                    f"{self.bits} bits with {self._tables(w):,} scales for a layer of {w.numel():,} weights needs level "
                    f"tables of {table_bytes / 2**30:.1f} GiB, more than half this machine's memory; use {fix}"
                )
        return super().plan(weights, budget)

    def _tables(self, w: torch.Tensor) -> int:
        """How many scales ``w`` gets: 1, one per output channel, or ⌈n / group_size⌉ per channel of n weights."""
        if self.group_size is None:
            return w.shape[0] if self.per_channel else 1
        return w.shape[0] * -(-(w.numel() // w.shape[0]) // self.group_size)

    def code_layer(self, name: str, weight: torch.Tensor, setting: None = None) -> tuple[Codes, dict]:
        top = 2 ** (self.bits - 1) - 1
        grid = torch.arange(-top, top + 1, dtype=torch.float32)
        tables = self._tables(weight)
        index = table_of_each_weight(tables, tuple(weight.shape))
        values = weight.reshape(-1)
        scale = _scales(_runs_as_rows(values, index, tables), top, self.clip)
        if self.group_size is not None:
            scale = _float16_if_in_range(scale, top)
        symbols = (torch.round(values / scale[index, 0]).clamp(-top, top) + top).to(torch.int32)
        levels = (grid[None, :] * scale).to(torch.float32)
        levels[:, top] = 0.0
        per_tensor = self.group_size is None and not self.per_channel
        codes = Codes(symbols.reshape(weight.shape), levels[0] if per_tensor else levels, zero=top)
        row = {"name": name, "shape": list(weight.shape), "params": weight.numel(), "bits": self.bits, "scales": tables}
        return codes, {**row, "sparsity": codes.sparsity()}


CLIPS = ("max", "mse")
MSE_CLIP_RATIOS = tuple(r / 100 for r in range(100, 35, -5))  # 1.00, 0.95, …, 0.40 of the largest magnitude
FLOAT16_TINIEST = 2.0**-24  # float16's smallest subnormal: every multiple of it below 2⁻¹⁴ is a float16


def _float16_if_in_range(scale: torch.Tensor, top: int) -> torch.Tensor:
    """Group scales as float16 values, which the codec then stores in half the bytes: rounded to the nearest
    (a relative change of at most 2⁻¹¹), or to the next float16 up where the nearest would clip the group's largest
    weight (from 12 bits on, where top · 2⁻¹¹ > ½); a scale below float16's normal range rounded up to a subnormal,
    so a group of tiny weights is never clipped and costs the others nothing (it kept the whole table in float32).
    Kept in float32 where a scale is beyond float16's largest, or where a subnormal's coarse step would move a
    scale by more than 2⁻¹⁰ of the tensor's largest one (a tensor whose weights are all tiny)."""
    half16 = scale.half()
    half = half16.float()
    if not bool(torch.isfinite(half).all()):
        return scale
    up = torch.nextafter(half16, torch.full_like(half16, float("inf"))).float()
    half = torch.where(half * (top + 0.5) <= scale * top, up, half)
    rounded = torch.where(half >= 2**-14, half, torch.ceil(scale / FLOAT16_TINIEST) * FLOAT16_TINIEST)
    return scale if bool(((rounded - scale).abs() > 2**-10 * scale.max()).any()) else rounded


def _memory_bytes() -> int:
    """This machine's physical memory (unbounded where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return 1 << 62


def _runs_as_rows(values: torch.Tensor, index: torch.Tensor, tables: int) -> torch.Tensor:
    """The weights of each table as one row, zero-padded to the longest run (a zero changes no scale)."""
    counts = torch.bincount(index, minlength=tables)
    position = torch.arange(values.numel()) - (torch.cumsum(counts, 0) - counts)[index]
    rows = values.new_zeros(tables, int(counts.max()))
    rows[index, position] = values
    return rows


def _scales(flat: torch.Tensor, top: int, clip: str) -> torch.Tensor:
    """One scale per row of ``flat`` for the grid −top…top: the row's largest magnitude, or with ``mse`` the
    clipped one of least squared error (ties keep the larger, so an exact grid is never clipped)."""
    amax = flat.abs().amax(dim=1, keepdim=True)
    best = amax / top
    if clip == "mse":  # an all-zero row gives NaN errors, never "better": it keeps the fallback below
        best_error = torch.full_like(amax, float("inf"))
        for ratio in MSE_CLIP_RATIOS:
            scale = amax * ratio / top
            error = ((torch.round(flat / scale).clamp(-top, top) * scale - flat) ** 2).sum(dim=1, keepdim=True)
            better = error < best_error
            best, best_error = torch.where(better, scale, best), torch.where(better, error, best_error)
    return torch.where(best > 0, best, torch.ones_like(best))


def kmeans_1d(values: torch.Tensor, clusters: int, iterations: int = 30) -> torch.Tensor:
    """Lloyd's k-means on a 1-D sample from a linear initialisation (Deep Compression's); sorted centroids."""
    lo, hi = float(values.min()), float(values.max())
    centroids = torch.linspace(lo, hi, clusters, dtype=torch.float64)
    x = values.double()
    for _ in range(iterations):
        assign = torch.bucketize(x, (centroids[1:] + centroids[:-1]) / 2)
        sums = torch.zeros(clusters, dtype=torch.float64).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=clusters)
        updated = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return torch.unique(centroids.float())


@dataclass
class KMeansQuantization(_LayerByLayer):
    """Per-layer weight sharing: the non-zero weights of each layer take ``levels − 1`` k-means
    centroids, zero stays exact (Han et al., Deep Compression). Follows a pruning method. At least 3 levels:
    with 2, every non-zero weight of a layer would take one value, whatever its sign."""

    levels: int = 16
    name: ClassVar[str] = "kmeans"
    needs: ClassVar[str] = "none"
    budgets: ClassVar[tuple[str, ...]] = ()
    quantizes: ClassVar[bool] = True  # its codes are final: compress() refuses a stage after it
    ranges: ClassVar[dict[str, tuple[int, int]]] = {"levels": (3, 65536)}  # also what a ratio search may choose

    def __post_init__(self) -> None:
        why = " (zero and a value of each sign; with 2, every non-zero weight of a layer would take one value)"
        check_whole("levels", self.levels, *self.ranges["levels"], why=why)

    def code_layer(self, name: str, weight: torch.Tensor, setting: None = None) -> tuple[Codes, dict]:
        survivors = weight[weight != 0]
        distinct = torch.unique(survivors)  # few enough (a quantized input): the exact codebook already
        values = weight
        if len(distinct) > self.levels - 1:
            centroids = kmeans_1d(survivors, self.levels - 1)
            nearest = torch.bucketize(weight.reshape(-1), (centroids[1:] + centroids[:-1]) / 2)
            values = torch.where(weight != 0, centroids[nearest].reshape(weight.shape), torch.zeros_like(weight))
            distinct = torch.unique(values[values != 0])
        # Only the levels some weight uses (an empty cluster would cost table bytes and alphabet), and zero, which
        # ``levels`` counts (the CLI's "including zero"): on a model without zeros it is one unused entry.
        codes = Codes.from_values(values, torch.cat([torch.zeros(1), distinct]))
        row = {"name": name, "shape": list(weight.shape), "params": weight.numel(), "levels": codes.num_levels}
        return codes, {**row, "sparsity": codes.sparsity()}
