"""Peak memory of compressing a model from a safetensors file, as a multiple of the model's fp32 size.

DESIGN.md §8 asks that a large model be compressed without holding two fp32 copies at once. Each setting
runs ``netpress compress`` in a fresh process on a LLaMA-style stack of gated MLPs (random weights, seeded)
read from a safetensors file with ``--arch``; the peak resident memory of that process is read from the
kernel (``VmHWM``, which the process writes as it exits). ``copies`` subtracts the peak of a process that only imports netpress
and torch, and divides by the model's fp32 bytes. A peer row does the same with PyTorch's own pruning.

glibc's allocator keeps freed blocks under its (moving) mmap threshold for reuse, so the same run's peak
varies by up to a model copy from one process to the next: each setting runs ``--repeats`` times and the
row gives the median and the range. One more run with the threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``),
so that freed blocks go back to the system at once, gives ``live_copies``: close to what the code holds.

    .venv/bin/python benchmarks/memory.py [--repeats 3] [--name memory]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import regenerate_results_md, write_result  # noqa: E402

WIDTH, HIDDEN, LAYERS = 1024, 2816, 8  # LLaMA's width ratio; 264 MiB, far above the process's own 300 MiB

SETTINGS = {
    "uniform 4-bit per-channel": ["--method", "uniform", "--bits", "4", "--per-channel"],
    "uniform 4-bit, groups of 128": ["--method", "uniform", "--bits", "4", "--group-size", "128"],
    "kmeans 16 levels": ["--method", "kmeans", "--levels", "16"],
    "magnitude global 50 %": ["--method", "magnitude", "--sparsity", "0.5", "--allocation", "global"],
    "magnitude LAMP 50 %": ["--method", "magnitude", "--sparsity", "0.5", "--allocation", "lamp"],
    "magnitude ERK 50 % + uniform 4-bit": ["--method", "magnitude", "--sparsity", "0.5", "--allocation", "erk", "--bits", "4"],
}
# Settings given a data file (random inputs): the original and the file read back are run on its test split,
# and FCPTS calibrates on its train split (a few steps: its memory, not its result, is measured).
DATA_SETTINGS = {
    "uniform 4-bit per-channel, measured on --data": ["--method", "uniform", "--bits", "4", "--per-channel"],
    "FCPTS 50 %, 20 steps of 16": [
        "--method",
        "fcpts",
        "--sparsity",
        "0.5",
        "--iterations",
        "20",
        "--batch-size",
        "16",
        "--calib",
        "64",
    ],
}

# PyTorch's own global magnitude pruning of the same file, written as a state dict: the peer row.
TORCH_PRUNE = """
import sys, torch
from safetensors.torch import load_file, save_file
from torch.nn.utils import prune
sys.path.insert(0, {here!r})
from memory import gated_stack
model = gated_stack()
model.load_state_dict(load_file({source!r}))
layers = [(m, "weight") for m in model.modules() if isinstance(m, torch.nn.Linear)]
prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=0.5)
for m, name in layers:
    prune.remove(m, name)
save_file(model.state_dict(), {out!r})
"""


class GatedMLP(nn.Module):
    """A LLaMA MLP block with its residual: x + down(silu(gate(x)) · up(x))."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(width, hidden, bias=False)
        self.up = nn.Linear(width, hidden, bias=False)
        self.down = nn.Linear(hidden, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.silu(self.gate(x)) * self.up(x))


def gated_stack() -> nn.Module:
    """``LAYERS`` gated MLP blocks and a 10-way head: the architecture ``--arch memory:gated_stack`` builds."""
    return nn.Sequential(*(GatedMLP(WIDTH, HIDDEN) for _ in range(LAYERS)), nn.Linear(WIDTH, 10))


# Prepended to every measured Python program: at exit it writes the process's peak resident memory (VmHWM,
# KiB) to $PEAK_FILE. The kernel's ru_maxrss would not do: a child's counts the parent's resident memory at
# the fork, and this benchmark's parent holds torch.
PEAK_AT_EXIT = """import atexit, os
def _peak():
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
    with open(os.environ["PEAK_FILE"], "w") as out:
        out.write(str(kib))
atexit.register(_peak)
"""


def peak_mib(program: str, arguments: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Peak resident memory (MiB) and wall seconds of ``python -c program arguments``; fails loudly if it does."""
    with tempfile.TemporaryDirectory() as tmp:
        errors_path, peak_path = Path(tmp) / "stderr", Path(tmp) / "peak"
        with errors_path.open("wb") as errors:  # a file, not a pipe: a child writing much would block on a full pipe
            start = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-c", PEAK_AT_EXIT + program, *arguments],
                env={**env, "PEAK_FILE": str(peak_path)},
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
            seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{program} {' '.join(arguments)} failed:\n{errors_path.read_text()}")
        return int(peak_path.read_text()) / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--name", default="memory")
    args = parser.parse_args()
    here = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])])}
    env["OMP_NUM_THREADS"] = str(args.threads)
    netpress_cli = "from netpress.cli import main; main()"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = str(Path(tmp) / "model.safetensors")
        torch.manual_seed(0)
        save_file(gated_stack().state_dict(), source)
        model_mib = Path(source).stat().st_size / 2**20
        live = {**env, "MALLOC_MMAP_THRESHOLD_": str(2**20)}
        importing = "import torch, netpress"
        idle, idle_live = peak_mib(importing, [], env)[0], peak_mib(importing, [], live)[0]

        def row(setting: str, storage: str, program: str, arguments: list[str], out: str) -> None:
            runs = sorted(peak_mib(program, arguments, env) for _ in range(args.repeats))
            peak, seconds = runs[len(runs) // 2]
            copies = [round((p - idle) / model_mib, 2) for p, _ in runs]
            rows.append(
                {
                    "setting": setting,
                    "storage": storage,
                    "model_mib": round(model_mib, 1),
                    "file_mib": round(Path(out).stat().st_size / 2**20, 1),
                    "peak_mib": round(peak),
                    "copies": copies[len(runs) // 2],
                    "range": f"{copies[0]}–{copies[-1]}",
                    "live_copies": round((peak_mib(program, arguments, live)[0] - idle_live) / model_mib, 2),
                    "seconds": round(seconds, 1),
                }
            )
            print(rows[-1], flush=True)

        data = str(Path(tmp) / "data.safetensors")
        save_file(
            {
                "train_inputs": torch.randn(64, WIDTH),
                "test_inputs": torch.randn(256, WIDTH),
                "test_labels": torch.randint(0, 10, (256,)),
            },
            data,
        )
        out = str(Path(tmp) / "out.press")
        compress = ["compress", source, "--arch", "memory:gated_stack", "-o", out]
        for setting, options in SETTINGS.items():
            row(setting, ".press", netpress_cli, [*compress, *options], out)
        for setting, options in DATA_SETTINGS.items():
            row(setting, ".press", netpress_cli, [*compress, *options, "--data", data], out)
        # Loading a written file back and running it: `netpress eval` of the 4-bit per-channel file.
        written = str(Path(tmp) / "written.press")
        peak_mib(netpress_cli, [*compress[:-1], written, *SETTINGS["uniform 4-bit per-channel"]], env)
        evaluate = ["eval", written, "--arch", "memory:gated_stack", "--data", data]
        row("eval of the 4-bit per-channel file on --data", ".press", netpress_cli, evaluate, written)
        out = str(Path(tmp) / "pruned.safetensors")
        script = TORCH_PRUNE.format(here=here, source=source, out=out)
        row("torch.nn.utils.prune global L1 50 %", "state dict", script, [], out)
    write_result(
        args.name,
        {
            "description": (
                f"A stack of {LAYERS} LLaMA-style gated MLPs ({WIDTH} → {HIDDEN} → {WIDTH}, random weights, "
                f"{model_mib:.0f} MiB in fp32) compressed from its safetensors file by `netpress compress FILE --arch "
                "memory:gated_stack`, each setting in a fresh process. Without --data the report has no accuracy; "
                "with it (a file of random inputs) the original and the file read back are run on its test split."
            ),
            "columns": {
                "model_mib": "the model's fp32 safetensors file",
                "file_mib": "the file written",
                "peak_mib": f"peak resident memory of the process (VmHWM), median of {args.repeats} runs",
                "copies": f"(peak − {idle:.0f} MiB, the peak of a process that only imports torch and netpress) / model_mib",
                "range": f"copies of the lowest and highest of the {args.repeats} runs",
                "live_copies": "copies in one run with glibc's mmap threshold fixed at 1 MiB (freed memory returned at once)",
                "seconds": "wall time of the median run, start-up included",
            },
            "rows": rows,
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
