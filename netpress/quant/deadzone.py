"""Dead-zone quantizer: a zero bin of half-width ``edge``, then uniform bins of width ``step`` beyond it.

Weights with |w| ≤ edge become exactly 0 (pruning); the rest map to ±(edge + (j − ½) · step),
j = 1, 2, … (quantization starting at the edge). Both parameters are learnable through the
straight-through estimator (L², Shi et al. 2023). ``edge``/``step`` are scalars for one table per
tensor, or shaped ``(C,)`` for one per output channel (axis 0).
"""

from __future__ import annotations

import numpy as np
import torch

from netpress.codec.codes import Codes, deadzone_grid
from netpress.codec.entropy import MAX_ALPHABET


def per_row(param: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-output-channel parameter against a weight tensor."""
    return param if param.dim() == 0 else param.reshape(-1, *([1] * (like.dim() - 1)))


def deadzone_encode(w: torch.Tensor, edge: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Continuous codes: ``w / 2e`` inside the dead zone (so it rounds to 0), ``±(½ + (|w| − e)/s)`` outside."""
    edge, step = per_row(edge, w), per_row(step, w)
    a = w.abs()
    return torch.where(a <= edge, w / (2 * edge), torch.sign(w) * (0.5 + (a - edge) / step))


def deadzone_decode(q: torch.Tensor, edge: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Inverse of ``deadzone_encode`` on integers: 0 → 0, ±j → ±(e + (j − ½)·s)."""
    edge, step = per_row(edge, q), per_row(step, q)
    a = q.abs()
    return torch.where(a <= 0.5, 2 * edge * q, torch.sign(q) * (edge + (a - 0.5) * step))


def round_ste(c: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer (half to even) with an identity gradient."""
    return c + (torch.round(c) - c).detach()


def deadzone_quantize(w: torch.Tensor, edge: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize with the straight-through estimator: gradients reach ``w``, ``edge`` and ``step``."""
    return deadzone_decode(round_ste(deadzone_encode(w, edge, step)), edge, step)


def deadzone_codes(w: torch.Tensor, edge: torch.Tensor, step: torch.Tensor) -> Codes:
    """Exact ``Codes`` of ``w`` under the quantizer, with a level table the codec stores as (first, step) per row.

    The levels are built by the codec's own ``deadzone_grid`` so the file rebuilds them bit for bit;
    ``edge`` is raised to at least ``step / 2`` (a zero bin no narrower than the others), which also
    makes the table exactly recoverable from its first two levels. ``step`` is raised where the codes would
    otherwise need more symbols than the codec codes (``MAX_ALPHABET``): a layer whose weights dwarf their grid
    (weights near 1e-30 that reconstruction moved by its learning rate) gets the finest grid that codes.
    """
    w, edge, step = w.detach().float(), edge.detach().float(), step.detach().float()
    q, low, high = _rounded(w, edge, step)
    if high - low + 1 > MAX_ALPHABET:  # only then: every grid that codes keeps its codes bit for bit
        magnitudes = w.abs()
        largest = magnitudes.reshape(len(w), -1).amax(dim=1) if step.dim() else magnitudes.max()
        step = torch.maximum(step, (largest - edge) / (MAX_ALPHABET // 2 - 2))  # |codes| ≤ 2^15 − 1
        q, low, high = _rounded(w, edge, step)
    edge = torch.maximum(edge, step / 2)
    first = (edge + step / 2).reshape(-1).numpy().astype(np.float32)
    step_np = np.broadcast_to(step.reshape(-1).numpy(), first.shape).astype(np.float32)
    step_np = ((step_np + first).astype(np.float32) - first).astype(np.float32)  # the step the codec will recover
    levels = torch.from_numpy(deadzone_grid(first, step_np, high - low + 1, -low))
    return Codes((q - low).to(torch.int32), levels if edge.dim() else levels[0], zero=-low)


def _rounded(w: torch.Tensor, edge: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Integer codes of ``w`` (the zero bin at least as wide as the others), and their range with 0 in it."""
    q = torch.round(deadzone_encode(w, torch.maximum(edge, step / 2), step)).to(torch.int64)
    return q, min(int(q.min()), 0), max(int(q.max()), 0)
