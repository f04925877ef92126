"""Tiny architectures the tests name with ``--arch tests.archs:FACTORY``, and a plain map-style dataset."""

import torch
from torch import nn


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def tiny_mobilenet() -> nn.Module:
    """Two MobileNetV2 blocks for 8x8 digits: depthwise convs inside channel groups, one residual add."""
    from netpress.zoo.models import InvertedResidual

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(), InvertedResidual(8, 8, 1, 2),
        InvertedResidual(8, 12, 2, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, 10),
    )  # fmt: skip


def not_a_module() -> int:
    return 3


class _Mixer(nn.Module):
    """A custom layer with its own weight matrix: no netpress method compresses it."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.eye(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


def mlp_with_custom_layer() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), _Mixer(32), nn.Linear(32, 10))


def custom_only() -> nn.Module:
    return nn.Sequential(nn.Flatten(), _Mixer(64))


def needs_an_argument(width: int) -> nn.Module:
    return nn.Linear(width, 10)


def raises() -> nn.Module:
    raise ValueError("checkpoint path not configured")


def tied() -> nn.Module:
    """One layer used twice: its weight has two names in the state dict."""
    torch.manual_seed(0)
    shared = nn.Linear(32, 32)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), shared, nn.ReLU(), shared, nn.Linear(32, 10))


def on_meta() -> nn.Module:
    return tiny_mlp().to("meta")


class Items(torch.utils.data.Dataset):
    """A map-style dataset that is not a TensorDataset: its items exactly as given, labels untouched."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


class Versioned(nn.Module):
    """A model whose state dict holds a Python object (``get_extra_state``), which a .press file cannot store."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))

    def get_extra_state(self) -> dict:
        return {"version": 3}

    def set_extra_state(self, state: dict) -> None:
        self.version = state["version"]


def warns_when_built() -> nn.Module:
    """tiny_mlp, built with a warning of another kind than netpress's (as some torch layers give)."""
    import warnings

    warnings.warn("a deprecated option", DeprecationWarning, stacklevel=2)
    return tiny_mlp()


def int16_indexed() -> nn.Module:
    """A model with an int16 buffer, which a .press file does not store: loaded and measured, not compressed."""
    model = nn.Sequential(nn.Linear(8, 4))
    model.register_buffer("index", torch.arange(4, dtype=torch.int16))
    return model
