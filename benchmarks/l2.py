"""L² against its peers on the same models in the same run: accuracy against the bytes of the written file.

For each model: L² at several ratio targets; zstd-19 of the fp32 safetensors file; the fixed
post-training recipe (global magnitude pruning + per-layer k-means with zero kept + the netpress
codec) swept over sparsity and levels; NNCF's data-free weight compression (INT8 asymmetric,
INT4 symmetric per channel, every layer) saved with torch.save, with and without zstd-19.
Then, for each peer point within a few points of the original accuracy that no L² file beats yet
(at least as accurate and smaller), L² once more at that peer's own file size: the direct
equal-size comparison (at most three per model). Accuracy is always measured on the model rebuilt
from the file. Writes
benchmarks/results/<name>.json and one curve per model, and checks the issue's targets.

    .venv/bin/python benchmarks/l2.py [--models lenet300,lenet5,resnet20,vgg] [--ratios 10,20,40]
        [--calib 1024] [--threads 2] [--no-peers] [--seeds 0] [--name l2]
    .venv/bin/python benchmarks/l2.py --summary      # one row per model from results/l2_<model>.json

Needs the bench extra (zstandard) and, for the NNCF rows, ``pip install nncf`` (skipped when absent).
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_save

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NETPRESS_QUIET", "1")

from common import RESULTS_DIR, regenerate_results_md, write_result  # noqa: E402

from netpress import Budget, api  # noqa: E402
from netpress.evaluate import evaluate  # noqa: E402
from netpress.methods import L2, KMeansQuantization, MagnitudePruning  # noqa: E402
from netpress.report import plot_curve  # noqa: E402

RATIOS = {
    "lenet300": [5, 10, 20, 30, 40, 60, 80],
    "lenet5": [10, 20, 40, 50, 60, 80, 120],
    "resnet20": [5, 10, 20, 30],
    "vgg": [5, 10, 15, 20, 30],
    "mobilenetv2": [5, 10, 15],
}
RECIPE_SPARSITIES = [0.5, 0.7, 0.8, 0.9, 0.95]
RECIPE_LEVELS = [8, 12, 16, 32]
USEFUL_LOSS = 5.0  # the summary compares against peer points that lose at most this many points
MAX_MATCHED = 3  # extra L² runs per model at the size of a peer point that L² does not beat yet
TARGETS = {"lenet300": (30, None), "lenet5": (40, None), "resnet20": (10, 20), "vgg": (10, 20)}  # (≤0.5 pt, ≤1 pt)
TIME_TARGET = 300.0  # seconds of wall per L² run on 2 cores, data loading and both test evaluations included


def zstd19(data: bytes) -> int:
    import zstandard

    return len(zstandard.ZstdCompressor(level=19).compress(data))


def l2_point(name: str, handle, ratio: float, calib: int, out: Path, setting: str | None = None, seed: int = 0) -> dict:
    """One L² file; ``seed`` draws the calibration subset and the batch order."""
    start = time.perf_counter()
    path = out / f"{name}-l2-{ratio}-{seed}.press"
    report = api.press(handle, [L2(seed=seed)], Budget(ratio=ratio), out=path, calib=calib, seed=seed)
    row = {
        "method": "l2",
        "setting": setting or f"ratio {ratio:g}" + (f", seed {seed}" if seed else ""),
        "file_bytes": report["file_bytes"],
        "ratio": round(report["ratio"], 2),
        "accuracy": report["accuracy_after"],
        "seconds": round(time.perf_counter() - start, 1),
        "compress_seconds": round(report["seconds"], 1),
        "target_met_on_file": report["file_bytes"] <= report["original_bytes"] // ratio,
    }
    print(name, row, flush=True)
    return row


def matched_points(
    name: str, handle, reference: int, l2: list[dict], peers: list[dict], base: float, calib: int, out: Path
) -> list[dict]:
    """L² at the file size of each useful peer point that no L² point beats yet, smallest first.

    ``reference``: the original model's fp32 bytes, which the ratios refer to."""
    rows: list[dict] = []
    for peer in useful_peers(peers, base):
        if len(rows) == MAX_MATCHED:
            break
        if unbeaten(l2 + rows, [peer]):
            ratio = reference / (peer["file_bytes"] - 1)  # the file must come out strictly smaller
            rows.append(l2_point(name, handle, ratio, calib, out, f"ratio {ratio:.2f} (size of {describe(peer, False)})"))
    return rows


def recipe_points(name: str, handle, out: Path) -> list[dict]:
    rows = []
    for sparsity in RECIPE_SPARSITIES:
        for levels in RECIPE_LEVELS:
            start = time.perf_counter()
            methods = [MagnitudePruning("global"), KMeansQuantization(levels)]
            report = api.press(handle, methods, Budget(sparsity=sparsity), out=out / f"{name}-recipe.press")
            rows.append(
                {
                    "method": "prune+kmeans+codec",
                    "setting": f"sparsity {sparsity}, {levels} levels",
                    "file_bytes": report["file_bytes"],
                    "ratio": round(report["ratio"], 2),
                    "accuracy": report["accuracy_after"],
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
    return rows


def nncf_points(handle, test, reference: int) -> list[dict]:
    try:
        import nncf
    except ImportError:
        return []
    rows = []
    example = torch.zeros(1, *handle.input_shape)
    for mode, label in ((nncf.CompressWeightsMode.INT8_ASYM, "INT8"), (nncf.CompressWeightsMode.INT4_SYM, "INT4 per-channel")):
        start = time.perf_counter()
        extra = {"ratio": 1.0, "group_size": -1, "all_layers": True} if "INT4" in label else {}
        model = nncf.compress_weights(copy.deepcopy(handle.module), mode=mode, dataset=nncf.Dataset([example]), **extra)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        accuracy = evaluate(model, test).accuracy
        seconds = round(time.perf_counter() - start, 1)
        for suffix, size in (("torch.save", len(buffer.getvalue())), ("torch.save + zstd-19", zstd19(buffer.getvalue()))):
            rows.append(
                {
                    "method": f"NNCF {label}",
                    "setting": suffix,
                    "file_bytes": size,
                    "ratio": round(reference / size, 2),
                    "accuracy": accuracy,
                    "seconds": seconds,
                }
            )
    return rows


def best_ratio(rows: list[dict], base: float, max_loss: float, method: str | None = None) -> float | None:
    fits = [
        r["ratio"] for r in rows if base - r["accuracy"] <= max_loss / 100 + 1e-12 and (method is None or r["method"] == method)
    ]
    return max(fits) if fits else None


def useful_peers(peers: list[dict], base: float) -> list[dict]:
    """Peer points within ``USEFUL_LOSS`` points of the original accuracy ``base`` (fractions), smallest file first."""
    return sorted((p for p in peers if base - p["accuracy"] <= USEFUL_LOSS / 100), key=lambda p: p["file_bytes"])


def unbeaten(l2: list[dict], peers: list[dict]) -> list[dict]:
    """The peer points for which no L² file is at least as accurate and smaller."""
    return [p for p in peers if not any(r["accuracy"] >= p["accuracy"] and r["file_bytes"] < p["file_bytes"] for r in l2)]


def describe(peer: dict, with_accuracy: bool = True) -> str:
    text = f"{peer['method']} ({peer['setting']})"
    return text + (f": {peer['file_bytes']:,} B at {100 * peer['accuracy']:.2f} %" if with_accuracy else "")


def smallest_everywhere(l2: list[dict], peers: list[dict]) -> tuple[bool, list[str]]:
    """Is there, for every peer point, an L² file at least as accurate and smaller? Lists the exceptions."""
    misses = [describe(p) for p in unbeaten(l2, peers)]
    return not misses, misses


def seed_spread(name: str) -> str:
    """One sentence per ratio of a multi-seed run (``--seeds``): accuracy and points lost at each seed."""
    import json

    path = RESULTS_DIR / f"{name}.json"
    if not path.exists():
        return ""
    by_ratio: dict[tuple[str, str], list[dict]] = {}
    for row in json.loads(path.read_text())["rows"]:
        by_ratio.setdefault((row["model"], row["setting"].split(",")[0]), []).append(row)
    sentences = []
    for (model, setting), rows in by_ratio.items():
        within = sum(r["loss_pts"] <= 0.5 for r in rows)
        sentences.append(
            f"{model} at {setting} over {len(rows)} seeds (calibration subset and batch order; section {name}): "
            + " / ".join(f"{r['accuracy']:.2f}" for r in rows)
            + " % ("
            + " / ".join(f"{r['loss_pts']:.2f}" for r in rows)
            + f" points lost; within 0.5 point at {within} of {len(rows)} seeds)."
        )
    return " ".join(sentences)


def summarise(name: str) -> None:
    """One row per model from the per-model result files (``<name>_<model>.json``): targets against what was measured."""
    import json

    rows = []
    for path in sorted(RESULTS_DIR.glob(f"{name}_*.json")):
        record = json.loads(path.read_text())
        by_model: dict[str, list[dict]] = {}
        for row in record["rows"]:
            by_model.setdefault(row["model"], []).append(row)
        for model, points in by_model.items():
            l2 = [p for p in points if p["method"] == "l2"]
            peers = [p for p in points if p["method"] != "l2"]
            ratio_at = lambda rows, loss: max((p["ratio"] for p in rows if p["loss_pts"] <= loss), default=None)  # noqa: E731
            need_half, need_one = TARGETS.get(model, (None, None))
            half, one = ratio_at(l2, 0.5), ratio_at(l2, 1.0)
            useful = [p for p in peers if p["loss_pts"] <= USEFUL_LOSS]
            slowest = max(p["seconds"] for p in l2)
            _, misses = smallest_everywhere(
                [{**p, "accuracy": p["accuracy"] / 100} for p in l2], [{**p, "accuracy": p["accuracy"] / 100} for p in useful]
            )
            rows.append(
                {
                    "model": model,
                    "l2_ratio_at_0.5pt": half,
                    "target_0.5pt": need_half,
                    "l2_ratio_at_1pt": one,
                    "target_1pt": need_one,
                    "best_peer_at_0.5pt": ratio_at(peers, 0.5),
                    "best_peer_at_1pt": ratio_at(peers, 1.0),
                    "l2_doubles_best_peer_at_0.5pt": bool(half and ratio_at(peers, 0.5) and half >= 2 * ratio_at(peers, 0.5)),
                    "l2_seconds_max": slowest,
                    f"time_target_met (≤ {TIME_TARGET:g} s)": slowest <= TIME_TARGET,
                    f"l2_smallest_at_each_peer_accuracy (peers within {USEFUL_LOSS:g} pt)": not misses,
                    "exceptions": "; ".join(misses) or None,
                    "ratio_targets_met": (need_half is None or (half or 0) >= need_half)
                    and (need_one is None or (one or 0) >= need_one),
                    "source": path.name,
                }
            )
    write_result(
        name,
        {
            "description": "Summary of the per-model L² runs below: largest ratio (fp32 bytes / file bytes) at ≤ 0.5 and "
            "≤ 1 accuracy point lost, against the issue's targets and the best peer in the same run; whether, for every "
            f"peer point within {USEFUL_LOSS:g} points of the original accuracy, an L² file at least as accurate is smaller "
            "(peer points that lost more, e.g. 95 % pruning at chance accuracy, are listed in the per-model notes).",
            "rows": rows,
            "notes": [
                "l2_seconds_max is the slowest L² run of the model (wall, test evaluations included); runs that "
                "overlapped another job on the 2 cores are slower (the per-model tables give every run's time).",
                "Runs are reproducible for a given seed, thread count and CPU; 1- and 2-thread runs differ by up to ~0.2 points. "
                + seed_spread("l2seeds")
                + " "
                + seed_spread("l2seeds-lenet5")
                + " A few bytes of difference in the file change the "
                "grids the final fit settles on: before netpress stored every target as a float, this benchmark's integer "
                "ratios (30 rather than 30.0) made the summary in the file two characters shorter and LeNet-300 at 30× "
                "gave 89.40 % instead of 89.47 % (LeNet-5 at 120×: 89.68 % instead of 89.86 %); accuracy differences "
                "up to ~0.2 point between L² runs are noise of this kind. Since the recording at commit 4ed5d24, L² sizes its "
                "trial files with the source record the file carries (commit 3ede9f7; before, an allowance of 192 bytes), so "
                "its files aim a few bytes lower, and these runs ran on another CPU (AMD EPYC), whose float kernels round "
                "differently (the same short L² run gives 86,094 B there and 86,087 B here at the same commit), so the "
                "differences cannot be assigned to either alone. LeNet-5 at 50× went from 91.41 % to 91.29 % at seed 0, "
                "which moves its largest ratio at ≤ 0.5 point from 50.42× to 40.33×, short of double the best peer's "
                "23.2×; the RMS bound on L²'s finest initial grid (commit ce215d9) leaves that file byte for byte the same.",
                "Rows named 'ratio … (size of …)' are L² runs at the file size of a peer point that no sweep point beat: "
                "the direct equal-size comparison. All runs of this summary ran alone on the 2 cores.",
                "Since commit 84ea652 a file's sparsity figure counts the coded weights only, not the BatchNorm running "
                "statistics L² stores as constant codes. The figure is a number in the file's summary, so files of "
                "models with BatchNorm change by its digits. The ResNet-20 and VGG sections were rerun after it (at "
                "9dfe0d7): files moved by −1 to +5 bytes (ResNet-20 at 20×: 55,155 → 55,159 B) and every accuracy is "
                "the same; L² sizes its trial files with a stub of fixed length in place of the figure, so the codes "
                "it chooses do not change.",
            ],
        },
    )
    print(regenerate_results_md())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet300,lenet5,resnet20,vgg")
    parser.add_argument("--ratios", default=None, help="comma-separated ratios (default: per model)")
    parser.add_argument("--calib", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds: calibration subset and batch order")
    parser.add_argument("--name", default="l2")
    parser.add_argument("--summary", action="store_true", help="only summarise the existing <name>_<model>.json files")
    args = parser.parse_args()
    if args.summary:
        summarise(args.name)
        return
    torch.set_num_threads(args.threads)
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name in args.models.split(","):
            handle = api.load_model(f"zoo:{name}")
            test = api.resolve_dataset(handle.dataset, "test", handle.input_shape)
            base = evaluate(handle.module, test).accuracy
            reference = api.fp32_bytes(handle.module)
            ratios = [float(r) for r in args.ratios.split(",")] if args.ratios else RATIOS[name]
            seeds = [int(s) for s in args.seeds.split(",")]
            points = [l2_point(name, handle, ratio, args.calib, out, seed=seed) for ratio in ratios for seed in seeds]
            peers = []
            if not args.no_peers:
                fp32 = safetensors_save(handle.module.state_dict())  # a zoo model: fp32, no shared tensors
                peers.append(
                    {
                        "method": "zstd-19",
                        "setting": "fp32 safetensors",
                        "file_bytes": zstd19(fp32),
                        "accuracy": base,
                        "seconds": 0.0,
                    }
                )
                peers[-1]["ratio"] = round(reference / peers[-1]["file_bytes"], 2)
                peers += recipe_points(name, handle, out)
                peers += nncf_points(handle, test, reference)
                points += matched_points(name, handle, reference, points, peers, base, args.calib, out)
            for r in points + peers:
                rows.append(
                    {
                        "model": name,
                        **r,
                        "accuracy": round(100 * r["accuracy"], 2),
                        "loss_pts": round(100 * (base - r["accuracy"]), 2),
                    }
                )
            half, one = best_ratio(points, base, 0.5), best_ratio(points, base, 1.0)
            peer_half = best_ratio(peers, base, 0.5)
            useful = useful_peers(peers, base)
            wins, misses = smallest_everywhere(points, useful) if useful else (None, [])
            need_half, need_one = TARGETS.get(name, (None, None))
            notes.append(
                f"{name} (fp32 {reference:,} B, {100 * base:.2f} %): L² largest ratio at ≤ 0.5 pt loss {half}×"
                + (f" (target ≥ {need_half}×: {'met' if half and half >= need_half else 'NOT met'})" if need_half else "")
                + f", at ≤ 1 pt {one}×"
                + (f" (target ≥ {need_one}×: {'met' if one and one >= need_one else 'NOT met'})" if need_one else "")
                + (f"; best peer at ≤ 0.5 pt {peer_half}×" if peers else "")
                + (
                    f"; L² smallest at every accuracy of a peer within {USEFUL_LOSS:g} pt: "
                    + ("yes" if wins else "NO — " + "; ".join(misses))
                    if useful
                    else ""
                )
            )
            print(notes[-1], flush=True)
            series = {"l2": [(r["file_bytes"], r["accuracy"]) for r in points]}
            for p in peers:
                series.setdefault(p["method"], []).append((p["file_bytes"], p["accuracy"]))
            series = {k: [(b, a) for b, a in v if base - a <= 0.05] for k, v in series.items()}
            plot_curve(
                {k: v for k, v in series.items() if v}, RESULTS_DIR / f"{args.name}_{name}.png", f"{name}: accuracy vs file bytes"
            )
    write_result(
        args.name,
        {
            "description": "L² at ratio targets against peers on the same model, accuracy measured on the file "
            f"(calibration: {args.calib} training samples, seeds {args.seeds}; threads {args.threads}). "
            "Fixed recipe rows sweep sparsity × k-means levels. Curves: results/" + args.name + "_<model>.png.",
            "columns": {
                "ratio": "fp32 safetensors bytes / file bytes",
                "loss_pts": "accuracy points lost against the uncompressed model",
                "target_met_on_file": "the written file is at most original / ratio bytes",
                "seconds": "wall of the whole run: calibration data, compression, writing, and the test evaluations "
                "before and after",
                "compress_seconds": "compression and writing the file alone (the time netpress reports)",
            },
            "rows": rows,
            "notes": notes,
        },
    )
    print(regenerate_results_md())


if __name__ == "__main__":
    main()
