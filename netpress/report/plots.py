"""Plots written next to a report, .png, .svg or .pdf by suffix (matplotlib, non-interactive backend)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from netpress.codec import write_file  # noqa: E402
from netpress.errors import OutputError  # noqa: E402


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Render ``fig`` in memory, in the format its suffix names (PNG without one), and write it through
    a temp file and a rename (``codec.write_file``), so a failed write never leaves half an image; the
    figure is closed either way."""
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=dpi)
    except ValueError as exc:  # a format matplotlib cannot write
        raise OutputError(f"cannot write the plot {path}: {exc}") from exc
    finally:
        plt.close(fig)
    write_file(path, buffer.getvalue())


def plot_allocation(rows: list[dict], path: str | os.PathLike, title: str = "per-layer sparsity") -> None:
    """Bars of each layer's sparsity; when rows carry ``erk_sparsity``, ERK's allocation beside it.
    Rows with ``bits_per_weight`` (L²: coded) or ``bit_depth`` (self-compression: learned, the mean over the
    layer's channels) get a panel of bits beside the sparsity; channel groups (fold, channel-l1) get the share of
    each group's channels removed."""
    if all("bits_per_weight" in r for r in rows) or all("bit_depth" in r for r in rows):
        _plot_bits(rows, path, title)
        return
    if any("group" in r for r in rows):
        _plot_groups([r for r in rows if "channels_after" in r], path, title)
        return
    names = [r["name"].removesuffix(".weight") for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 4))
    has_erk = all("erk_sparsity" in r for r in rows)
    width = 0.4 if has_erk else 0.8
    ax.bar([i - width / 2 if has_erk else i for i in x], [r["sparsity"] for r in rows], width, label="chosen")
    if has_erk:
        ax.bar([i + width / 2 for i in x], [r["erk_sparsity"] for r in rows], width, label="ERK")
        ax.legend()
    ax.set_xticks(list(x), names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("sparsity")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    save_figure(fig, path)


def _plot_bits(rows: list[dict], path: str | os.PathLike, title: str) -> None:
    names = [r["name"].removesuffix(".weight") for r in rows]
    x = list(range(len(rows)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.45 * len(rows) + 2), 6), sharex=True)
    coded = all("bits_per_weight" in r for r in rows)
    top.bar(x, [r["bits_per_weight" if coded else "bit_depth"] for r in rows], 0.4, label="coded" if coded else "bit depth")
    if all("estimated_bits_per_weight" in r for r in rows):
        top.bar([i + 0.4 for i in x], [r["estimated_bits_per_weight"] for r in rows], 0.4, label="rate estimate")
        top.legend(fontsize=8)
    top.set_ylabel("bits per weight")
    top.set_title(title)
    bottom.bar(x, [r["sparsity"] for r in rows], 0.8)
    bottom.set_ylabel("sparsity")
    bottom.set_ylim(0, 1)
    bottom.set_xticks(x, names, rotation=60, ha="right", fontsize=8)
    save_figure(fig, path)


def _plot_groups(rows: list[dict], path: str | os.PathLike, title: str) -> None:
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows) + 2), 4))
    ax.bar(x, [1 - r["channels_after"] / r["channels"] for r in rows], 0.8)
    ax.set_xticks(x, [r["group"] for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("share of channels removed")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    save_figure(fig, path)


def plot_curve(
    series: dict[str, list[tuple[int, float]]],
    path: str | os.PathLike,
    title: str = "accuracy vs file size",
    ylabel: str = "test accuracy (%)",
) -> None:
    """A measured quality (a fraction, shown in %) against file bytes (log axis), one line per series of
    ``(bytes, quality)`` points."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in series.items():
        points = sorted(points)
        ax.plot([p[0] for p in points], [100 * p[1] for p in points], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("file bytes")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    save_figure(fig, path)
