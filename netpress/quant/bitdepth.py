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
    """Exact ``Codes`` of the quantized ``w``: its integers on a per-channel table the codec stores as (first, step)."""
    with torch.no_grad():
        step = torch.exp2(exponent.detach().float())
        return deadzone_codes(bitdepth_quantize(w.detach().float(), bits.detach(), exponent.detach()), step / 2, step)
