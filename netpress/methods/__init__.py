"""Compression methods. Each is a config dataclass with ``apply(model, data, budget)``."""

from netpress.methods.base import COMPRESSIBLE_LAYERS, Method, MethodResult, compressible_weights
from netpress.methods.baselines import ALLOCATIONS, MagnitudePruning, UniformQuantization

METHODS: dict[str, type] = {m.name: m for m in (MagnitudePruning, UniformQuantization)}

__all__ = [
    "ALLOCATIONS",
    "COMPRESSIBLE_LAYERS",
    "METHODS",
    "MagnitudePruning",
    "Method",
    "MethodResult",
    "UniformQuantization",
    "compressible_weights",
]
