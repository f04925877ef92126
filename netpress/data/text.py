"""English sentences from Debian's ``fortunes``: the text an encoder's fidelity is measured on.

An encoder is measured against its own uncompressed self, so the text needs no labels; netpress never
calibrates on it, so it has one split, ``test``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

from netpress.errors import DataError

FORTUNES_ENV = "NETPRESS_FORTUNES"
FORTUNES_DEFAULT = "/usr/share/games/fortunes"
FORTUNES_INSTALL = "sudo apt-get install fortunes"
TEXT_DATASETS = ("fortunes",)
FIDELITY_SENTENCES = 2000  # the test split: this many distinct fortunes, drawn with seed 0


def fortune_sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct fortunes (whitespace-normalised, '%' separators stripped, 20–400 characters), drawn with ``seed``."""
    root = Path(os.environ.get(FORTUNES_ENV, FORTUNES_DEFAULT))
    texts = set()
    files = sorted(p for p in root.glob("*") if p.is_file() and not p.suffix) if root.is_dir() else []
    for path in files:
        for block in path.read_text(errors="ignore").split("\n%\n"):
            text = " ".join(block.replace("%", " ").split())
            if 20 <= len(text) <= 400:
                texts.add(text)
    if len(texts) < n:
        raise DataError(
            f"{root} holds {len(texts)} usable fortunes, {n} are needed: install Debian's English fortunes "
            f"(`{FORTUNES_INSTALL}`) or point {FORTUNES_ENV} at a folder of fortune files"
        )
    return random.Random(seed).sample(sorted(texts), n)


def load_sentences(name: str) -> list[str]:
    """The sentences of a text dataset by name: its evaluation sample (its only split)."""
    if name not in TEXT_DATASETS:
        raise DataError(f"unknown text dataset {name!r}; available: {', '.join(TEXT_DATASETS)}")
    return fortune_sentences(FIDELITY_SENTENCES)
