"""A ratio target for pipelines whose methods have no file-size target of their own.

One setting sizes such a pipeline's file: the sparsity of a pruning stage, the fraction of parameters a
structural stage removes, or else the bits or levels of a lone quantizer. The search moves that setting
and measures the serialised file each time, and returns the largest file the ratio allows (the least
sparsity, the most bits) that it finds. Each try compresses the model afresh.

A stage that is expensive to try may name a ``stand_in()``: a cheap, data-free method whose files are about
as large (FCPTS names magnitude pruning; fold with a repair that reads samples, dir or data, names itself
without it). The search runs on the stand-ins first, then the real stage runs at the setting found. If its
file is over the target (or more than ``REAL_TOLERANCE`` under it), the stand-in's target is scaled by the two
files' sizes, aiming at the middle of that band, and the real stage runs again (at most ``REAL_TRIES`` runs).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from netpress import codec
from netpress.budget import Budget
from netpress.compressed import CompressedModel
from netpress.errors import BudgetError

FRACTIONS = ("sparsity", "params")  # budget kinds a method takes
TOLERANCE = 0.005  # a file within 0.5 % under the target ends the search
REAL_TOLERANCE = 0.02  # ... and within 2 % for a stage that needs data, each run of which costs minutes
TRIES = 20
REAL_TRIES = 3


def searched(methods: list) -> str | None:
    """The setting a ratio search moves for ``methods``, or None where a method meets a ratio itself."""
    if any("ratio" in m.budgets for m in methods):
        return None
    for kind in FRACTIONS:
        if any(kind in m.budgets for m in methods):
            return kind
    last = methods[-1]  # a quantizer's integer fields (``ranges``): larger, larger file
    return next(iter(getattr(last, "ranges", {})), None) if getattr(last, "quantizes", False) else None


@dataclass
class _Try:
    value: float
    size: int
    compressed: CompressedModel | None  # kept only for the best file under the target


class _Tries:
    """The files tried at each value of the setting; the best is the largest under the target at a value no
    greater than ``most`` (a larger one is measured, to steer the search as before, but its stage cannot make it)."""

    def __init__(self, attempt: Callable[[float], CompressedModel], target: int, keep: bool, most: float = math.inf) -> None:
        self.attempt, self.target, self.keep, self.most = attempt, target, keep, most
        self.best: _Try | None = None
        self.sizes: dict[float, int] = {}

    def size(self, value: float) -> int:
        if value not in self.sizes:
            compressed = self.attempt(value)
            size = len(codec.to_bytes(compressed))
            self.sizes[value] = size
            if size <= self.target and value <= self.most and (self.best is None or size > self.best.size):
                self.best = _Try(value, size, compressed if self.keep else None)
        return self.sizes[value]


def _fraction(tries: _Tries, low: float, tolerance: float) -> None:
    """The least fraction in [low, 1) whose file fits, found by secant steps in the fraction (a file shrinks
    about linearly as weights or channels go) inside a shrinking bracket. A value a method refuses (more than
    it can remove) counts as too far. Where no value up to ``tries.most`` fit, that edge itself is tried last."""
    _bracket(tries, low, tolerance)
    if tries.best is None and tries.most < 1:  # the edge (the up-front check's): a refusal's advice is sized on it
        with contextlib.suppress(BudgetError):
            tries.size(tries.most)


def _bracket(tries: _Tries, low: float, tolerance: float) -> None:
    target, aim = tries.target, tries.target * (1 - tolerance / 2)
    over, over_size = low, tries.size(low)
    if over_size <= target:
        return
    fits, fits_size = 1.0, None  # nothing known to fit yet
    value = 1 - (1 - low) * target / over_size  # the file as if it were all weights
    for _ in range(TRIES):
        value = min(max(value, over + (fits - over) / 20), fits - (fits - over) / 20)
        try:
            size = tries.size(value)
        except BudgetError:
            fits, fits_size = value, None
            value = (over + fits) / 2
            continue
        if size <= target:
            fits, fits_size = value, size
            if size >= target * (1 - tolerance):
                return
        else:
            over, over_size = value, size
        if fits - over < 1e-6:
            return
        if fits_size is None:  # extrapolate from the last file over the target, as if it were all weights
            value = 1 - (1 - over) * target / over_size
        else:
            value = over + (over_size - aim) / (over_size - fits_size) * (fits - over)


def _integer(tries: _Tries, low: int, high: int, start: int) -> None:
    """The largest integer setting in [low, high] whose file fits (the file grows with it), from the method's
    own value: up by factors of 4 while the file fits, then bisection on the logarithm (a level costs about a
    bit per doubling). Large values are the slow ones (k-means with thousands of levels), so few are tried."""
    start = min(max(start, low), high)
    if tries.size(start) <= tries.target:
        low = start
        while low < high:
            larger = min(high, low * 4)
            if tries.size(larger) > tries.target:
                high = larger
                break
            low = larger
        else:
            return
    else:
        high = start
        if tries.size(low) > tries.target:
            return
    while high - low > 1:
        middle = min(max(round(math.sqrt(low * high)), low + 1), high - 1)
        low, high = (middle, high) if tries.size(middle) <= tries.target else (low, middle)


def _stand_ins(methods: list) -> list:
    return [m.stand_in() if hasattr(m, "stand_in") else m for m in methods]


def _at(chain: list, setting: str, run: Callable, value: float) -> CompressedModel:
    """``chain``'s file with ``setting`` at ``value``: a budget of that kind, or the last method's field."""
    if setting in FRACTIONS:
        return run(chain, Budget(**{setting: value}), {setting: value})
    value = int(value)
    return run([*chain[:-1], replace(chain[-1], **{setting: value})], None, {setting: value})


def smallest_file(methods: list, setting: str, run: Callable, extreme: float) -> int | None:
    """Bytes of the file at the setting's ``extreme`` (the most sparsity, the fewest bits), from the stand-ins:
    a ratio target under it is refused before any work. None where a stage needs data and has no stand-in."""
    chain = _stand_ins(methods)
    if any(m.needs != "none" for m in chain):
        return None
    return len(codec.to_bytes(_at(chain, setting, run, extreme)))


def meet_ratio(
    methods: list,
    budget: Budget,
    setting: str,
    run: Callable[[list, Budget | None, dict], CompressedModel],
    low: float = 0.0,
    high: float = 1.0,
) -> CompressedModel:
    """The file of ``methods`` at the value of ``setting`` whose file is the largest ``budget``'s ratio allows.

    ``run(methods, budget, searched)`` compresses with those methods and that budget (None: none), recording
    ``searched`` (the setting's name and value) in the file's summary. ``low``: the least fraction a fraction search
    may try (a model's own sparsity); ``high``: the most a stage can make (FCPTS: 99 %), the largest a file found
    may have (the search measures larger ones, as steps, so it takes the steps it would take without it)."""
    target = budget.target_bytes()
    stand_ins = _stand_ins(methods)
    most = high if setting in FRACTIONS else math.inf  # bits and levels have their ranges instead

    def attempt(chain: list) -> Callable[[float], CompressedModel]:
        return lambda value: _at(chain, setting, run, value)

    def search(chain: list, goal: int, tolerance: float, keep: bool) -> _Tries:
        tries = _Tries(attempt(chain), goal, keep, most)
        if setting in FRACTIONS:
            _fraction(tries, low, tolerance)
        else:
            _integer(tries, *chain[-1].ranges[setting], getattr(chain[-1], setting))
        if tries.best is None:
            smallest = min(tries.sizes.values())
            raise BudgetError(
                f"no {setting} reaches a {budget.ratio:g}x ratio (≤ {goal:,} bytes): the smallest file tried took "
                f"{smallest:,} bytes; {budget.advice(smallest)}"
            )
        return tries

    if stand_ins == methods:
        tries = search(methods, target, TOLERANCE, keep=True)
        return _with_cost(tries.best.compressed, len(tries.sizes), 0)
    # An expensive stage: size with its stand-in, then run it at the setting found.
    goal, best, runs, sizes, sized_tries = target, None, [], [], 0
    for _ in range(REAL_TRIES):
        try:
            stand_in_tries = search(stand_ins, goal, TOLERANCE, keep=False)
        except BudgetError:
            if not runs:
                raise
            break  # the stand-in cannot make the smaller file the real stage would need: its runs decide
        sized, sized_tries = stand_in_tries.best, sized_tries + len(stand_in_tries.sizes)
        if sized.value in runs:
            break
        runs.append(sized.value)
        real = _Tries(attempt(methods), target, keep=True, most=most)
        size = real.size(sized.value)
        sizes.append(size)
        if real.best is not None and (best is None or real.best.size > best.size):
            best = real.best
        if target * (1 - REAL_TOLERANCE) <= size <= target:
            break
        # The stand-in's file that would make the real stage's the middle of the accepted band: the real stage's
        # excess over its stand-in changes a little from run to run (FCPTS: by ±0.3 % on ResNet-20), so a real
        # file aimed at the target's edge lands over it half the time.
        goal = round(target * (1 - REAL_TOLERANCE / 2) * sized.size / size)
    if best is None:
        tried = ", ".join(f"{v:.6g} took {n:,} bytes" for v, n in zip(runs, sizes))
        raise BudgetError(
            f"{' + '.join(m.name for m in methods)} at {setting} {tried}, over the {target:,} bytes a {budget.ratio:g}x "
            f"ratio allows; {budget.advice(min(sizes))}"
        )
    return _with_cost(best.compressed, sized_tries, len(runs))


def _with_cost(compressed: CompressedModel, tries: int, runs: int) -> CompressedModel:
    """The search's cost in the report (not in the file): files made cheaply (the methods themselves, or their
    stand-ins), and full runs of an expensive stage."""
    compressed.details["search"] = {"tries": tries, "full_runs": runs}
    return compressed
