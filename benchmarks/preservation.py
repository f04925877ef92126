"""Your own preservation set: does self-compression keep the examples you hand it?

The user's critical examples: ``--samples`` training images of one class (``--cls``, default 6, "shirt", the
class the zoo models get wrong most often), drawn with seed 0. Self-compression runs three ways on the same
zoo model, at the same γ and training seed: guarding the user's examples (``--preservation-set``), guarding
the 1,000 examples it chooses itself (the default), and unguarded (``--preserve 0``); L² at the guarded
file's size, which takes no preservation set, is measured on the same examples. Each file is measured on the
test split (overall, and on the test images of the class) and on the user's examples before and after.

    .venv/bin/python benchmarks/preservation.py [--models lenet300] [--cls 6] [--samples 1000] [--seeds 0,1,2] [--steps 3000]
        [--safety-weight 0.05]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import press_row, regenerate_results_md, timed_press, write_result  # noqa: E402

from netpress import api  # noqa: E402
from netpress.budget import Budget  # noqa: E402
from netpress.data import load_dataset  # noqa: E402
from netpress.methods import L2, SelfCompression  # noqa: E402

COLUMNS = {
    "class_accuracy": "the file's accuracy on the test images of the class (%)",
    "kept_before": "the zoo model's accuracy on the user's examples (%)",
    "kept_after": "the file's accuracy on the user's examples (%)",
}


def critical_examples(cls: int, samples: int) -> TensorDataset:
    """``samples`` training images of class ``cls``, drawn with seed 0: the user's own set."""
    inputs, labels = load_dataset("fashion-mnist", "train").tensors
    pool = (labels == cls).nonzero().reshape(-1)
    pick = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:samples]].sort().values
    return TensorDataset(inputs[pick].clone(), labels[pick].clone())


def row(name: str, label: str, setting: str, report: dict, seconds: float, cls: int, seed: int, critical) -> dict:
    """A result row; a run that did not take the user's examples is measured on them here, with the same
    ``evaluate`` press uses."""
    if "preservation" in report:
        before, after = report["preservation"]["accuracy_before"], report["preservation"]["accuracy_after"]
    else:
        zoo_model = api.load_model(f"zoo:{name}").module
        before = api.evaluate(zoo_model, critical).accuracy
        after = api.evaluate(api.load(report["file"], model=api.load_model(f"zoo:{name}")), critical).accuracy
    return {
        **press_row(name, label, setting, report, seconds),
        "seed": seed,
        "class_accuracy": round(100 * report["per_class_accuracy"]["after"][str(cls)], 2),
        "kept_before": round(100 * before, 2),
        "kept_after": round(100 * after, 2),
    }


def summary(rows: list[dict], cls: int) -> list[str]:
    """Per model and variant, the means over seeds."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for method in dict.fromkeys(r["method"] for r in rows if r["model"] == model):
            runs = [r for r in rows if r["model"] == model and r["method"] == method]
            mean = {key: statistics.mean(r[key] for r in runs) for key in ("ratio", "accuracy", "class_accuracy", "kept_after")}
            lines.append(
                f"{model} {method} ({len(runs)} seed(s)): {mean['ratio']:.1f}×, test {mean['accuracy']:.2f} %, class {cls} "
                f"{mean['class_accuracy']:.2f} %, your examples {mean['kept_after']:.2f} % "
                f"(from {runs[0]['kept_before']:.2f} %)"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet300")
    parser.add_argument("--cls", type=int, default=6)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=SelfCompression.steps)
    parser.add_argument("--safety-weight", type=float, default=SelfCompression.safety_weight)
    parser.add_argument("--name", default="preservation")
    args = parser.parse_args()
    critical = critical_examples(args.cls, args.samples)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder)
        for name in args.models.split(","):
            for seed in map(int, args.seeds.split(",")):
                method = SelfCompression(steps=args.steps, safety_weight=args.safety_weight, seed=seed)
                variants = {
                    "self-compress, your examples": (method, critical, f"guarding your {args.samples} class-{args.cls} images"),
                    "self-compress, its own": (method, None, f"guarding the {method.preserve} it chooses"),
                    "self-compress, unguarded": (replace(method, preserve=0), None, "no preservation set"),
                }
                for label, (variant, given, detail) in variants.items():
                    path = out / f"{name}-{seed}-{len(rows)}.press"
                    handle = api.load_model(f"zoo:{name}")
                    report, seconds = timed_press(handle, variant, None, path, seed=seed, preservation=given)
                    setting = f"γ {method.gamma:g}, η {method.safety_weight:g}, {method.steps} steps, {detail}"
                    rows.append(row(name, label, setting, report, seconds, args.cls, seed, critical))
                    print(rows[-1], flush=True)
                    if given is not None:
                        guarded = report
                if seed == int(args.seeds.split(",")[0]):  # L² once, at the size of the first guarded file
                    ratio = round(guarded["ratio"], 2)
                    path = out / f"{name}-l2.press"
                    report, seconds = timed_press(api.load_model(f"zoo:{name}"), L2(), Budget(ratio=ratio), path, calib=1024)
                    setting = f"ratio {ratio:g} (the guarded file's size)"
                    rows.append(row(name, "l2", setting, report, seconds, args.cls, 0, critical))
                    print(rows[-1], flush=True)
    write_result(
        args.name,
        {
            "description": " ".join(__doc__.split("\n\n")[1].split()),
            "columns": COLUMNS,
            "rows": rows,
            "notes": summary(rows, args.cls),
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
