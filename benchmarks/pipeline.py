"""Composition: does a structural or a sparsity stage before L² buy accuracy at the same file size?

For each model and each overall ratio R (the original fp32 safetensors bytes over the final file's
bytes), three pipelines aim at the same final size:

- ``l2``: L² alone at ratio R;
- ``fold → l2``: fold (Ward, adaptive allocation, BatchNorm statistics repaired from the calibration images) removing a
  share of the parameters, written to a .press file, reloaded, then L² aimed at 1/R of the *original*
  fp32 bytes (``Budget(ratio=R, reference_bytes=...)``);
- ``fcpts → l2``: FCPTS at a global sparsity, written, reloaded, then L² the same way (L² keeps
  FCPTS's zeros and may add more).

Every stage calibrates on the same 1,024 training images (seed 0); accuracy is measured on the model
loaded back from the final file. The first stage runs once per model; its seconds are added to each
of its rows.

    .venv/bin/python benchmarks/pipeline.py [--models resnet20,vgg] [--ratios 20,30,40] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NETPRESS_QUIET", "1")

from common import regenerate_results_md, write_result  # noqa: E402

from netpress import Budget, api  # noqa: E402
from netpress.methods import FCPTS, L2, Fold  # noqa: E402

# Fold's share of parameters: the largest level of the fold section where the data repair keeps the
# model within about 0.7 points of the original (ResNet-20 20 %, VGG 30 %).
FOLD_PARAMS = {"resnet20": 0.2, "vgg": 0.3}
FCPTS_SPARSITY = 0.5  # FCPTS and its best baseline stay within 0.1 point of dense here (section sparsity)
CALIB = 1024


def first_stage(handle, method, budget: Budget, path: Path) -> tuple[api.ModelHandle, float, dict]:
    """Write the first stage's file and reload it as the next stage's input."""
    start = time.perf_counter()
    report = api.press(handle, [method], budget, out=path, calib=CALIB, seed=0)
    return api.load_model(path), time.perf_counter() - start, report


def l2_row(handle, ratio: float, reference: int, path: Path) -> tuple[dict, float]:
    """L² aimed at ``reference / ratio`` bytes, whatever the handle's own size."""
    start = time.perf_counter()
    report = api.press(handle, [L2()], Budget(ratio=ratio, reference_bytes=reference), out=path, calib=CALIB, seed=0)
    row = {
        "file_bytes": report["file_bytes"],
        "overall_ratio": round(reference / report["file_bytes"], 2),
        "target_met": report["file_bytes"] <= reference // ratio,
        "accuracy": round(100 * report["accuracy_after"], 2),
    }
    return row, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet20,vgg")
    parser.add_argument("--ratios", default="20,30,40")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="pipeline")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ratios = [float(r) for r in args.ratios.split(",")]
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name in args.models.split(","):
            handle = api.load_model(f"zoo:{name}")
            reference = api.fp32_bytes(handle.module)
            base = api.evaluate(handle, api.resolve_dataset(handle.dataset, "test", handle.input_shape)).accuracy
            params = FOLD_PARAMS.get(name, 0.2)
            folded, fold_s, fold_report = first_stage(
                handle, Fold(repair="data"), Budget(params=params), out / f"{name}-fold.press"
            )
            sparse, fcpts_s, fcpts_report = first_stage(
                handle, FCPTS(), Budget(sparsity=FCPTS_SPARSITY), out / f"{name}-fcpts.press"
            )
            notes.append(
                f"{name} (fp32 {reference:,} B, {100 * base:.2f} %): fold {params:.0%} of the parameters with data "
                f"repair gives {100 * fold_report['accuracy_after']:.2f} % in {fold_s:.0f} s; FCPTS at "
                f"{FCPTS_SPARSITY:.0%} gives {100 * fcpts_report['accuracy_after']:.2f} % in {fcpts_s:.0f} s"
            )
            stages = [("l2", handle, 0.0), (f"fold {params:.0%} → l2", folded, fold_s)]
            stages.append((f"fcpts {FCPTS_SPARSITY:.0%} → l2", sparse, fcpts_s))
            for ratio in ratios:
                for label, source, earlier_s in stages:
                    path = out / f"{name}-{label.split()[0]}-{ratio:g}.press"
                    row, seconds = l2_row(source, ratio, reference, path)
                    rows.append(
                        {
                            "model": name,
                            "target_ratio": ratio,
                            "pipeline": label,
                            **row,
                            "loss_pts": round(100 * base - row["accuracy"], 2),
                            "seconds": round(earlier_s + seconds, 1),
                        }
                    )
                    print(rows[-1], flush=True)
    for name in args.models.split(","):
        for ratio in ratios:
            cell = [r for r in rows if r["model"] == name and r["target_ratio"] == ratio]
            best = max(cell, key=lambda r: r["accuracy"])
            alone = next(r for r in cell if r["pipeline"] == "l2")
            notes.append(
                f"{name} at {ratio:g}×: best {best['pipeline']} {best['accuracy']} %"
                + ("" if best is alone else f", {best['accuracy'] - alone['accuracy']:+.2f} points over L² alone")
            )
    notes.append(
        "A gap of a few hundredths of a point is a handful of the 10,000 test images: within noise (see the "
        "sparsity section's McNemar notes)."
    )
    write_result(
        args.name,
        {
            "description": "Composed pipelines against L² alone at the same final file size, no fine-tuning.",
            "columns": {
                "target_ratio": "original fp32 safetensors bytes / target bytes of the final file",
                "pipeline": "stages in order; each stage's file is reloaded as the next stage's input",
                "overall_ratio": "original fp32 bytes / final file bytes",
                "accuracy": "Fashion-MNIST test accuracy (%) of the model loaded from the final file",
                "loss_pts": "points below the original model",
                "seconds": "wall of every stage, writing and measuring included",
            },
            "rows": rows,
            "notes": notes,
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
