"""Zoo registry, training recipes and checkpoint loading."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from netpress.codec import write_file
from netpress.data import load_dataset
from netpress.errors import (
    BudgetError,
    DataError,
    ModelSourceError,
    OutputError,
    check_seed,
    check_whole,
    check_writable,
    make_output_dir,
)
from netpress.progress import progress_bar
from netpress.zoo.models import VGG, LeNet5, LeNet300, MobileNetV2, ResNet20

CHECKPOINT_DIR = Path(__file__).parent / "checkpoints"
MANIFEST = CHECKPOINT_DIR / "manifest.json"


@dataclass(frozen=True)
class ZooEntry:
    """One zoo model: how to build it and how it was trained."""

    name: str
    factory: Callable[[], nn.Module]
    description: str
    epochs: int
    lr: float
    hflip: bool  # horizontal-flip augmentation (garments are left/right symmetric; useful for conv nets)
    dataset: str = "fashion-mnist"
    batch_size: int = 128
    weight_decay: float = 5e-4
    input_shape: tuple[int, ...] = (1, 28, 28)


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry("lenet300", LeNet300, "LeNet-300-100, fully connected 784-300-100-10", 15, 0.05, False),
        ZooEntry("lenet5", LeNet5, "LeNet-5 (Caffe): conv20-conv50-fc500-fc10", 8, 0.05, False),
        ZooEntry("resnet20", ResNet20, "ResNet-20, 16/32/64 channels, BatchNorm, 1x1 projection shortcuts", 6, 0.1, True),
        ZooEntry("vgg", VGG, "narrow VGG-BN: 2x(32,64,128) conv-BN-ReLU, fc 128", 4, 0.1, True),
        ZooEntry(
            "mobilenetv2",
            MobileNetV2,
            "small MobileNetV2: depthwise inverted residuals, expansion 4, 16-24-32-64 channels, 1x1 conv 256",
            6,
            0.1,
            True,
        ),
    ]
}


def _entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise ModelSourceError(f"unknown zoo model {name!r}; available: {', '.join(ZOO)}")
    return ZOO[name]


def build(name: str) -> nn.Module:
    """An untrained instance of a zoo architecture."""
    return _entry(name).factory()


def load_manifest() -> dict:
    """The recorded metrics of every trained checkpoint (empty when none are trained yet)."""
    return json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else {}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_pretrained(name: str) -> nn.Module:
    """The trained zoo model, in eval mode, after checking its checkpoint against the manifest."""
    entry = _entry(name)
    path = CHECKPOINT_DIR / f"{name}.safetensors"
    record = load_manifest().get(name)
    if not path.is_file() or record is None:
        raise ModelSourceError(f"zoo model {name!r} has no trained checkpoint; run `netpress zoo train {name}`")
    if sha256(path) != record["sha256"]:
        raise ModelSourceError(f"checkpoint {path} does not match the sha256 in the manifest")
    model = entry.factory()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(x.shape[0], generator=generator) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _check_device(device: str) -> None:
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise BudgetError(f"unknown device {device!r}; use cpu or cuda") from None
    if parsed.type == "cpu" and parsed.index not in (None, 0):
        raise BudgetError(f"device {device!r}: torch has one cpu device; use device='cpu' (CLI: --device cpu)")
    if parsed.type not in ("cpu", "cuda"):
        raise BudgetError(f"device {device!r}: netpress trains on cpu or cuda")
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise BudgetError(
            f"device {device!r}: this machine or torch build has no usable CUDA; use device='cpu' (CLI: --device cpu)"
        )
    if parsed.type == "cuda" and (parsed.index or 0) >= torch.cuda.device_count():
        raise BudgetError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s), numbered from 0")


def _recipe(name: str, seed: int, epochs: int | None, device: str) -> tuple[ZooEntry, int]:
    """The zoo entry and epoch count of a training run, refused before any work if an option is wrong."""
    entry = _entry(name)
    epochs = entry.epochs if epochs is None else epochs
    check_seed(seed)
    check_whole("epochs", epochs, 1)
    _check_device(device)
    return entry, epochs


def fit(
    name: str, inputs: torch.Tensor, labels: torch.Tensor, seed: int = 0, epochs: int | None = None, device: str = "cpu"
) -> nn.Module:
    """A fresh zoo model trained with its fixed recipe on ``inputs`` / ``labels``, returned on the CPU in eval mode.

    SGD with Nesterov momentum and a one-cycle schedule; the seed fixes initialisation, data order and
    augmentation. ``train`` fits on the whole training split; a benchmark may fit on part of it.
    """
    entry, epochs = _recipe(name, seed, epochs, device)
    if len(inputs) == 0 or len(inputs) != len(labels):
        raise DataError(f"fit needs one label per input and at least one input: {len(inputs)} inputs, {len(labels)} labels")
    if tuple(inputs.shape[1:]) != entry.input_shape:
        raise DataError(f"{name} takes inputs of shape {entry.input_shape}, got {tuple(inputs.shape[1:])}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_all, y_all = inputs.to(device), labels.to(device)
    model = entry.factory().to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=entry.lr, momentum=0.9, nesterov=True, weight_decay=entry.weight_decay)
    steps_per_epoch = (len(x_all) + entry.batch_size - 1) // entry.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, entry.lr, total_steps=epochs * steps_per_epoch)
    with progress_bar() as progress:
        task = progress.add_task(f"training {name}", total=epochs * steps_per_epoch)
        for _ in range(epochs):
            model.train()
            order = torch.randperm(len(x_all), generator=generator).to(device)
            for i in range(steps_per_epoch):
                idx = order[i * entry.batch_size : (i + 1) * entry.batch_size]
                x = x_all[idx]
                if entry.hflip:
                    x = _augment(x, generator)
                loss = nn.functional.cross_entropy(model(x), y_all[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                progress.update(task, advance=1, description=f"training {name} loss {loss.item():.3f}")
    return model.cpu().eval()


TRAIN_DIR = Path("netpress-zoo")  # where ``zoo train`` writes unless told: never over the shipped checkpoints


def _read_manifest(path: Path) -> dict:
    """The manifest a training run adds its record to: empty where there is none yet."""
    if not path.exists():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OutputError(
            f"{path} is not a readable manifest ({exc}); move it away or give another out_dir (CLI: --out-dir)"
        ) from exc
    if not isinstance(manifest, dict):
        raise OutputError(
            f"{path} holds no manifest (a JSON object of records); move it away or give another out_dir (CLI: --out-dir)"
        )
    return manifest


def train(name: str, seed: int = 0, epochs: int | None = None, out_dir: Path = TRAIN_DIR, device: str = "cpu") -> dict:
    """Train a zoo model from scratch on its whole training split (``fit``) and record it in ``out_dir``'s
    manifest; the same command on the same machine gives the same file. The shipped checkpoints (which every
    benchmark measures) change only when ``out_dir`` is ``CHECKPOINT_DIR``."""
    from netpress.evaluate import evaluate

    entry, epochs = _recipe(name, seed, epochs, device)
    make_output_dir(out_dir)  # before the training, not after it
    manifest_path = out_dir / "manifest.json"
    for path in (out_dir / f"{name}.safetensors", manifest_path):  # a folder in the way, no permission: refused now
        check_writable(path)
    _read_manifest(manifest_path)  # a damaged one is refused now, not after the training
    train_set, test_set = load_dataset(entry.dataset, "train"), load_dataset(entry.dataset, "test")
    start = time.perf_counter()
    model = fit(name, *train_set.tensors, seed=seed, epochs=epochs, device=device)
    seconds = time.perf_counter() - start
    # Evaluate and build both files in memory first: a failure then leaves the checkpoint and the
    # manifest as they were, never a new checkpoint whose sha256 the manifest does not know.
    result = evaluate(model, test_set)
    checkpoint = save({k: v.contiguous() for k, v in model.state_dict().items()})
    record = {
        "dataset": entry.dataset,
        "description": entry.description,
        "test_accuracy": result.accuracy,
        "params": result.params,
        "file_bytes": len(checkpoint),
        "sha256": hashlib.sha256(checkpoint).hexdigest(),
        "seed": seed,
        "epochs": epochs,
        "train_seconds": round(seconds, 1),
        "torch": torch.__version__,
        "device": device if device == "cpu" else torch.cuda.get_device_name(device),
        "command": f"netpress zoo train {name} --seed {seed}"
        + (f" --epochs {epochs}" if epochs != entry.epochs else "")
        + (f" --device {device}" if device != "cpu" else ""),
    }
    manifest = _read_manifest(manifest_path)  # again: another run may have added its record meanwhile
    manifest[name] = record
    write_file(out_dir / f"{name}.safetensors", checkpoint)
    write_file(manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return record
