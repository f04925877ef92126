"""A sweep in one process against the same sweep shared by local worker processes (``workers``, torch.distributed).

For each model and method, the same targets are swept with ``workers=1`` (one process, all of torch's threads) and
with ``workers=2`` and more (each process an equal part of the threads); the wall time of the whole sweep, start-up
of the workers included, and whether every file is byte-identical to the one-process sweep's.

Run: NETPRESS_QUIET=1 .venv/bin/python benchmarks/sweep_workers.py --name sweep-workers
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import regenerate_results_md, write_result

import netpress
from netpress.budget import Budget
from netpress.methods.baselines import MagnitudePruning, UniformQuantization

CASES = {
    "resnet20-fcpts": ("resnet20", lambda: netpress.FCPTS(), [Budget(sparsity=s) for s in (0.5, 0.7, 0.8, 0.9)]),
    "lenet5-l2": ("lenet5", lambda: netpress.L2(), [Budget(ratio=r) for r in (10, 20, 40, 80)]),
    "vgg-magnitude-4bit": (
        "vgg",
        lambda: [MagnitudePruning(allocation="lamp"), UniformQuantization(4)],
        [Budget(sparsity=s) for s in (0.5, 0.7, 0.8, 0.9)],
    ),
}
COLUMNS = {
    "workers": "processes sharing the points (1: the sweep in the calling process alone)",
    "threads": "torch threads per process",
    "seconds": "wall time of the whole sweep (workers' start-up, data preparation and measuring included)",
    "speedup": "one process's seconds / these seconds",
    "identical": "every file byte-identical to the one-process sweep's",
    "accuracy": "test accuracy of each point's file (%), in target order",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--workers", default="2", help="comma-separated worker counts compared with one process")
    parser.add_argument("--name", default="sweep-workers")
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    rows = []
    for case in args.cases.split(","):
        model, methods, budgets = CASES[case]
        handle = netpress.load_model(f"zoo:{model}")
        with tempfile.TemporaryDirectory() as folder:
            files, alone = {}, None
            for workers in [1, *counts]:
                threads = max(1, torch.get_num_threads() // workers)
                start = time.perf_counter()
                reports = netpress.sweep(
                    handle, methods(), budgets, out_dir=Path(folder) / str(workers), data="fashion-mnist", workers=workers
                )
                seconds = time.perf_counter() - start
                alone = alone or seconds  # workers=1 runs first
                files[workers] = [Path(r["file"]).read_bytes() for r in reports]
                rows.append(
                    {
                        "case": case,
                        "targets": ", ".join(f"{b.kind} {b.value:g}" for b in budgets),
                        "workers": workers,
                        "threads": threads,
                        "seconds": round(seconds, 1),
                        "speedup": round(alone / seconds, 2),
                        "identical": files[workers] == files[1],
                        "accuracy": " / ".join(f"{100 * r['accuracy_after']:.2f}" for r in reports),
                    }
                )
                print(rows[-1], flush=True)
    write_result(
        args.name,
        {
            "description": "A sweep in one process against the same sweep shared by local worker processes "
            "(`workers`, torch.distributed), same machine, same run.",
            "columns": COLUMNS,
            "rows": rows,
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
