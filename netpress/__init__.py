"""netpress: compress trained PyTorch networks after training into a real, smaller file."""

__version__ = "0.1.0"

from netpress.api import (  # noqa: E402
    ModelHandle,
    compress,
    evaluate,
    inspect,
    load,
    load_model,
    press,
    save,
)
from netpress.budget import Budget  # noqa: E402
from netpress.errors import NetpressError  # noqa: E402
from netpress.methods import MagnitudePruning, UniformQuantization  # noqa: E402

__all__ = [
    "Budget",
    "MagnitudePruning",
    "ModelHandle",
    "NetpressError",
    "UniformQuantization",
    "compress",
    "evaluate",
    "inspect",
    "load",
    "load_model",
    "press",
    "save",
]
