"""Every method at the same file size: one ratio target, each method's own setting searched for it.

For each model and ratio R, each pipeline is asked for a file of at most 1/R of the fp32 safetensors bytes.
L² meets the target itself; for the others netpress searches the one setting that sizes their file (the
sparsity of a pruning stage, the bits of uniform quantization, the levels of k-means; FCPTS is sized with its
magnitude stand-in, then run at the sparsity found). Calibration: 1,024 training images, seed 0; accuracy
from the written file on the test split.

    .venv/bin/python benchmarks/equal_bytes.py [--models lenet5,resnet20] [--ratios 10,20,40] [--name equal-bytes]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NETPRESS_QUIET", "1")

from common import regenerate_results_md, timed_press, write_result  # noqa: E402

from netpress import Budget, api  # noqa: E402
from netpress.methods import FCPTS, L2, KMeansQuantization, MagnitudePruning, UniformQuantization  # noqa: E402

PIPELINES = {
    "magnitude-lamp": lambda: [MagnitudePruning("lamp")],
    "magnitude-lamp + 5-bit": lambda: [MagnitudePruning("lamp"), UniformQuantization(5, per_channel=True)],
    "uniform per channel (mse clip)": lambda: [UniformQuantization(per_channel=True, clip="mse")],
    "kmeans": lambda: [KMeansQuantization()],
    "fcpts": lambda: [FCPTS()],
    "fcpts + 5-bit": lambda: [FCPTS(), UniformQuantization(5, per_channel=True)],
    "l2": lambda: [L2()],
}
COLUMNS = {
    "searched": "the setting netpress searched for the target (l2 meets it itself)",
    "share": "file bytes / the bytes the ratio allows",
    "tries": "files the search made: with the data-free chain (FCPTS: its magnitude stand-in), + full runs of FCPTS",
    "seconds": "compression and writing, the search's tries included; not the evaluation",
}


def _searched(report: dict) -> str | None:
    found = report.get("searched")
    if not found:
        return None
    ((setting, value),) = found.items()
    return f"{setting} {100 * value:.2f} %" if setting in ("sparsity", "params") else f"{value} {setting}"


def _tries(report: dict) -> str | None:
    cost = report.get("search")
    if cost is None:
        return None
    runs = f" + {cost['full_runs']} full" if cost["full_runs"] else ""
    return f"{cost['tries']}{runs}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet20")
    parser.add_argument("--ratios", default="10,20,40")
    parser.add_argument("--pipelines", default=",".join(PIPELINES))
    parser.add_argument("--name", default="equal-bytes")
    args = parser.parse_args()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as folder:
        for model in args.models.split(","):
            handle = api.load_model(f"zoo:{model}")
            for ratio in map(float, args.ratios.split(",")):
                for label in args.pipelines.split(","):
                    out = Path(folder) / f"{model}-{ratio:g}-{len(rows)}.press"
                    try:
                        methods = PIPELINES[label]()
                        calib = 1024 if any(m.needs != "none" for m in methods) else None  # the data-free take none
                        report, _ = timed_press(handle, methods, Budget(ratio=ratio), out, calib=calib, seed=0)
                    except Exception as exc:  # an unreachable target is a result too
                        notes.append(f"{model} {ratio:g}x {label}: {exc}")
                        print(notes[-1], flush=True)
                        continue
                    target = report["original_bytes"] // ratio
                    rows.append(
                        {
                            "model": model,
                            "target": f"{ratio:g}x",
                            "pipeline": label,
                            "searched": _searched(report),
                            "file_bytes": report["file_bytes"],
                            "share": round(report["file_bytes"] / target, 4),
                            "sparsity": round(report["sparsity"], 4),
                            "accuracy_before": round(100 * report["accuracy_before"], 2),
                            "accuracy": round(100 * report["accuracy_after"], 2),
                            "tries": _tries(report),
                            "seconds": round(report["seconds"], 1),
                        }
                    )
                    print(rows[-1], flush=True)
    write_result(
        args.name,
        {
            "description": "Every method at the same file size: one ratio target each, the setting that sizes "
            "each method's file searched by netpress (L² meets the target itself). Calibration: 1,024 training "
            "images, seed 0. Accuracy from the written file.",
            "columns": COLUMNS,
            "rows": rows,
            "notes": notes,
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
