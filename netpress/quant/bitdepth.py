"""Bit-depth quantizer of self-compression (Cséfalvay & Imber 2023): a learned bit depth and exponent per channel.

q(w; b, e) = 2^e · round(clamp(2^−e · w, −2^(b−1), 2^(b−1) − 1)), rounding half to even, with the
straight-through estimator on the rounding: gradients reach ``w`` through the scale, ``e`` through the
scale and ``b`` through the clamp bounds. ``b`` is a real number, floored at 0; a channel at 0 bits
gives only zeros. ``bits``/``exponent`` are shaped ``(C,)``: one pair per output channel (axis 0).
"""

from __future__ import annotations

import torch

from netpress.codec.codes import Codes
from netpress.quant.deadzone import deadzone_codes, per_row, round_ste


def bitdepth_quantize(w: torch.Tensor, bits: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """Quantize-dequantize ``w`` on each channel's grid of ``2^e``-spaced integers within its bit depth."""
    scale = torch.exp2(per_row(exponent, w))
    half = torch.exp2(per_row(bits.clamp(min=0), w) - 1)
    return round_ste(torch.minimum(torch.maximum(w / scale, -half), half - 1)) * scale


def bitdepth_codes(w: torch.Tensor, bits: torch.Tensor, exponent: torch.Tensor) -> Codes:
    """Exact ``Codes`` of the quantized ``w``: its integers on a per-channel table the codec stores as (first, step).

    Each channel's powers of two are computed one by one: torch's vectorised exp2 rounds the channels that fall in
    its SIMD body and in its tail differently (by a unit in the last place), so a channel's grid would depend on
    how many channels its tensor has, and change when other channels are cut."""
    with torch.no_grad():
        step = _powers_of_two(exponent)
        half = _powers_of_two(bits.detach().clamp(min=0) - 1)
        w = w.detach().float() / per_row(step, w)
        q = torch.round(torch.minimum(torch.maximum(w, -per_row(half, w)), per_row(half, w) - 1)) * per_row(step, w)
        return deadzone_codes(q, step / 2, step)


def _powers_of_two(exponents: torch.Tensor) -> torch.Tensor:
    """2^x for each element, in float32, by the C library's pow one element at a time."""
    return torch.tensor([2.0**x for x in exponents.detach().double().tolist()], dtype=torch.float64).float()
