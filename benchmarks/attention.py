"""nn.MultiheadAttention's packed in-projection coded like a Linear weight (since commit 41e3385) against
stored raw (``keep=["….in_proj_weight"]``, what every weight method did before), on a small
Transformer-encoder classifier for Fashion-MNIST.

The model reads the 28 rows of an image as 28 tokens of 28 pixels: a Linear embedding to d_model 64, a
learned position table, ``--layers`` ``nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True)``,
a mean over the tokens and a Linear head. It is trained here, seeded (``torch.manual_seed(0)``, Adam, batches
of 128, ``--epochs`` over the training split), as no other benchmark caches a trained vision model. Each
setting then runs twice through ``netpress.press`` with the same budget: the in-projections coded (the
default) and kept raw. A sparsity target counts the coded weights, so at the same sparsity the coded rows prune
a third more weights; the ratio targets compare the two at the same file size. Calibration: 1,024 training
images, seed 0; accuracy and agreement from the written file on the test split.

    .venv/bin/python benchmarks/attention.py [--layers 2] [--epochs 4] [--threads 2]
        [--settings uniform-8,uniform-4,lamp-50,lamp-80,fcpts-50,fcpts-80,lamp-x2.3,fcpts-x2.3,lamp-x4.5,fcpts-x4.5,
                    l2-5,l2-8,l2-16]
        [--name attention]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NETPRESS_QUIET", "1")

from common import regenerate_results_md, timed_press, write_result  # noqa: E402

import netpress  # noqa: E402
from netpress import Budget, ModelHandle  # noqa: E402
from netpress.data import load_dataset  # noqa: E402
from netpress.errors import BudgetError  # noqa: E402
from netpress.evaluate import predict  # noqa: E402
from netpress.methods import FCPTS, L2, MagnitudePruning, UniformQuantization, compressible_weights  # noqa: E402

D_MODEL, HEADS, FEEDFORWARD, ROWS = 64, 4, 128, 28
BATCH, LR = 128, 1e-3
SETTINGS = {
    "uniform-8": ("uniform 8-bit per channel", lambda: [UniformQuantization(8, per_channel=True)], None),
    "uniform-4": ("uniform 4-bit per channel", lambda: [UniformQuantization(4, per_channel=True)], None),
    "lamp-50": ("magnitude LAMP 50 %", lambda: [MagnitudePruning("lamp")], Budget(sparsity=0.5)),
    "lamp-80": ("magnitude LAMP 80 %", lambda: [MagnitudePruning("lamp")], Budget(sparsity=0.8)),
    "fcpts-50": ("FCPTS 50 %", lambda: [FCPTS()], Budget(sparsity=0.5)),
    "fcpts-80": ("FCPTS 80 %", lambda: [FCPTS()], Budget(sparsity=0.8)),
    # The same file size: the sparsity each file needs is searched (a share the raw in-projections leave reachable,
    # and one they do not).
    "lamp-x2.3": ("magnitude LAMP at ratio 2.3", lambda: [MagnitudePruning("lamp")], Budget(ratio=2.3)),
    "fcpts-x2.3": ("FCPTS at ratio 2.3", lambda: [FCPTS()], Budget(ratio=2.3)),
    "lamp-x4.5": ("magnitude LAMP at ratio 4.5", lambda: [MagnitudePruning("lamp")], Budget(ratio=4.5)),
    "fcpts-x4.5": ("FCPTS at ratio 4.5", lambda: [FCPTS()], Budget(ratio=4.5)),
    "l2-5": ("L² ratio 5", lambda: [L2()], Budget(ratio=5)),  # one the raw in-projections leave reachable
    "l2-8": ("L² ratio 8", lambda: [L2()], Budget(ratio=8)),
    "l2-16": ("L² ratio 16", lambda: [L2()], Budget(ratio=16)),
}
CODED, RAW = "coded", "raw (kept)"
COLUMNS = {
    "in_proj": "coded: the attention in-projections go through the method (the default since commit 41e3385); "
    "raw (kept): press(keep=['….in_proj_weight']) stores them as floats, as before it (fp32; "
    "fp16 under L², which stores what it does not code in fp16 by default)",
    "file_bytes": "bytes of the .press file on disk",
    "in_proj_bytes": "of them, the in-projection weights' streams (coded, or raw floats)",
    "ratio": "bytes of the model's fp32 safetensors file / file_bytes",
    "sparsity": "zeros among the weights the method coded, in the file (the kept in-projections are not among them)",
    "accuracy": "Fashion-MNIST test accuracy (%) of the model loaded back from the file",
    "agreement": "test images (%) on which the file's top-1 class is the dense model's",
    "seconds": "compression and writing the file, not the evaluation",
    "refused": "press refused the budget before compressing: its message",
}


class RowEncoder(nn.Module):
    """A Transformer-encoder classifier over the rows of a 1×28×28 image, one token per row."""

    def __init__(self, layers: int) -> None:
        super().__init__()
        self.embed = nn.Linear(ROWS, D_MODEL)
        self.position = nn.Parameter(torch.zeros(1, ROWS, D_MODEL))
        layer = nn.TransformerEncoderLayer(D_MODEL, HEADS, FEEDFORWARD, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(D_MODEL, 10)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(x.shape[0], ROWS, ROWS)) + self.position
        return self.head(self.encoder(tokens).mean(1))


def train(build: Callable[[], nn.Module], epochs: int) -> tuple[nn.Module, float]:
    """The classifier ``build`` makes, trained seeded on the training split, and the seconds it took."""
    torch.manual_seed(0)
    model = build()
    inputs, labels = load_dataset("fashion-mnist", "train").tensors
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    steps = epochs * -(-len(inputs) // BATCH)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=steps)
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(inputs))
        total = 0.0
        for i in range(0, len(inputs), BATCH):
            batch = order[i : i + BATCH]
            loss = nn.functional.cross_entropy(model(inputs[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        print(f"epoch {epoch + 1}: loss {total / len(inputs):.4f} ({time.perf_counter() - start:.0f} s)", flush=True)
    return model.eval(), time.perf_counter() - start


def chosen_settings(parser: argparse.ArgumentParser, settings: str, table: dict) -> list[str]:
    """The keys ``--settings`` names, each checked against ``table``."""
    chosen = settings.split(",")
    unknown = set(chosen) - set(table)
    if unknown:
        parser.error(f"unknown --settings {sorted(unknown)}; choose from {list(table)}")
    return chosen


def dense_predictions(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The Fashion-MNIST test split's inputs and labels, the dense model's top-1 classes on it, and its accuracy."""
    inputs, labels = load_dataset("fashion-mnist", "test").tensors
    with torch.no_grad():
        classes = predict(model, inputs).argmax(1)
    return inputs, labels, classes, (classes == labels).float().mean().item()


def file_row(setting: str, column: str, mode: str, report: dict, **extra) -> dict:
    """A result row from a press report: the file's bytes (``extra`` after them), ratio, sparsity, accuracy and time."""
    return {
        "setting": setting,
        column: mode,
        "file_bytes": report["file_bytes"],
        **extra,
        "ratio": round(report["ratio"], 2),
        "sparsity": round(report["sparsity"], 4),
        "accuracy": round(100 * report["accuracy_after"], 2),
        "agreement": round(100 * report["agreement"], 2),
        "seconds": round(report["seconds"], 1),
    }


def coded_against_raw(
    handle: ModelHandle,
    settings: dict,
    chosen: list[str],
    column: str,
    raw_keep: list[str],
    check: Callable[[str, str, dict, Path], dict],
) -> list[dict]:
    """Each chosen setting pressed twice, the layers under study coded and kept raw (``keep=raw_keep``): a row per
    file (``file_row``, with the extra columns ``check(key, mode, report, path)`` returns after its asserts on the
    file), or the refusal of a ratio the raw layers alone exceed."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for key in chosen:
            setting, methods, budget = settings[key]
            for mode, keep in ((CODED, []), (RAW, raw_keep)):
                out = Path(tmp) / f"{key}-{'raw' if keep else 'coded'}.press"
                try:
                    report, _ = timed_press(handle, methods(), budget, out, keep=keep)
                except BudgetError as exc:
                    rows.append({"setting": setting, column: mode, "refused": str(exc)})
                else:
                    rows.append(file_row(setting, column, mode, report, **check(key, mode, report, out)))
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2, help="encoder layers")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--name", default="attention")
    args = parser.parse_args()
    chosen = chosen_settings(parser, args.settings, SETTINGS)
    torch.set_num_threads(args.threads)

    model, train_seconds = train(lambda: RowEncoder(args.layers), args.epochs)
    dense_accuracy = dense_predictions(model)[3]
    print(f"dense test accuracy {100 * dense_accuracy:.2f} % after {train_seconds:.0f} s of training", flush=True)

    attention = [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    params = sum(p.numel() for p in model.parameters())
    weights = compressible_weights(model)
    coded_numel = sum(w.numel() for w in weights.values())
    in_proj = sum(w.numel() for n, w in weights.items() if n.endswith("in_proj_weight"))
    assert len(attention) == args.layers and in_proj == args.layers * 3 * D_MODEL * D_MODEL

    handle = ModelHandle(model, {}, "fashion-mnist", (1, ROWS, ROWS))
    reports, listed, stored = {}, {}, {}

    def check(key: str, mode: str, report: dict, out: Path) -> dict:
        kept = mode == RAW
        assert sorted(report.get("kept_layers", [])) == (attention if kept else []), report.get("kept_layers")
        raw_attention = set(report["uncompressed_layers"]) & set(attention)
        assert not raw_attention, f"listed as stored raw: {sorted(raw_attention)}"
        listed.update(report["uncompressed_layers"])
        tensors = [t for t in netpress.inspect(out)["tensors"] if t["name"].endswith("in_proj_weight")]
        assert len(tensors) == args.layers and all((t["kind"] == "raw") == kept for t in tensors)
        stored[(key, mode)] = "/".join(sorted({f"{t['kind']} {t.get('dtype', '')}".strip() for t in tensors}))
        reports[(key, mode)] = report
        return {"in_proj_bytes": sum(t["bytes"] for t in tensors)}

    raw_keep = [f"{name}.in_proj_weight" for name in attention]
    rows = coded_against_raw(handle, SETTINGS, chosen, "in_proj", raw_keep, check)

    notes = [
        f"Model: {args.layers} encoder layers, {params:,} parameters (an fp32 safetensors file of "
        f"{next(iter(reports.values()))['original_bytes']:,} bytes, the ratios' reference); the in-projections' "
        f"weights (in_proj_weight, {args.layers} × 3·64×64) hold {in_proj:,} of them: {100 * in_proj / params:.1f} % of "
        f"all parameters and {100 * in_proj / coded_numel:.1f} % of the {coded_numel:,} weights the methods code when "
        "they are coded. Biases, LayerNorms and the position table are stored raw in both rows.",
        f"Dense model: {100 * dense_accuracy:.2f} % test accuracy after {args.epochs} epochs of training "
        f"({train_seconds:.0f} s on {args.threads} threads; Adam, one-cycle learning rate up to {LR:g}, batches of "
        f"{BATCH}, torch.manual_seed(0)).",
        "Coded against raw, per setting (raw bytes / coded bytes; accuracy coded minus raw, points): "
        + "; ".join(_difference(SETTINGS[k][0], reports.get((k, CODED)), reports.get((k, RAW))) for k in chosen)
        + ".",
        "How the file holds the in-projections, raw rows: "
        + "; ".join(f"{SETTINGS[k][0]} {v}" for (k, mode), v in stored.items() if mode == RAW)
        + " (L² stores the tensors it does not code in fp16 by default, L2(raw_dtype='fp16'); the other methods in fp32).",
        "report['uncompressed_layers'] (layers holding a weight matrix no method codes) in every run: "
        + (", ".join(f"{name or '(the model itself)'}: {v['type']}, {v['params']:,} parameters" for name, v in listed.items()))
        + (" (the learned position table, a parameter of the model itself)" if "" in listed else "")
        if listed
        else "report['uncompressed_layers'] was empty in every run.",
        "Since commit 1bb3470 a per-layer allocation (LAMP's scores, FCPTS's thresholds) counts the query, key and value "
        "rows of an in-projection as three layers. Recorded at ab8170e, before it, the coded rows read: LAMP at 50 / 80 % "
        "82.44 / 34.44 %, FCPTS at 50 / 80 % 86.87 / 62.42 %, at ratio 2.3 LAMP 81.91 % and FCPTS 86.70 %, at ratio 4.5 "
        "LAMP 41.62 % and FCPTS 66.38 % (section attention-allocation compares the magnitude allocations both ways).",
        "A sparsity budget counts the coded weights only, so the raw rows prune the other layers to the same share and "
        "their file holds the in-projections dense; an L² ratio budget counts the whole file, so the raw rows code the "
        "other layers harder to make room for the in-projections as floats.",
    ]
    write_result(
        args.name,
        {
            "description": "nn.MultiheadAttention's packed query/key/value projection (in_proj_weight) coded by each "
            "method, against stored raw (press(keep=['….in_proj_weight']), the behaviour before commit "
            f"41e3385), on a {args.layers}-layer nn.TransformerEncoder classifier for Fashion-MNIST trained here (rows "
            "as tokens, d_model 64, 4 heads). Same method and budget in both rows of a setting; default method settings; "
            f"calibration 1,024 training images, seed 0; accuracy from the written file. Threads: {args.threads}.",
            "columns": COLUMNS,
            "notes": notes,
            "rows": rows,
        },
    )
    regenerate_results_md()


def _difference(setting: str, coded: dict | None, raw: dict | None) -> str:
    if coded is None or raw is None:
        return f"{setting}: {'raw' if raw is None else 'coded'} refused (see its row)"
    return (
        f"{setting} {raw['file_bytes'] / coded['file_bytes']:.2f}× bytes, "
        f"{100 * (coded['accuracy_after'] - raw['accuracy_after']):+.2f} points"
    )


if __name__ == "__main__":
    main()
