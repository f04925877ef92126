"""The size of the file a method's codes will make, measured before the pipeline writes it.

A method that meets a ratio target (L², soft weight-sharing, self-compression) sizes its file itself: it serialises the model's
state with its codes, a summary as long as the final one, and the source record, exactly as ``compress``
will, and keeps ``SUMMARY_ALLOWANCE`` bytes free for what it cannot see.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

import netpress
from netpress.budget import Budget
from netpress.codec import to_bytes
from netpress.codec.codes import Codes
from netpress.compressed import CompressedModel, fp32_bytes, stored_tensors
from netpress.data import Subset
from netpress.errors import BudgetError
from netpress.methods.base import Method, check_budget, check_model, method_record

# Bytes kept free for what the method cannot see when it sizes the file: other methods' entries in
# the stored summary.
SUMMARY_ALLOWANCE = 192


def with_reference(method: Method, budget: Budget | None, model: nn.Module) -> Budget | None:
    """The budget checked for ``method``, with the fp32 size of ``model`` as the reference a ratio refers to
    when ``compress`` has not set it (a method called on its own)."""
    budget = check_budget(method, budget)
    if budget is not None and budget.reference_bytes is None:
        budget = replace(budget, reference_bytes=fp32_bytes(model))
    return budget


# The calibration record of a file sized before its subset is drawn (an up-front check): as long as any real one, so
# the check never passes a ratio that the run, and the advice it gives, would then refuse.
UNDRAWN_CALIBRATION = {"n": 10**6, "seed": 2**31}


def refuse_unreachable(method: Method, model: nn.Module, budget: Budget | None, zero_codes: Callable[[dict], dict]) -> None:
    """A method's ``check_target`` for an optional ratio: refuse one that even ``zero_codes(weights)``, the
    method's smallest file, does not meet, before any data is loaded or work done (sweep checks every point)."""
    budget = with_reference(method, budget, model)
    if budget is not None:
        FileSizer(model, method, budget, None).check_reachable(zero_codes(check_model(model)))


class FileSizer:
    """Bytes of the file ``compress`` will write for ``model``'s current state with a method's codes.

    ``constants``: ``{state-dict name: value}`` of tensors the method made constant (BatchNorm statistics
    absorbed into the affine weights), stored as one-level codes of a few bytes each."""

    def __init__(
        self,
        model: nn.Module,
        method: Method,
        budget: Budget,
        data: Subset | None,
        raw_dtype: str = "fp32",
        constants: dict[str, float] | None = None,
    ) -> None:
        self.model, self.budget, self.raw_dtype = model, budget, raw_dtype
        self.target = budget.target_bytes()
        calibration = {"n": len(data.indices), "seed": data.seed} if data is not None else UNDRAWN_CALIBRATION
        self.summary = {
            "netpress": netpress.__version__,
            "methods": [method_record(method, unset=True)],
            "budget": budget.to_dict(),
            "sparsity": 0.123456789,  # as many digits as a real one: the stub must be as long as the final summary
            "params": sum(v.numel() for v in model.state_dict().values() if v.is_floating_point()),
            "calibration": {**calibration, "indices_sha256": "0" * 64},
        }
        state = model.state_dict()
        self.constant_codes = {n: constant_codes(state[n].shape, v) for n, v in (constants or {}).items()}

    def file(self, codes: dict) -> bytes:
        tensors = stored_tensors(self.model.state_dict(), {**codes, **self.constant_codes}, self.raw_dtype)
        return to_bytes(CompressedModel(tensors, self.budget.source or {}, self.summary))

    def bytes(self, codes: dict) -> int:
        """The file's size with the allowance for the summary's other entries."""
        return len(self.file(codes)) + SUMMARY_ALLOWANCE

    def check_reachable(self, zero_codes: dict) -> int:
        """The size of the file with every coded weight zero (``zero_codes``): what the uncoded tensors and headers
        alone take; refused, with the largest ratio that is reachable, when it is over the target."""
        minimum = self.bytes(zero_codes)
        if minimum > self.target:
            raise BudgetError(
                f"a {self.budget.ratio:g}x ratio allows {self.target:,} bytes, but the uncoded tensors and headers, with "
                f"{SUMMARY_ALLOWANCE} bytes kept for the summary, take {minimum:,}; {self.budget.advice(minimum)}"
            )
        return minimum


def constant_codes(shape: tuple[int, ...], value: float) -> Codes:
    """One-level codes of a tensor that holds one value everywhere: a few bytes in the file."""
    level = torch.tensor([value], dtype=torch.float32)
    return Codes(torch.zeros(shape, dtype=torch.int32), level, 0 if value == 0 else None)
