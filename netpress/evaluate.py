"""Evaluation: the same function measures a model before and after compression."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import Dataset

from netpress.data import batches, check_dataset, class_indices
from netpress.errors import DataError, UnsupportedModelError, check_whole, one_line
from netpress.progress import progress_bar

# Inference batch: on a CPU, conv activations of a few hundred images stay in cache; at 1000 images
# ResNet-20 runs about 2× slower. Every batch runs at this height (``_forward`` pads a short last one), so a
# sample's logits do not depend on the samples evaluated with it (checked bit for bit on the zoo).
INFERENCE_BATCH = 128


@dataclass(frozen=True)
class Evaluation:
    """Top-1 accuracy (a fraction), per-class accuracy, and the evaluated model's parameter count; ``predicted``
    holds the top-1 class of every sample, so two models evaluated on the same data can be compared."""

    accuracy: float
    per_class: dict[int, float]
    params: int
    samples: int
    predicted: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        d = {"accuracy": self.accuracy, "per_class": {str(k): v for k, v in self.per_class.items()}}
        return {**d, "params": self.params, "samples": self.samples}

    def agreement(self, other: Evaluation) -> float:
        """The share of samples on which this model's top-1 class is ``other``'s (both evaluated on the same data):
        how closely a compressed model follows its original, right or wrong."""
        if self.predicted is None or other.predicted is None or self.predicted.shape != other.predicted.shape:
            raise DataError("agreement compares two evaluations of the same data, each with its predictions")
        return float((self.predicted == other.predicted).double().mean())


@dataclass(frozen=True)
class Fidelity:
    """How close an encoder's sentence embeddings stay to its reference's: the mean cosine, and the mean
    share of each sentence's nearest neighbours (among the other sentences) that both agree on."""

    cosine: float
    top10: float
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


NEIGHBOURS = 10


def fidelity(embeddings: torch.Tensor, reference: torch.Tensor) -> Fidelity:
    """Compare unit-length embeddings of the same sentences, row by row."""
    if embeddings.shape != reference.shape or embeddings.dim() != 2:
        shapes = f"{tuple(embeddings.shape)} and {tuple(reference.shape)}"
        raise DataError(f"embeddings and reference must both be one row per sentence, got {shapes}")
    if len(reference) <= NEIGHBOURS:
        raise DataError(f"fidelity compares {NEIGHBOURS} nearest neighbours: give more than {NEIGHBOURS} sentences")

    def neighbours(e: torch.Tensor) -> torch.Tensor:
        sims = e @ e.T
        sims.fill_diagonal_(-2)
        return sims.topk(NEIGHBOURS, dim=1).indices

    mine, theirs = neighbours(embeddings), neighbours(reference)
    shared = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(mine, theirs))
    cosine = float((embeddings * reference).sum(1).mean())
    return Fidelity(round(cosine, 4), round(shared / (NEIGHBOURS * len(reference)), 4), len(reference))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward(model: nn.Module, x: torch.Tensor, rows: int) -> torch.Tensor:
    """The model's output, with an input it cannot take reported as a data problem, not a traceback.

    A batch shorter than ``rows`` runs padded to that height with copies of its last sample, and the padding
    is dropped: some CPUs' matrix kernels round a row differently with the batch's height, and the short
    last batch would give its samples logits that differ in the last bits from a full batch's (and so move
    an accuracy with the length of the evaluation set)."""
    short = len(x)
    if 0 < short < rows:
        x = torch.cat([x, x[-1:].expand(rows - short, *x.shape[1:])])
    try:
        out = model(x)
    except (MemoryError, RecursionError):
        raise
    except Exception as exc:  # a shape error, or whatever the user's forward raises (a ValueError, an assert)
        raise cannot_run(model, x, exc) from exc
    if not torch.is_tensor(out) or out.dim() != 2:
        what = f"a {tuple(out.shape)} tensor" if torch.is_tensor(out) else f"a {type(out).__name__}"
        raise UnsupportedModelError(f"the model returns {what}; netpress needs a (batch, classes) tensor of logits")
    return out[:short]


def check_classes(logits: torch.Tensor) -> None:
    """A classifier's output has a logit per class: with one, the top class and the softmax are the same for every
    input, so neither accuracy nor distillation says anything."""
    if logits.shape[1] < 2:
        raise UnsupportedModelError(
            "the model returns one logit per sample; netpress reads a classifier's output as one logit per class: "
            "return two (for a sigmoid output z, the logits [0, z])"
        )


def cannot_run(model: nn.Module, x: torch.Tensor | dict, exc: Exception) -> DataError:
    """The error for an input the model would not take: a float input of another dtype than the weights named as
    such (tried in theirs), else the model's own error in one line."""
    if torch.is_tensor(x) and (floats := _float_dtype(model)) is not None and x.is_floating_point() and x.dtype != floats:
        if _runs(model, x.to(floats)):
            return DataError(
                f"the model's weights are {floats} and the inputs {x.dtype}: convert the model (model.float()); a .press "
                "file stores weights as fp32 or fp16 whatever the model's precision"
            )
    given = f"inputs of shape {tuple(x.shape[1:])}" if torch.is_tensor(x) else "its inputs"
    return DataError(f"the model cannot run on {given}: {type(exc).__name__}: {one_line(exc)}")


def _runs(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the model takes ``x`` (tried once an input of another dtype failed, to tell which was wrong)."""
    try:
        model(x)
    except Exception:
        return False
    return True


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    """The dtype of the model's first floating parameter (None without one)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = INFERENCE_BATCH) -> torch.Tensor:
    """Logits for a stacked input tensor, in eval mode, batch by batch."""
    model.eval()
    return torch.cat([_forward(model, inputs[i : i + batch_size], batch_size) for i in range(0, len(inputs), batch_size)])


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, batch_size: int = INFERENCE_BATCH) -> Evaluation:
    """Top-1 and per-class accuracy of a classifier on a labelled dataset (the model's train/eval
    flags are left as they were)."""
    check_whole("batch_size", batch_size, 1)
    check_dataset(dataset)
    with kept_modes(model):
        return _evaluate(model, dataset, batch_size)


@contextmanager
def kept_modes(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag on exit: netpress runs a caller's model in eval mode
    and must not leave it switched."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _evaluate(model: nn.Module, dataset: Dataset, batch_size: int) -> Evaluation:
    model.eval()
    correct: dict[int, int] = {}
    seen: dict[int, int] = {}
    predicted = []
    n = len(dataset)  # type: ignore[arg-type]
    with progress_bar() as progress:
        task = progress.add_task("evaluating", total=n)
        for x, y in batches(dataset, batch_size):
            if y is None:
                raise DataError("evaluation needs labelled samples: (input, label) pairs")
            logits = _forward(model, x, batch_size)
            if not bool(torch.isfinite(logits).all()):  # argmax of NaN would count as a prediction
                raise DataError(
                    "the model's output on the evaluated data is not finite: NaN or infinite inputs, or inputs far outside "
                    "the range it was trained on"
                )
            check_classes(logits)
            y = class_indices(y, "the evaluated data")
            if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
                raise DataError(f"labels must be class indices 0..{logits.shape[1] - 1}, one per sample, for this model")
            pred = logits.argmax(dim=1)
            predicted.append(pred)
            for label, ok in zip(y.tolist(), (pred == y).tolist()):
                seen[label] = seen.get(label, 0) + 1
                correct[label] = correct.get(label, 0) + int(ok)
            progress.update(task, advance=len(y))
    per_class = {c: correct[c] / seen[c] for c in sorted(seen)}
    return Evaluation(sum(correct.values()) / n, per_class, count_params(model), n, torch.cat(predicted))
