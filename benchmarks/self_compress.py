"""Safety-guided self-compression on the zoo's LeNets: file size, accuracy, and what the preservation set buys.

Each model is retrained with ``SelfCompression`` (learned bit depth per output channel) on the whole
Fashion-MNIST training split, written, read back and measured on the test split: overall, and on the
*hard* test images (those the dense model gives under 80 % to its top class). In the same run, on the same
model: the same method without its preservation set (the paper's ablation), L² at the self-compression
file's size (post-training, 1,024 calibration images), and uniform per-channel quantization at the fewest
bits whose file is at least as large (one depth for every channel, no retraining).

    .venv/bin/python benchmarks/self_compress.py [--models lenet300,lenet5] [--gammas 0.2 | --ratios 30] [--steps 3000]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import press_row, regenerate_results_md, timed_press, write_result  # noqa: E402

from netpress import api  # noqa: E402
from netpress.budget import Budget  # noqa: E402
from netpress.codec import to_bytes  # noqa: E402
from netpress.evaluate import predict  # noqa: E402
from netpress.methods import L2, SelfCompression, UniformQuantization  # noqa: E402

HARD = 0.8  # a test image is hard when the dense model gives its top class less than this


def measured(name: str, method: str, setting: str, report: dict, seconds: float, hard: torch.Tensor, test) -> dict:
    """A result row; the hard-image accuracy is measured on the model read back from the written file."""
    model = api.load(report["file"], api.load_model(f"zoo:{name}"))
    correct = predict(model, test.tensors[0][hard]).argmax(dim=1) == test.tensors[1][hard]
    rows = report["layers"].get("self-compress", [{}])
    preserved = rows[0].get("preservation", {}).get("accuracy_after")
    return {
        **press_row(name, method, setting, report, seconds),
        "params": report["params_after"],
        "hard_accuracy": round(100 * float(correct.float().mean()), 2),
        "preserved_accuracy": round(100 * preserved, 2) if preserved is not None else None,
    }


def comparison(rows: list[dict]) -> list[str]:
    """One line per guarded self-compression run, against the rows of its model and γ that follow it."""
    lines = []
    for i, sc in enumerate(rows):
        if sc["method"] != "self-compress":
            continue
        peers = {r["method"]: r for r in rows[i + 1 : i + 4]}
        parts = [f"{method} {p['ratio']}× at {p['accuracy']} % (hard {p['hard_accuracy']} %)" for method, p in peers.items()]
        lines.append(
            f"{sc['model']}, {sc['setting']}: self-compression {sc['ratio']}× at {sc['accuracy']} % (hard images "
            f"{sc['hard_accuracy']} %, {sc['accuracy_before'] - sc['accuracy']:.2f} points lost, {sc['seconds']} s); "
            + "; ".join(parts)
        )
    return lines


def compared(name: str, method: SelfCompression, budget: Budget | None, out: Path, test) -> list[dict]:
    """The guarded run, the unguarded one, and the two peers at its size, on one zoo model."""
    dense = api.load_model(f"zoo:{name}").module
    hard = predict(dense, test.tensors[0]).softmax(dim=1).amax(dim=1) < HARD
    setting = f"{f'ratio {budget.ratio:g}' if budget else f'γ {method.gamma:g}'}, {method.steps} steps"
    rows: list[dict] = []

    def run(label: str, methods, budget, detail: str) -> dict:
        report, seconds = timed_press(api.load_model(f"zoo:{name}"), methods, budget, out / f"{name}-{label}.press")
        rows.append(measured(name, label, detail, report, seconds, hard, test))
        print(rows[-1], flush=True)
        return report

    report = run("self-compress", method, budget, f"{setting}, preservation set of {method.preserve}")
    run("self-compress-unguarded", replace(method, preserve=0), budget, f"{setting}, no preservation set")
    ratio = report["original_bytes"] / (report["file_bytes"] - 1)  # strictly smaller than the guarded file
    run("l2", L2(), Budget(ratio=ratio), f"ratio {ratio:.2f} (the self-compression file's size)")
    bits = next(
        (
            b
            for b in range(2, 9)
            if len(to_bytes(api.compress(dense, UniformQuantization(b, per_channel=True)))) >= report["file_bytes"]
        ),
        8,
    )
    run(
        "uniform",
        UniformQuantization(bits, per_channel=True),
        None,
        f"{bits} bits per channel (the fewest at least as large), no retraining",
    )
    print(f"{name}: {int(hard.sum())} hard test images", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--gammas", default=str(SelfCompression.gamma), help="comma-separated γ, one run each")
    parser.add_argument("--ratios", default="", help="comma-separated ratio targets, one run each (instead of --gammas)")
    parser.add_argument("--steps", type=int, default=SelfCompression.steps)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="self-compress")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = api.resolve_dataset("fashion-mnist", "test")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if args.ratios:
            settings = [(SelfCompression(steps=args.steps), Budget(ratio=float(r))) for r in args.ratios.split(",")]
        else:
            settings = [(SelfCompression(gamma=float(g), steps=args.steps), None) for g in args.gammas.split(",")]
        for name, (method, budget) in itertools.product(args.models.split(","), settings):
            rows += compared(name, method, budget, Path(tmp), test)
    write_result(
        args.name,
        {
            "description": (
                "Safety-guided self-compression (retraining with a learned bit depth per output channel on the whole "
                "Fashion-MNIST training split, with a preservation set of 1,000 critical training images) against the "
                "same without the preservation set and against peers, same run, same models. Accuracy on the test "
                f"split of the file read back; hard images: the test images the dense model gives under {HARD:.0%} "
                "to its top class."
            ),
            "columns": {
                "ratio": "fp32 safetensors bytes / file bytes",
                "sparsity": "share of zero weights in the coded layers",
                "params": "parameters of the model read back (self-compression cuts its channels at 0 bits)",
                "accuracy_before": "the zoo model's test accuracy (%)",
                "accuracy": "the written file's test accuracy (%)",
                "hard_accuracy": "the written file's accuracy on the hard test images (%)",
                "preserved_accuracy": "accuracy on the preservation set (training images) after compression (%)",
                "seconds": "wall time of compressing and writing (and measuring) the file",
            },
            "rows": rows,
            "notes": comparison(rows),
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
