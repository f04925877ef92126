"""Differentiable sparsity: the fraction of weights at or below a threshold (the ones a mask |w| > t prunes),
with a kernel-density derivative.

The forward value is the exact count (so the reported sparsity is real); the backward pass uses a
Gaussian kernel-density estimate of the magnitude density at the threshold, which is what makes a
per-layer threshold learnable against a global sparsity target (FCPTS's "bridge function").
"""

from __future__ import annotations

import math

import torch

MAX_KDE_SAMPLES = 4096


def silverman_bandwidth(x: torch.Tensor) -> float:
    """Silverman's rule of thumb, h = 0.9 · min(σ, IQR / 1.34) · n^(-1/5), for a 1-D sample."""
    n = x.numel()
    std = float(x.std()) if n > 1 else 0.0
    q = torch.quantile(x.float(), torch.tensor([0.25, 0.75])) if n > 1 else torch.zeros(2)
    spread = min(std, float(q[1] - q[0]) / 1.34) or std or 1e-8
    return 0.9 * spread * n ** (-0.2)


def magnitude_density(t: torch.Tensor, magnitudes: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """KDE of the density of |w| at t, reflected at zero: (1/nh) Σ φ((t−x)/h) + φ((t+x)/h)."""
    z1 = (t - magnitudes) / bandwidth
    z2 = (t + magnitudes) / bandwidth
    kernel = torch.exp(-0.5 * z1**2) + torch.exp(-0.5 * z2**2)
    return kernel.sum() / (magnitudes.numel() * bandwidth * math.sqrt(2 * math.pi))


class _SparsityBridge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, threshold: torch.Tensor, magnitudes: torch.Tensor, sample: torch.Tensor, bandwidth: float):
        ctx.save_for_backward(threshold, sample)
        ctx.bandwidth = bandwidth
        return (magnitudes <= threshold).float().mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        threshold, sample = ctx.saved_tensors
        return grad * magnitude_density(threshold, sample, ctx.bandwidth), None, None, None


def kde_sample(magnitudes: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The magnitudes the KDE uses: all of them, or a seeded random sample (with replacement) of large layers."""
    flat = magnitudes.detach().reshape(-1)
    if flat.numel() <= MAX_KDE_SAMPLES:
        return flat
    return flat[torch.randint(0, flat.numel(), (MAX_KDE_SAMPLES,), generator=generator)]


def layer_sparsity(threshold: torch.Tensor, weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact fraction of |weight| at or below ``threshold``, differentiable in the threshold via a KDE."""
    magnitudes = weight.detach().abs().reshape(-1)
    sample = kde_sample(magnitudes, generator)
    return _SparsityBridge.apply(threshold, magnitudes, sample, silverman_bandwidth(sample))
