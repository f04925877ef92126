"""``Budget``: the one global target that drives a method's per-layer allocation."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field

from netpress.errors import BudgetError, check_whole

# The summary records the target and the setting a search found, whose digits (compressed with the rest of the
# manifest) move a file by a few bytes: a ratio the advice names leaves this many for them, so that asking for it
# works.
ADVICE_SLACK = 32


@dataclass(frozen=True)
class Budget:
    """Exactly one of:

    ``ratio``     original fp32 bytes / written file bytes (> 1);
    ``sparsity``  fraction of exact zeros over the compressible weights, in [0, 1);
    ``params``    fraction of parameters removed by a structural method, in [0, 1).
    """

    ratio: float | None = None
    sparsity: float | None = None
    params: float | None = None
    # The fp32 bytes a ratio refers to (the model before any stage); ``compress`` fills it in.
    reference_bytes: int | None = field(default=None, compare=False)
    # The source record the written file carries (a Hugging Face model's config takes about a kilobyte): a
    # method that sizes its file for a ratio sizes it with this record; ``compress`` fills it in.
    source: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        given = {k: v for k, v in self.items()}
        if len(given) != 1:
            raise BudgetError("give exactly one target: ratio, sparsity or params")
        ((kind, value),) = given.items()
        if isinstance(value, bool | str) or not isinstance(value, numbers.Real):  # "0.5" is a typo, not a target
            raise BudgetError(f"{kind} must be a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:
            raise BudgetError(f"{kind} is beyond the range of a float; give a finite target") from None
        # 30 and 30.0 are one target: the same request must give the same file, and the stored summary says 30.0.
        object.__setattr__(self, kind, value)
        if not math.isfinite(value):
            raise BudgetError(f"{kind} must be finite, got {value}")
        if kind == "ratio" and not value > 1:
            raise BudgetError(f"ratio must be > 1 (original bytes / file bytes), got {value}")
        if kind in ("sparsity", "params") and not 0 <= value < 1:
            raise BudgetError(f"{kind} must be a fraction in [0, 1), got {value}")
        if self.reference_bytes is not None:
            check_whole("reference_bytes", self.reference_bytes, 1)

    def target_bytes(self) -> int:
        """The largest file a ratio target allows: ⌊reference bytes / ratio⌋."""
        if self.ratio is None or self.reference_bytes is None:
            raise BudgetError("a byte target needs a ratio budget and the reference size of the original model")
        return int(self.reference_bytes // self.ratio)

    def advice(self, smallest: int) -> str:
        """What to ask for when the smallest file found takes ``smallest`` bytes, over the target: the largest ratio
        it meets with ``ADVICE_SLACK`` bytes to spare (rounded down to two decimals; the true limit may be a little
        higher), or that no ratio above 1 is."""
        if not self.reference_bytes:
            return "ask for a smaller ratio"
        largest = self.reference_bytes / (smallest + ADVICE_SLACK)
        if largest <= 1:
            return "no ratio above 1 is reachable: the file's fixed costs (headers, raw tensors) outweigh the model"
        return f"ask for at most {math.floor(largest * 100) / 100:g}x"

    def items(self) -> list[tuple[str, float]]:
        return [(k, v) for k, v in (("ratio", self.ratio), ("sparsity", self.sparsity), ("params", self.params)) if v is not None]

    @property
    def kind(self) -> str:
        return self.items()[0][0]

    @property
    def value(self) -> float:
        return self.items()[0][1]

    def to_dict(self) -> dict[str, float]:
        return dict(self.items())
