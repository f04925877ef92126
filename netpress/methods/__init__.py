"""Compression methods. Each is a config dataclass with ``apply(model, data, budget)``."""

from netpress.methods.base import COMPRESSIBLE_LAYERS, Method, MethodResult, compressible_weights, is_compressible
from netpress.methods.baselines import ALLOCATIONS, CLIPS, KMeansQuantization, MagnitudePruning, UniformQuantization
from netpress.methods.fcpts import FCPTS
from netpress.methods.fold import CLUSTERINGS, GROUP_ALLOCATIONS, REPAIRS, ChannelL1, Fold
from netpress.methods.l2 import L2
from netpress.methods.self_compress import SelfCompression, preservation_set
from netpress.methods.soft_sharing import SoftWeightSharing

METHODS: dict[str, type] = {
    m.name: m
    for m in (
        MagnitudePruning,
        UniformQuantization,
        KMeansQuantization,
        FCPTS,
        Fold,
        ChannelL1,
        L2,
        SoftWeightSharing,
        SelfCompression,
    )
}

__all__ = [
    "ALLOCATIONS",
    "CLIPS",
    "FCPTS",
    "CLUSTERINGS",
    "GROUP_ALLOCATIONS",
    "REPAIRS",
    "ChannelL1",
    "KMeansQuantization",
    "L2",
    "Fold",
    "COMPRESSIBLE_LAYERS",
    "is_compressible",
    "METHODS",
    "MagnitudePruning",
    "Method",
    "MethodResult",
    "SelfCompression",
    "SoftWeightSharing",
    "UniformQuantization",
    "compressible_weights",
    "preservation_set",
]
