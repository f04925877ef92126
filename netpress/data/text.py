"""English sentences from Debian's ``fortunes``: the text an encoder is calibrated and measured on.

An encoder is measured against its own uncompressed self, so the text needs no labels. The ``test`` split is a
fixed sample of 2,000 fortunes (seed 0); every other usable fortune is the ``train`` split, where calibration
samples are drawn.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netpress.errors import DataError

FORTUNES_ENV = "NETPRESS_FORTUNES"
FORTUNES_DEFAULT = "/usr/share/games/fortunes"
FORTUNES_INSTALL = "sudo apt-get install fortunes"
TEXT_DATASETS = ("fortunes",)
FIDELITY_SENTENCES = 2000  # the test split: this many distinct fortunes, drawn with seed 0


def _usable_fortunes() -> list[str]:
    """Every distinct fortune (whitespace-normalised, '%' separators stripped, 20–400 characters), sorted."""
    root = Path(os.environ.get(FORTUNES_ENV, FORTUNES_DEFAULT))
    texts = set()
    files = sorted(p for p in root.glob("*") if p.is_file() and not p.suffix) if root.is_dir() else []
    for path in files:
        for block in path.read_text(errors="ignore").split("\n%\n"):
            text = " ".join(block.replace("%", " ").split())
            if 20 <= len(text) <= 400:
                texts.add(text)
    return sorted(texts)


def _sample(texts: list[str], n: int, seed: int) -> list[str]:
    if len(texts) < n:
        root = os.environ.get(FORTUNES_ENV, FORTUNES_DEFAULT)
        raise DataError(
            f"{root} holds {len(texts)} usable fortunes, {n} are needed: install Debian's English fortunes "
            f"(`{FORTUNES_INSTALL}`) or point {FORTUNES_ENV} at a folder of fortune files"
        )
    return random.Random(seed).sample(texts, n)


def fortune_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct usable fortunes drawn with ``seed``."""
    return _sample(_usable_fortunes(), n, seed)


def load_sentences(name: str, split: str = "test") -> list[str]:
    """The sentences of a text dataset's split: ``test`` (the fixed evaluation sample) or ``train`` (all the others)."""
    if name not in TEXT_DATASETS:
        raise DataError(f"unknown text dataset {name!r}; available: {', '.join(TEXT_DATASETS)}")
    if split not in ("train", "test"):
        raise DataError(f"a text dataset has the splits 'train' and 'test', not {split!r}")
    texts = _usable_fortunes()
    test = _sample(texts, FIDELITY_SENTENCES, 0)
    if split == "test":
        return test
    held_out = set(test)
    return [text for text in texts if text not in held_out]


@dataclass(frozen=True)
class Sentences:
    """A text split as a map-style dataset of strings, with the encoder (a directory's tokenizer and pooling) that
    turns them into a model's inputs and embeddings: what a method calibrating a Hugging Face encoder needs."""

    texts: list[str]
    split: str
    encoder: Any = None  # a netpress.hf.TextEncoder

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> str:
        return self.texts[index]
