"""The dense model as a teacher on calibration data: its outputs, once, and how far a student is from them.

Methods that distil (FCPTS, L²) are written against ``Teacher``, so one method serves both kinds of model
netpress measures: a classifier, pulled towards the dense model's logits (KL at a temperature); a Hugging Face
sentence encoder, pulled towards the dense model's sentence embeddings (cosine distance); and a Hugging Face
causal language model, pulled towards the dense model's next-token distributions (KL at a temperature).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from netpress.data import Subset
from netpress.data.text import Sentences
from netpress.errors import DataError
from netpress.evaluate import check_classes, kept_modes, predict
from netpress.hf import TextEncoder, TokenPredictor
from netpress.methods.base import distillation_loss, recalibrate_batchnorm, running_statistics

MIX_SHARE = 0.5  # a mixed input is (1 − s)·x_a + s·x_b with s uniform in [0, MIX_SHARE]: x_a stays dominant
RETRIEVAL_SCALE = 20.0  # cosines × 20: sentence-transformers' MultipleNegativesRankingLoss default


class Teacher(Protocol):
    """``size`` training samples; ``outputs`` of a student (with ``params`` in place of its own tensors) on some
    of them, differentiable; ``loss`` of those outputs; ``score``: the loss over the calibration samples;
    ``recalibrate``: BatchNorm statistics from them; ``add_mixtures``: more training samples, where inputs mix;
    ``batch``: the indices of a random training batch; ``chunks``: the calibration samples once, in batches;
    ``sensitivity_loss``: a loss whose gradient is not zero at the dense model, for a Fisher estimate (the
    distillation loss has its minimum there)."""

    size: int

    def chunks(self, size: int) -> list[torch.Tensor]: ...

    def sensitivity_loss(self, outputs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor: ...

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor: ...

    def outputs(self, model: nn.Module, idx: torch.Tensor, params: dict | None = None) -> torch.Tensor: ...

    def loss(self, outputs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor: ...

    def score(self, model: nn.Module) -> float: ...

    def recalibrate(self, model: nn.Module) -> None: ...

    def add_mixtures(self, model: nn.Module, per_sample: int, generator: torch.Generator) -> None: ...


def teacher_for(model: nn.Module, data: Subset, temperature: float) -> Teacher:
    """The teacher for ``data``: sentences (with the model's text reader) teach a causal language model's next-token
    distributions or an encoder's embeddings, anything else a classifier's logits."""
    if isinstance(data.dataset, Sentences):
        reader = data.dataset.encoder
        if reader is None:
            raise DataError(
                "calibration sentences need the text reader of the model's directory: Sentences(texts, 'train', handle.encoder)"
            )
        sentences = [data.dataset[i] for i in data.indices]
        if isinstance(reader, TokenPredictor):
            return TokenTeacher(model, reader, sentences, temperature)
        return EmbeddingTeacher(model, reader, sentences)
    inputs, _ = data.tensors()  # distillation needs no labels
    return LogitTeacher(model, inputs, temperature)


class LogitTeacher:
    """A classifier's logits; the loss is KL at ``temperature`` (Hinton et al.)."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, temperature: float) -> None:
        self.inputs = inputs
        self.temperature = temperature
        self.pool, self.logits = inputs, predict(model, inputs)
        check_classes(self.logits)  # the softmax of one logit is 1 whatever it is: nothing to distil
        self.size = len(self.pool)

    def add_mixtures(self, model: nn.Module, per_sample: int, generator: torch.Generator) -> None:
        """Train also on ``per_sample`` · n mixtures of two calibration inputs, with the dense model's logits on
        them, computed once (float inputs only): 1024 samples then cover more of the input space."""
        if per_sample == 0 or not self.inputs.is_floating_point():
            return
        n = per_sample * len(self.inputs)
        first, second = (torch.randint(0, len(self.inputs), (n,), generator=generator) for _ in range(2))
        share = MIX_SHARE * torch.rand(n, generator=generator).view(-1, *[1] * (self.inputs.dim() - 1))
        mixed = (1 - share) * self.inputs[first] + share * self.inputs[second]
        self.pool, self.logits = torch.cat([self.inputs, mixed]), torch.cat([self.logits, predict(model, mixed)])
        self.size = len(self.pool)

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.size, (min(size, self.size),), generator=generator)

    def chunks(self, size: int) -> list[torch.Tensor]:
        return list(torch.arange(len(self.inputs)).split(size))

    def sensitivity_loss(self, outputs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Cross-entropy on the dense model's predicted classes."""
        return F.cross_entropy(outputs, self.logits[idx].argmax(1))

    def outputs(self, model: nn.Module, idx: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        return model(self.pool[idx]) if params is None else functional_call(model, params, (self.pool[idx],))

    def loss(self, outputs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return distillation_loss(outputs, self.logits[idx], self.temperature)

    def score(self, model: nn.Module) -> float:
        return float(distillation_loss(predict(model, self.inputs), self.logits[: len(self.inputs)], self.temperature))

    def recalibrate(self, model: nn.Module) -> None:
        recalibrate_batchnorm(model, self.inputs)


class _SentenceTeacher:
    """What teachers on calibration sentences share: batches of sentences of similar length, no mixtures, and
    running statistics re-estimated on the sentences."""

    def __init__(self, reader: TextEncoder | TokenPredictor, sentences: list[str]) -> None:
        self.reader = reader
        self.sentences = sentences
        self.size = len(sentences)
        self.by_length = torch.tensor(sorted(range(self.size), key=lambda i: len(sentences[i])))

    def batch(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """Sentences of similar length (a random window of them sorted by length): a batch then carries little
        padding, which would cost as much as the text itself (fortunes of 20-400 characters). The shortest and
        longest ``size`` sentences fall in fewer windows, so they are drawn less often."""
        size = min(size, self.size)
        start = int(torch.randint(0, self.size - size + 1, (1,), generator=generator))
        return self.by_length[start : start + size]

    def chunks(self, size: int) -> list[torch.Tensor]:
        return list(self.by_length.split(size))

    def add_mixtures(self, model: nn.Module, per_sample: int, generator: torch.Generator) -> None:
        """Token ids do not mix: the calibration sentences are the whole training set."""

    def tokenized(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.reader.tokenize([self.sentences[i] for i in idx.tolist()])

    def recalibrate(self, model: nn.Module) -> None:
        """Transformers normalise per token and keep no running statistics; a model with BatchNorm has them
        re-estimated on the calibration sentences."""
        chunks = [self.sentences[i : i + 64] for i in range(0, self.size, 64)]
        running_statistics(model, lambda: [model(**self.reader.tokenize(chunk)) for chunk in chunks])


class EmbeddingTeacher(_SentenceTeacher):
    """A sentence encoder's unit-length embeddings, pooled as its directory declares; the loss is the mean
    cosine distance, 1 − cos, the quantity netpress's fidelity measures."""

    def __init__(self, model: nn.Module, encoder: TextEncoder, sentences: list[str]) -> None:
        super().__init__(encoder, sentences)
        self.embeddings = encoder.embed(model, sentences)

    def sensitivity_loss(self, outputs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """In-batch retrieval: each sentence's embedding must pick the dense model's embedding of the same
        sentence among the batch's (cross-entropy on cosines × ``RETRIEVAL_SCALE``), the contrastive loss
        sentence encoders such as MiniLM are trained with; the neighbours a sentence is confused with make
        its gradient non-zero."""
        similarities = RETRIEVAL_SCALE * outputs @ self.embeddings[idx].T
        return F.cross_entropy(similarities, torch.arange(len(idx)))

    def outputs(self, model: nn.Module, idx: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        return self.reader.encode(model, self.tokenized(idx), params)

    def loss(self, outputs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return 1 - (outputs * self.embeddings[idx]).sum(dim=1).mean()

    def score(self, model: nn.Module) -> float:
        return float(self.loss(self.reader.embed(model, self.sentences), torch.arange(self.size)))


class TokenTeacher(_SentenceTeacher):
    """A causal language model's next-token distributions; the loss is their KL divergence from the dense model's
    at ``temperature``, token by token. The dense model's logits are computed per batch, without gradients: a
    vocabulary's logits at every calibration token would not fit in memory. The methods train a copy of the
    model, so the model itself is the dense one."""

    def __init__(self, model: nn.Module, predictor: TokenPredictor, sentences: list[str], temperature: float) -> None:
        super().__init__(predictor, sentences)
        self.temperature = temperature
        self.dense = model
        if not any(len(predictor.targets(self.tokenized(idx))) for idx in self.chunks(64)):  # tokenized, not run
            raise DataError(
                "the calibration sentences hold no token to predict (each is one token or less): give texts of a few words"
            )

    def outputs(self, model: nn.Module, idx: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        return self.reader.logits(model, self.tokenized(idx), params)

    def _dense_logits(self, idx: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), kept_modes(self.dense):
            return self.reader.logits(self.dense.eval(), self.tokenized(idx))

    def loss(self, outputs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if not len(outputs):  # sentences of one token predict nothing: no loss rather than NaN
            return outputs.sum()
        return distillation_loss(outputs, self._dense_logits(idx), self.temperature)

    def sensitivity_loss(self, outputs: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The language-modelling loss on the text itself: cross-entropy of the next tokens."""
        if not len(outputs):  # sentences of one token predict nothing: no loss rather than NaN
            return outputs.sum()
        return F.cross_entropy(outputs, self.reader.targets(self.tokenized(idx)))

    def score(self, model: nn.Module) -> float:
        """The loss over every calibration token (a mean over tokens, as each batch's is)."""
        total, tokens = 0.0, 0
        with torch.no_grad():
            for idx in self.chunks(64):
                outputs = self.outputs(model, idx)
                if len(outputs):
                    total, tokens = total + float(self.loss(outputs, idx)) * len(outputs), tokens + len(outputs)
        return total / max(tokens, 1)
