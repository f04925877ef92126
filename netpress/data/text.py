"""The text a Hugging Face model is calibrated and measured on: English sentences from Debian's ``fortunes``, or
your own text file (one text per line).

A text model is measured against its own uncompressed self, so the text needs no labels. The ``test`` split is a
fixed sample (seed 0) of the distinct texts: 2,000 fortunes, or a fifth of your file's lines (at least 1, at most 2,000); every
other text is the ``train`` split, where calibration samples are drawn. Texts are distinct, so no calibration text is
also a test text.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from netpress.errors import DataError, file_problem

FORTUNES_ENV = "NETPRESS_FORTUNES"
FORTUNES_DEFAULT = "/usr/share/games/fortunes"
FORTUNES_INSTALL = "sudo apt-get install fortunes"
TEXT_DATASETS = ("fortunes",)
TEXT_FILE_SUFFIX = ".txt"  # your own text: one text per line, UTF-8
TEXT_DATA = f"fortunes or your own {TEXT_FILE_SUFFIX} file (one text per line)"  # what --data takes for a text model
FIDELITY_SENTENCES = 2000  # the test split: this many distinct fortunes, drawn with seed 0
TEST_SHARE = 5  # your file's test split: one text in this many, at most FIDELITY_SENTENCES


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


def is_text_data(name: object) -> bool:
    """Whether ``name`` names text: a text dataset, or a text file by its suffix (which need not exist yet: reading
    it says so)."""
    return isinstance(name, str) and (name in TEXT_DATASETS or name.lower().endswith(TEXT_FILE_SUFFIX))


def _file_texts(path: str) -> list[str]:
    """Every distinct non-empty line of your text file (whitespace-normalised), sorted: the splits then depend on
    which texts the file holds, not on their order."""
    if (problem := file_problem(path)) and os.path.exists(path):  # a pipe would block; a missing file is named below
        raise DataError(f"text file {problem}")
    try:
        lines = Path(path).read_text(encoding="utf-8-sig").splitlines()  # a byte-order mark is not text
    except FileNotFoundError as exc:
        raise DataError(f"no text file at {path}") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    texts = sorted({" ".join(line.split()) for line in lines} - {""})
    if len(texts) < 2:
        raise DataError(
            f"{path} holds {len(texts)} distinct non-empty line{'' if len(texts) == 1 else 's'}; netpress needs at least 2, "
            f"one text per line: 1 in {TEST_SHARE} (at most {FIDELITY_SENTENCES:,}) measures the model, the rest calibrates"
        )
    return texts


def load_sentences(name: str, split: str = "test") -> list[str]:
    """The sentences of a text dataset's split, or of your text file's: ``test`` (the fixed evaluation sample) or
    ``train`` (all the others)."""
    if not is_text_data(name):
        raise DataError(f"unknown text dataset {name!r}; available: {TEXT_DATA}")
    if split not in ("train", "test"):
        raise DataError(f"a text dataset has the splits 'train' and 'test', not {split!r}")
    if name in TEXT_DATASETS:
        texts = _usable_fortunes()
        test = _sample(texts, FIDELITY_SENTENCES, 0)
    else:
        texts = _file_texts(name)
        test = random.Random(0).sample(texts, min(FIDELITY_SENTENCES, max(1, len(texts) // TEST_SHARE)))
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
