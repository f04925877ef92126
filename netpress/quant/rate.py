"""A differentiable estimate of how many bits the range coder spends on a tensor's symbols.

L² (Shi et al. 2023): smooth the histogram of the continuous codes with a raised-cosine kernel of
width δ = span / resolution, read each symbol's probability P(q) from it, and count −Σ log₂ P(qᵢ).
The forward value tracks the coded size (it is the empirical entropy when δ is small); the gradient
moves codes towards cheaper symbols and reshapes the histogram. With δ ≤ ½ a code's kernel only
reaches its own bin and the two beside it, so the estimate costs O(n) instead of L²'s O(n²) kernel sum.
"""

from __future__ import annotations

import math

import torch

from netpress.quant.deadzone import round_ste


def _kernel_cdf(u: torch.Tensor) -> torch.Tensor:
    """Raised-cosine smooth step: 0 below −1, 1 above +1."""
    return 0.5 - 0.5 * torch.cos(math.pi * (u.clamp(-1, 1) + 1) / 2)


def estimated_bits(codes: torch.Tensor, resolution: int = 64) -> torch.Tensor:
    """Estimated range-coded bits of ``round(codes)`` (a 0-d tensor, differentiable in ``codes``)."""
    c = codes.reshape(-1)
    n = c.numel()
    if n == 0:
        return c.sum() * 0
    q = torch.round(c.detach())
    low = int(q.min())
    bins = int(q.max()) - low + 3  # one spill bin on each side
    span = float(c.detach().max() - c.detach().min())
    delta = min(max(span / resolution, 1e-3), 0.5)
    up = 1 - _kernel_cdf((q + 0.5 - c) / delta)  # kernel mass above the symbol's upper edge
    down = _kernel_cdf((q - 0.5 - c) / delta)  # and below its lower edge
    index = (q - low).long() + 1
    soft = torch.zeros(bins, dtype=c.dtype)
    soft = soft.index_add(0, index, 1 - up - down).index_add(0, index + 1, up).index_add(0, index - 1, down)
    cost = -torch.log2(soft.clamp_min(0.5) / n)  # bits per symbol; an empty bin costs as much as half a count
    slope = ((cost[(index + 1).clamp(max=bins - 1)] - cost[index - 1]) / 2).detach()
    return cost[index].sum() + ((round_ste(c) - q) * slope).sum()
