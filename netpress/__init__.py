"""netpress: compress trained PyTorch networks after training into a real, smaller file."""

__version__ = "0.1.0"

from netpress.api import (  # noqa: E402
    ModelHandle,
    compress,
    evaluate,
    fidelity,
    inspect,
    load,
    load_model,
    perplexity,
    press,
    save,
    sweep,
)
from netpress.budget import Budget  # noqa: E402
from netpress.errors import NetpressError, NetpressWarning  # noqa: E402
from netpress.methods import (  # noqa: E402
    FCPTS,
    L2,
    ChannelL1,
    Fold,
    KMeansQuantization,
    MagnitudePruning,
    SelfCompression,
    SoftWeightSharing,
    UniformQuantization,
)

__all__ = [
    "FCPTS",
    "L2",
    "Budget",
    "ChannelL1",
    "Fold",
    "KMeansQuantization",
    "MagnitudePruning",
    "ModelHandle",
    "NetpressError",
    "NetpressWarning",
    "SelfCompression",
    "SoftWeightSharing",
    "UniformQuantization",
    "compress",
    "evaluate",
    "fidelity",
    "inspect",
    "load",
    "load_model",
    "perplexity",
    "press",
    "save",
    "sweep",
]
