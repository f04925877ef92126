"""The model zoo: small trained networks with committed checkpoints and recorded metrics.

Each entry has an architecture factory, a training recipe, and (once trained) a safetensors
checkpoint in ``netpress/zoo/checkpoints`` described by ``manifest.json``: dataset, test accuracy,
sha256, and the command that reproduces it.
"""

from netpress.zoo.registry import (
    CHECKPOINT_DIR,
    ZOO,
    ZooEntry,
    build,
    fit,
    load_manifest,
    load_pretrained,
    train,
)

__all__ = ["CHECKPOINT_DIR", "ZOO", "ZooEntry", "build", "fit", "load_manifest", "load_pretrained", "train"]
