"""Dataset loading (Fashion-MNIST from Debian's files, scikit-learn digits) and seeded subsets."""

from __future__ import annotations

import gzip
import hashlib
import operator
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset, TensorDataset

from netpress.data.text import Sentences
from netpress.errors import DataError, check_seed, file_problem

FASHION_MNIST_ENV = "NETPRESS_FASHION_MNIST"
FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
# Per-pixel statistics of the Fashion-MNIST training split, used to standardise inputs.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
SPLITS = ("train", "test")


def _read_idx(path: Path) -> np.ndarray:
    """Read a gzip-compressed IDX file (the MNIST family's format) into a uint8 array."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:  # not gzip, truncated, or corrupt
        raise DataError(f"{path} is damaged ({exc}); reinstall the dataset") from exc
    if len(data) < 4:
        raise DataError(f"{path} is too short to be an IDX file")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path} is too short for its {ndim}-dimensional IDX header")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} holds {body.size} bytes, its header promises {int(np.prod(shape))}")
    return body.reshape(shape)


def _fashion_mnist(split: str) -> TensorDataset:
    root = Path(os.environ.get(FASHION_MNIST_ENV, FASHION_MNIST_DEFAULT))
    prefix = "train" if split == "train" else "t10k"
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    for p in (images_path, labels_path):
        if not p.is_file():
            raise DataError(
                f"Fashion-MNIST file {p} not found. Install it with `{FASHION_MNIST_INSTALL}` "
                f"or point {FASHION_MNIST_ENV} at a folder holding the four *-ubyte.gz files."
            )
    images = _read_idx(images_path)
    labels = _read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST files in {root} have mismatched shapes {images.shape} / {labels.shape}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    return TensorDataset(x, torch.from_numpy(labels.astype(np.int64)))


def _digits(split: str) -> TensorDataset:
    """scikit-learn's bundled 8x8 digits, split 80/20 with a fixed seed (train / test)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = int(0.8 * len(x))
    idx = order[:cut] if split == "train" else order[cut:]
    return TensorDataset(x[idx], y[idx])


DATASETS = {"fashion-mnist": _fashion_mnist, "digits": _digits}
DATA_FILE_KEYS = "train_inputs (train_labels optional: calibration needs none), test_inputs and test_labels"
DIGEST_ROWS = 1024  # samples read at a time by the digests
PRESERVATION_KEYS = "preserve_inputs and preserve_labels"  # a preservation set's file (it may be the --data file)


def _data_file(path: Path, split: str) -> TensorDataset:
    """A user's own data: a safetensors file (no pickle) with float ``{split}_inputs`` of the model's input shape
    and integer ``{split}_labels``, one per input; only the train split may be unlabelled, since accuracy is
    measured on the others."""
    if problem := file_problem(path):
        raise DataError(f"{'preservation set' if split == 'preserve' else 'data file'} {problem}")
    try:
        with safe_open(str(path), "pt") as f:
            stored = {k: f.get_tensor(k) for k in (f"{split}_inputs", f"{split}_labels") if k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataError(f"{path} is not a readable safetensors file ({exc})") from exc
    inputs, labels = stored.get(f"{split}_inputs"), stored.get(f"{split}_labels")
    if inputs is None or (labels is None and split != "train"):
        holds = PRESERVATION_KEYS if split == "preserve" else DATA_FILE_KEYS
        raise DataError(f"{path} has no {split}_{'inputs' if inputs is None else 'labels'}; a data file holds {holds}")
    if not inputs.is_floating_point() or inputs.dim() < 2 or len(inputs) == 0:
        raise DataError(
            f"{split}_inputs in {path} must be a non-empty float tensor (samples, ...), got {inputs.dtype} {tuple(inputs.shape)}"
        )
    if not torch.isfinite(inputs).all():
        raise DataError(f"{split}_inputs in {path} holds NaN or infinite values")
    if labels is None:
        return TensorDataset(inputs.float())
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool or labels.shape != inputs.shape[:1]:
        raise DataError(
            f"{split}_labels in {path} must be integer class indices, one per input: got {labels.dtype} "
            f"{tuple(labels.shape)} for {len(inputs)} inputs"
        )
    return TensorDataset(inputs.float(), labels.long())


def load_dataset(name: str | os.PathLike, split: str = "test") -> TensorDataset:
    """Load a dataset split as ``(input, label)`` pairs: a named one, standardised for the zoo models, or a
    ``.safetensors`` data file of your own (``DATA_FILE_KEYS``), used as it is."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    name = os.fspath(name)
    if name.lower().endswith(".safetensors"):
        dataset = _data_file(Path(name), split)
    elif name not in DATASETS:
        raise DataError(
            f"unknown dataset {name!r}; available: {', '.join(DATASETS)}, or a .safetensors file holding {DATA_FILE_KEYS}"
        )
    else:
        dataset = DATASETS[name](split)
    dataset.split = split  # calibration_subset refuses the test split by this mark
    return dataset


def load_preservation_set(path: str | os.PathLike) -> TensorDataset:
    """Your own critical examples from a ``.safetensors`` file holding ``PRESERVATION_KEYS``: measured before and
    after compression, and what self-compression guards."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise DataError(f"a preservation set is a .safetensors file holding {PRESERVATION_KEYS}; got {path}")
    return _data_file(path, "preserve")


def sample_digests(dataset: Dataset, exact: bool = False) -> list[bytes]:
    """A sha256 of each sample's input: finds the same example in two datasets. Float inputs are rounded to float16
    unless ``exact``, so that a copy held at a lower precision is found too (two distinct samples may then
    collide, which a count tolerates and a refusal must not); integer inputs (token ids) are hashed as they are."""

    def digest(x: torch.Tensor) -> bytes:
        if x.is_floating_point() and not exact:
            x = x.to(torch.float16)
        return hashlib.sha256(str(x.dtype).encode() + x.contiguous().numpy().tobytes()).digest()

    return [digest(x) for inputs, _ in batches(dataset, DIGEST_ROWS) for x in inputs]


def stacked_examples(dataset: Dataset, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``(input, label)`` item of a small labelled dataset as two tensors, checked whole: inputs of one
    shape and finite, labels integer class indices (``what`` names the dataset in the errors)."""
    try:
        inputs, labels = next(batches(dataset, len(dataset)))
    except (DataError, RuntimeError, TypeError, IndexError) as exc:
        raise DataError(f"{what}: its items must be (input tensor, integer label), inputs of one shape ({exc})") from exc
    if labels is None:
        raise DataError(f"{what}: its items must be (input, label)")
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        raise DataError(f"{what}: its inputs hold NaN or infinite values")
    return inputs, class_indices(labels, what)


def class_indices(labels: torch.Tensor, what: str) -> torch.Tensor:
    """Labels as int64 class indices, refused unless they are integers, one per input: a float label would be
    truncated or never equal a prediction, and the accuracy would be wrong without a word."""
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DataError(f"{what}: labels must be integer class indices, one per input; got {labels.dtype} {tuple(labels.shape)}")
    return labels.long()


def dataset_sha256(dataset: Dataset) -> str:
    """One sha256 of a labelled dataset's inputs and labels, in order: what a file records of a set it was made with."""
    digest = hashlib.sha256()
    for inputs, labels in batches(dataset, DIGEST_ROWS):
        digest.update(inputs.to(torch.float32).contiguous().numpy().tobytes())
        if labels is not None:
            digest.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_dataset(dataset: Dataset, input_shape: tuple[int, ...] | None = None) -> None:
    """Fail early and clearly on an empty dataset or one whose samples have the wrong shape."""
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError as exc:
        raise DataError("the dataset has no length; pass a map-style torch Dataset") from exc
    if n == 0:
        raise DataError("the dataset is empty")
    if isinstance(dataset, Sentences):  # text: the encoder's tokenizer makes the inputs
        return
    sample = dataset[0]
    if not isinstance(sample, (tuple, list)) or len(sample) < 1 or not torch.is_tensor(sample[0]):
        raise DataError("each dataset item must be (input tensor, label) or (input tensor,)")
    if input_shape is not None and tuple(sample[0].shape) != tuple(input_shape):
        raise DataError(f"dataset inputs have shape {tuple(sample[0].shape)}, the model expects {tuple(input_shape)}")
    # A tensor dataset is checked whole (cheap); another dataset by its first item, since reading every item may be slow.
    inputs = dataset.tensors[0] if isinstance(dataset, TensorDataset) else sample[0]
    if inputs.is_floating_point() and not bool(torch.isfinite(inputs).all()):
        raise DataError("the dataset's inputs hold NaN or infinite values; clean them before calibrating or measuring")


def check_labelled(dataset: Dataset, what: str, input_shape: tuple[int, ...] | None = None) -> None:
    """``check_dataset`` for a dataset measured by its accuracy, whose items must be (input, label); ``what`` names
    it in the errors."""
    try:
        check_dataset(dataset, input_shape)
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from exc
    if len(dataset[0]) < 2:
        raise DataError(f"{what}: the items must be (input, label): its accuracy needs labels")


@dataclass(frozen=True)
class Subset:
    """A seeded subset of a training split; ``indices`` are recorded in every report."""

    dataset: Dataset
    indices: list[int]
    seed: int

    def __post_init__(self) -> None:
        if isinstance(self.seed, np.integer):  # recorded in the file's JSON summary, which takes Python ints
            object.__setattr__(self, "seed", int(self.seed))
        check_seed(self.seed)
        try:  # plain ints, so the recorded indices and their hash never depend on the type
            indices = [_position(i) for i in self.indices]
        except TypeError as exc:
            raise DataError(f"a Subset's indices must be whole numbers (sample positions): {exc}") from exc
        if not indices:
            raise DataError("a Subset needs one or more sample positions (calibration_subset(train, n) draws n of them)")
        if len(set(indices)) < len(indices):
            raise DataError("a Subset's sample positions must be distinct: a repeated one would count one sample twice")
        size = len(self.dataset) if hasattr(self.dataset, "__len__") else None  # type: ignore[arg-type]
        if size is not None and not all(0 <= i < size for i in indices):
            raise DataError(
                f"a Subset's indices must lie in [0, {size}), the dataset's length; got {min(indices)} to {max(indices)}"
            )
        object.__setattr__(self, "indices", indices)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stack the subset into (inputs, labels-or-None) for methods that work on one batch."""
        return next(batches(self.dataset, len(self.indices), self.indices))


def _position(index: object) -> int:
    """A sample position as a plain int (an int, a NumPy integer, a one-element integer tensor); a bool is not one."""
    if isinstance(index, (bool, np.bool_)) or (torch.is_tensor(index) and index.dtype == torch.bool):
        raise TypeError(f"{index!r} is a bool")
    return operator.index(index)


def batches(
    dataset: Dataset, batch_size: int, indices: list[int] | None = None
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """Yield ``(inputs, labels-or-None)`` batches; slices tensors directly when the dataset holds them."""
    idx = list(range(len(dataset))) if indices is None else indices  # type: ignore[arg-type]
    tensors = dataset.tensors if isinstance(dataset, TensorDataset) else None
    for start in range(0, len(idx), batch_size):
        chunk = idx[start : start + batch_size]
        if tensors is not None:
            rows = torch.as_tensor(chunk)
            yield tensors[0][rows], (tensors[1][rows] if len(tensors) > 1 else None)
            continue
        items = [dataset[i] for i in chunk]
        x = torch.stack([it[0] for it in items])
        y = None
        if len(items[0]) > 1:
            try:  # as given: a float or text label is refused where labels are read, not truncated here
                y = torch.as_tensor([it[1] for it in items])
            except (TypeError, ValueError, RuntimeError) as exc:
                raise DataError(f"labels must be integer class indices; got {items[0][1]!r} ({exc})") from exc
        yield x, y


def check_not_test(dataset: Dataset) -> None:
    """Refuse a test split, also inside the wrappers torch offers (Subset, ConcatDataset and the like)."""
    stack, seen = [dataset], 0
    while stack and seen < 1000:
        current, seen = stack.pop(), seen + 1
        if getattr(current, "split", None) == "test":
            raise DataError("that is the test split: calibrate on load_dataset(name, 'train'); netpress never calibrates on it")
        stack += [inner for inner in [getattr(current, "dataset", None), *getattr(current, "datasets", ())] if inner is not None]


def calibration_subset(train: Dataset, n: int, seed: int = 0) -> Subset:
    """Draw ``n`` distinct samples from a training split with a seed.

    Pass the training split: netpress never calibrates on test data, and the
    returned indices let anyone check which samples were used.
    """
    check_not_test(train)
    check_dataset(train)
    total = len(train)  # type: ignore[arg-type]
    if isinstance(n, bool) or not isinstance(n, int):
        raise DataError(f"calibration size must be a whole number of samples, got {n!r}")
    if n <= 0:
        raise DataError(f"calibration size must be positive, got {n}")
    if n > total:
        raise DataError(
            f"asked for {n} calibration samples but the training split has only {total}; "
            f"ask for {total} or fewer (calib=, CLI: --calib)"
        )
    check_seed(seed)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(train, sorted(order.tolist()), seed)
