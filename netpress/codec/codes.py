"""What the weight stage hands the codec: exact, self-contained descriptions of compressed tensors.

``Codes``        a quantized tensor: an integer symbol per weight and the float32 value of each symbol.
``SparseValues`` a pruned but unquantized tensor: a keep-mask and the raw surviving values.

Both ``dequantize()`` to the exact tensor the file will give back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from netpress.errors import FormatError


@dataclass(frozen=True)
class Codes:
    """A quantized tensor.

    ``symbols`` (int32, the tensor's shape) index into ``levels`` (float32). With ``levels`` of shape
    ``(L,)`` one table serves the whole tensor; with shape ``(G, L)``, ``G`` a multiple of the output
    channels (axis 0), each channel's weights fall into ``G / channels`` consecutive runs of near-equal
    length (``table_of_each_weight``), each with its own table: one per channel, or groups within
    each. ``zero`` is the symbol whose level is exactly 0.0 in every table, or None.
    """

    symbols: torch.Tensor
    levels: torch.Tensor
    zero: int | None = None

    def __post_init__(self) -> None:
        if self.symbols.dtype != torch.int32:
            raise FormatError(f"symbols must be int32, got {self.symbols.dtype}")
        if self.levels.dtype != torch.float32 or self.levels.dim() not in (1, 2):
            raise FormatError("levels must be a float32 table of shape (L,) or (channels, L)")
        if self.levels.dim() == 2 and not is_table_count(self.levels.shape[0], tuple(self.symbols.shape)):
            raise FormatError("a 2-D level table needs one row per output channel (axis 0), or per group within each")
        if not torch.isfinite(self.levels).all():
            raise FormatError("levels must be finite")
        if self.symbols.numel() and (self.symbols.min() < 0 or self.symbols.max() >= self.num_levels):
            raise FormatError(f"symbols must lie in [0, {self.num_levels})")
        if self.zero is not None and not (self.levels[..., self.zero] == 0).all():
            raise FormatError(f"the zero symbol {self.zero} must map to exactly 0.0")

    @property
    def num_levels(self) -> int:
        return self.levels.shape[-1]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.symbols.shape)

    def dequantize(self) -> torch.Tensor:
        if self.levels.dim() == 1:
            return self.levels[self.symbols.long()]
        tables, numel = self.levels.shape[0], self.symbols.numel()
        if numel % tables == 0:  # runs of equal length (per channel, or groups that divide it): one row each
            rows = self.symbols.reshape(tables, numel // tables).long()
            return torch.gather(self.levels, 1, rows).reshape(self.symbols.shape)
        index = table_of_each_weight(tables, self.shape) * self.num_levels + self.symbols.reshape(-1)
        return self.levels.reshape(-1)[index].reshape(self.symbols.shape)

    def sparsity(self) -> float:
        return int((self.dequantize() == 0).sum()) / self.symbols.numel() if self.symbols.numel() else 0.0

    @classmethod
    def from_values(cls, values: torch.Tensor, levels: torch.Tensor) -> Codes:
        """Codes of a tensor whose entries are all drawn from a 1-D table ``levels`` (exact match)."""
        levels = levels.to(torch.float32)
        table, symbols = torch.unique(levels, return_inverse=True)
        if table.numel() != levels.numel():
            raise FormatError("levels must be distinct")
        idx = torch.searchsorted(table, values.to(torch.float32).reshape(-1))
        idx = idx.clamp(max=table.numel() - 1)
        if not torch.equal(table[idx], values.reshape(-1).to(torch.float32)):
            raise FormatError("some values are not in the level table")
        zero = (table == 0).nonzero()
        return cls(idx.to(torch.int32).reshape(values.shape), table, int(zero[0]) if len(zero) else None)


def is_table_count(tables: int, shape: tuple[int, ...]) -> bool:
    """Whether ``tables`` level tables can serve a tensor of ``shape``: one per output channel, or
    several per channel, each covering at least one weight."""
    if not shape or shape[0] <= 0 or tables % shape[0]:
        return False
    runs, length = tables // shape[0], int(np.prod(shape[1:]))
    return runs == 1 or (runs <= length and runs * length < 1 << 62)  # the bound keeps run indices in int64


def table_of_each_weight(tables: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The level table of each weight in row-major order: with ``k = tables / channels`` runs per
    channel of ``n`` weights, weight ``j`` of channel ``c`` uses table ``c·k + ⌊j·k / n⌋``, so the
    runs are consecutive and differ in length by at most one (exactly ``n / k`` when ``k`` divides ``n``).
    With ``tables = 1`` (so ``k = 0`` for several channels) every weight uses table 0."""
    channels = shape[0]
    runs, length = tables // channels, int(np.prod(shape[1:]))
    within = torch.arange(length, dtype=torch.int64) * runs // max(length, 1)
    return (torch.arange(channels, dtype=torch.int64)[:, None] * runs + within[None, :]).reshape(-1)


def deadzone_grid(first: np.ndarray, step: np.ndarray, length: int, zero: int) -> np.ndarray:
    """Dead-zone levels in float32, one row per (first, step) pair: 0 at ``zero``, ±(first + (j − 1) · step) at ±j.

    ``first`` is the magnitude of the first non-zero level (edge + step / 2). The codec rebuilds a table
    stored in this form with this function, so a quantizer that builds its levels here is bit-exact.
    """
    offset = np.arange(length, dtype=np.int64) - zero
    magnitude = np.abs(offset).astype(np.float32) - np.float32(1)
    first = np.asarray(first, dtype=np.float32).reshape(-1, 1)
    step = np.asarray(step, dtype=np.float32).reshape(-1, 1)
    with np.errstate(all="ignore"):  # a damaged file may hold inf; Codes rejects the non-finite table
        levels = (magnitude[None, :] * step + first).astype(np.float32) * np.sign(offset).astype(np.float32)[None, :]
    levels[:, zero] = 0.0
    return levels.astype(np.float32)


def deadzone_params(levels: np.ndarray, zero: int | None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(first, step)`` per row when a level table is exactly a dead-zone grid (bit for bit), else None."""
    if zero is None or levels.shape[-1] < 3:
        return None
    table = levels.reshape(-1, levels.shape[-1]).astype(np.float32)
    side = 1 if zero + 2 < table.shape[1] else -1
    if not 0 <= zero + 2 * side < table.shape[1]:
        return None
    first = np.abs(table[:, zero + side])
    step = (np.abs(table[:, zero + 2 * side]) - first).astype(np.float32)
    rebuilt = deadzone_grid(first, step, table.shape[1], zero)
    return (first, step) if np.array_equal(rebuilt.view(np.uint32), table.view(np.uint32)) else None


@dataclass(frozen=True)
class SparseValues:
    """A pruned tensor whose surviving weights keep their float value (no quantization).

    ``mask`` (bool, the tensor's shape) marks survivors; ``values`` holds them in row-major order.
    """

    mask: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        if self.mask.dtype != torch.bool:
            raise FormatError("mask must be a bool tensor")
        if self.values.dim() != 1 or self.values.numel() != int(torch.count_nonzero(self.mask)):
            raise FormatError("values must be a 1-D tensor with one entry per True in mask")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mask.shape)

    def dequantize(self) -> torch.Tensor:
        out = torch.zeros(self.mask.shape, dtype=self.values.dtype)
        out[self.mask] = self.values
        return out

    def sparsity(self) -> float:
        return 1.0 - int(torch.count_nonzero(self.mask)) / self.mask.numel() if self.mask.numel() else 0.0

    def survivors_in(self, dtype: torch.dtype) -> SparseValues:
        """The survivors rounded to ``dtype``. One too small for it keeps the smallest magnitude ``dtype``
        has, with its sign, instead of becoming a zero the mask does not count: the sparsity stays exact."""
        if self.values.dtype == dtype:
            return self
        values = self.values.to(dtype)
        smallest = torch.finfo(dtype).smallest_normal * torch.finfo(dtype).eps  # the smallest subnormal
        flushed = (values == 0) & (self.values != 0)
        values[flushed] = torch.copysign(torch.tensor(smallest, dtype=dtype), self.values[flushed].to(dtype))
        return SparseValues(self.mask, values)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> SparseValues:
        mask = tensor != 0
        return cls(mask, tensor[mask].contiguous())


Encoded = Codes | SparseValues
