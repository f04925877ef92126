"""``netpress demo``: one zoo model in nine settings (quantization, pruning, FCPTS, L², model folding, and a fold
compressed further by L²), one table of real file sizes and accuracy."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from netpress import api
from netpress.budget import Budget
from netpress.compressed import fp32_bytes
from netpress.data import load_dataset
from netpress.data.datasets import FASHION_MNIST_INSTALL
from netpress.errors import DataError, make_output_dir
from netpress.methods import FCPTS, L2, Fold, MagnitudePruning, UniformQuantization

# (label, file name, methods, budget, the file of an earlier setting to start from: None for the model itself)
SETTINGS = [
    ("uniform 8-bit", "uniform8", [UniformQuantization(8)], None, None),
    ("uniform 4-bit", "uniform4", [UniformQuantization(4)], None, None),
    ("magnitude 90 % (global)", "magnitude90", [MagnitudePruning("global")], Budget(sparsity=0.9), None),
    (
        "magnitude 90 % (LAMP) + 5-bit",
        "lamp90-5bit",
        [MagnitudePruning("lamp"), UniformQuantization(5)],
        Budget(sparsity=0.9),
        None,
    ),
    ("magnitude 70 % (ERK) + 4-bit", "erk70-4bit", [MagnitudePruning("erk"), UniformQuantization(4)], Budget(sparsity=0.7), None),
    (
        "FCPTS 90 % + 5-bit (1024 samples)",
        "fcpts90-5bit",
        [FCPTS(iterations=150), UniformQuantization(5)],
        Budget(sparsity=0.9),
        None,
    ),
    ("L² for a 40× smaller file (1024 samples)", "l2-40x", [L2()], Budget(ratio=40), None),
    ("fold 30 % of the parameters (no data)", "fold30", [Fold()], Budget(params=0.3), None),
    ("  then L² 40× of the folded file", "fold30-l2-40x", [L2()], Budget(ratio=40), "fold30"),
]


def _digits_model(console: Console) -> api.ModelHandle:
    """Fallback when Fashion-MNIST is not installed: a small MLP trained on scikit-learn digits in seconds."""
    console.print(
        f"[yellow]Fashion-MNIST is not installed ({FASHION_MNIST_INSTALL}); "
        "demonstrating on scikit-learn digits with a freshly trained MLP instead.[/]",
        markup=True,
    )
    torch.manual_seed(0)
    x, y = load_dataset("digits", "train").tensors
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return api.ModelHandle(model.eval(), {}, "digits", (1, 8, 8))


def _reloaded(path: Path, handle: api.ModelHandle) -> api.ModelHandle:
    """An earlier setting's file as the next stage's input, read back as ``netpress compress FILE`` reads it; the
    digits fallback's model has no architecture netpress can rebuild, so its own module is reshaped to the file."""
    if handle.source.get("zoo"):
        return api.load_model(path)
    return replace(handle, module=api.load(path, handle), first_original_bytes=fp32_bytes(handle.module))


def _spec(handle: api.ModelHandle) -> str:
    """How the command line names the demo's model (the digits fallback's MLP has no name there)."""
    return f"zoo:{handle.source['zoo']}" if handle.source.get("zoo") else "MODEL"


def run_demo(output_dir: Path, console: Console) -> list[dict]:
    make_output_dir(output_dir)
    try:
        load_dataset("fashion-mnist", "test")
        handle = api.load_model("zoo:lenet5")
    except DataError:
        handle = _digits_model(console)
    name = handle.source.get("zoo", "digits-mlp")
    table = Table(title=f"netpress demo — {name} on {handle.dataset} (accuracy measured on the written file)")
    for col in ("method", "bytes", "ratio", "sparsity", "accuracy", "Δ points", "seconds"):
        table.add_column(col, justify="left" if col == "method" else "right")
    reports = []
    for label, filename, methods, budget, start in SETTINGS:
        path = output_dir / f"{filename}.press"
        model = handle if start is None else _reloaded(output_dir / f"{start}.press", handle)
        report = api.press(model, methods, budget, out=path, data=handle.dataset)
        reports.append(report)
        if len(reports) == 1:
            table.add_row(
                "original (fp32 safetensors)",
                f"{report['original_bytes']:,}",
                "1.00×",
                "0.00 %",
                f"{100 * report['accuracy_before']:.2f} %",
                "",
                "",
            )
        table.add_row(  # a later stage's ratio and Δ against the model before the first stage
            label,
            f"{report['file_bytes']:,}",
            f"{report.get('overall_ratio', report['ratio']):.2f}×",
            f"{100 * report['sparsity']:.2f} %",
            f"{100 * report['accuracy_after']:.2f} %",
            f"{100 * (report['accuracy_after'] - reports[0]['accuracy_before']):+.2f}",
            f"{report['seconds']:.2f}",
        )
    console.print(table)
    for (label, *_), report in zip(SETTINGS, reports):
        if report.get("survivors_rounded_to_zero"):
            console.print(
                f"{label}: {report['survivors_rounded_to_zero']:,} weights pruning kept rounded to zero when quantized "
                "(under half a step), hence a sparsity above the target"
            )
    console.print(f"Files are in {output_dir}/; look inside one with: netpress inspect {path}")
    console.print(
        "The two retraining methods take minutes each on two cores, so they are not in this table; try "
        f"netpress compress {_spec(handle)} --method sws --ratio 100 --data {handle.dataset} -o sws.press, or "
        f"--method self-compress --ratio 30."
    )
    return reports
