"""Fold's clustering: Ward (the default) against k-means (the paper's CNN code), same groups and budget.

Per zoo CNN, level (10 %–60 % of the parameters removed) and group allocation (uniform, adaptive): the seconds to
trace, cluster and fold, the k-means objective both minimise (the within-cluster sum of squares of the channels'
feature rows, summed over the groups: data-free), and the accuracy with no repair and with the data-free ``ar``
repair on the same 2,000-image test subset as section ``fold``. Then wide layers, where k-means' k-means++ seeding
costs most: a random 784-2048-2048-2048-10 MLP (torch.manual_seed(0)) at 30 %, adaptive (``mlp``), and
all-MiniLM-L6-v2 with 30 % of its FFN neurons folded, uniform, as in section ``fold`` (``minilm``: fidelity on the
same 2,000 fortunes sentences).

Run: NETPRESS_QUIET=1 .venv/bin/python benchmarks/fold_clustering.py [--models resnet20 vgg mobilenetv2 mlp minilm]
Each run replaces its models' rows in results/fold-clustering.json and keeps the others.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time

import torch
from common import RESULTS_DIR, command_line, embed, minilm, regenerate_results_md, write_result
from fold import LEVELS, TEST_SUBSET
from torch import nn

import netpress
from netpress.budget import Budget
from netpress.data import load_dataset
from netpress.data.text import fortune_sentences
from netpress.evaluate import count_params, evaluate, fidelity
from netpress.methods.fold import Fold, GroupPlan, repair

CLUSTERINGS = ("ward", "kmeans")
COLUMNS = {
    "allocation": "fold's group allocation: uniform (the paper's) or adaptive (netpress's default)",
    "removed": "fraction of parameters removed (both clusterings keep the same number of channels per group)",
    "inertia_ward / inertia_kmeans": "within-cluster sum of squares of the standardised feature rows, summed over the "
    "groups (what both clusterings minimise)",
    "inertia_ratio": "inertia_ward / inertia_kmeans (below 1: Ward's clusters are tighter)",
    "*_none / *_ar": "test accuracy (2,000-image subset) with no repair / the data-free ar repair",
    "*_s": "seconds to trace, cluster and fold (no repair), on a shared 2-core machine",
    "largest_*": "wide layers: channels in the largest cluster of any group",
    "cosine_*": "MiniLM: mean cosine of the folded model's sentence embeddings to the original's",
}


def inertia(plans: list[GroupPlan]) -> float:
    """Σ over groups and clusters of ‖row − cluster mean‖² on the rows fold clustered."""
    total = 0.0
    for plan in plans:
        for members in plan.clusters:
            rows = plan.features[members]
            total += float(((rows - rows.mean(0)) ** 2).sum())
    return total


def folded(model: nn.Module, clustering: str, allocation: str, level: float, example: torch.Tensor) -> tuple:
    method = Fold(clustering=clustering, allocation=allocation, repair="none")
    start = time.perf_counter()
    reduced, plans, report = method.reduce(model, Budget(params=level), example)
    return reduced, plans, report[-1]["params_removed"], time.perf_counter() - start


def wide_row(row: dict, model: nn.Module, allocation: str, level: float, example: torch.Tensor, measure=None) -> dict:
    """``row`` with each clustering's removed share, inertia, seconds, largest cluster and ``measure(reduced)``."""
    for clustering in CLUSTERINGS:
        reduced, plans, removed, seconds = folded(model, clustering, allocation, level, example)
        row["removed"] = round(removed, 4)
        row[f"inertia_{clustering}"] = round(inertia(plans), 2)
        row[f"{clustering}_s"] = round(seconds, 2)
        row[f"largest_{clustering}"] = max(len(members) for plan in plans for members in plan.clusters)
        if measure is not None:
            row[f"cosine_{clustering}"] = measure(reduced)
    row["inertia_ratio"] = round(row["inertia_ward"] / row["inertia_kmeans"], 4)
    print(row, flush=True)
    return row


def run_cnn(name: str) -> list[dict]:
    handle = netpress.load_model(f"zoo:{name}")
    test = load_dataset("fashion-mnist", "test")
    subset = torch.utils.data.Subset(test, random.Random(0).sample(range(len(test)), TEST_SUBSET))
    example = torch.zeros(1, *handle.input_shape)
    rows = []
    for allocation in ("uniform", "adaptive"):
        for level in LEVELS:
            row = {"model": name, "allocation": allocation, "level": level}
            for clustering in CLUSTERINGS:
                reduced, plans, removed, seconds = folded(handle.module, clustering, allocation, level, example)
                row["removed"] = round(removed, 4)
                row[f"inertia_{clustering}"] = round(inertia(plans), 2)
                row[f"{clustering}_s"] = round(seconds, 2)
                for kind in ("none", "ar"):
                    repaired = copy.deepcopy(reduced)
                    repair(repaired, plans, kind)
                    row[f"{clustering}_{kind}"] = round(evaluate(repaired, subset).accuracy, 4)
            row["inertia_ratio"] = round(row["inertia_ward"] / row["inertia_kmeans"], 4)
            print(row, flush=True)
            rows.append(row)
    return rows


def run_mlp() -> list[dict]:
    torch.manual_seed(0)
    widths = [784, 2048, 2048, 2048, 10]
    layers = [m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.ReLU())][:-1]
    row = {"model": "mlp", "allocation": "adaptive", "level": 0.3}
    return [wide_row(row, nn.Sequential(*layers).eval(), "adaptive", 0.3, torch.zeros(1, 784))]


def run_minilm() -> list[dict]:
    st = minilm()
    sentences = fortune_sentences(2000, 0)
    bert = st[0].model
    reference = embed(st, sentences)
    ffn = sum(layer.intermediate.dense.weight.numel() * 2 + layer.intermediate.dense.bias.numel() for layer in bert.encoder.layer)

    def cosine(reduced: nn.Module) -> float:
        st[0].model = reduced
        try:
            return round(fidelity(embed(st, sentences), reference).cosine, 4)
        finally:
            st[0].model = bert

    level = 0.3 * ffn / count_params(bert)  # 30 % of the FFN neurons, uniform over the six FFNs
    row = {"model": "minilm", "allocation": "uniform", "level": 0.3}
    return [wide_row(row, bert, "uniform", level, torch.zeros(1, 16, dtype=torch.int64), cosine)]


def note(rows: list[dict], model: str) -> str:
    mine = [r for r in rows if r["model"] == model]
    below = sum(r["inertia_ratio"] <= 1 for r in mine)
    ratios = [r["inertia_ratio"] for r in mine]
    parts = [
        f"{model}: Ward's inertia is at or below k-means' in {below} of {len(mine)} cells "
        f"(ratio {min(ratios):.3f}–{max(ratios):.3f})"
    ]
    for kind in ("none", "ar"):
        if f"ward_{kind}" in mine[0]:
            diffs = [100 * (r[f"ward_{kind}"] - r[f"kmeans_{kind}"]) for r in mine]
            worse = [f"{r['allocation']} {r['level']:g} ({d:+.2f})" for r, d in zip(mine, diffs) if d < 0]
            parts.append(
                f"accuracy with repair {kind}, Ward minus k-means: {min(diffs):+.2f} to {max(diffs):+.2f} points, mean "
                f"{sum(diffs) / len(diffs):+.2f}; Ward below at " + (", ".join(worse) if worse else "no cell")
            )
    seconds = sum(r["ward_s"] for r in mine), sum(r["kmeans_s"] for r in mine)
    parts.append(f"seconds in all, Ward {seconds[0]:.1f} against k-means {seconds[1]:.1f}")
    if "largest_ward" in mine[0]:
        parts.append(f"largest cluster, Ward {mine[0]['largest_ward']} against k-means {mine[0]['largest_kmeans']} channels")
    if "cosine_ward" in mine[0]:
        parts.append(f"embedding cosine, Ward {mine[0]['cosine_ward']} against k-means {mine[0]['cosine_kmeans']}")
    return "; ".join(parts) + "."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg", "mobilenetv2", "mlp", "minilm"])
    args = parser.parse_args()
    path = RESULTS_DIR / "fold-clustering.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    rows = [r for r in old.get("rows", []) if r["model"] not in args.models]
    commands = {k: v for k, v in old.get("commands", {}).items() if k not in args.models}
    runs = {"mlp": run_mlp, "minilm": run_minilm}
    for name in args.models:
        rows += runs[name]() if name in runs else run_cnn(name)
    commands.update({name: command_line() for name in args.models})
    write_result(
        "fold-clustering",
        {
            "description": "Fold's clustering, Ward (the default) against k-means (KMeans, 3 seeded k-means++ restarts), "
            "on the same channel groups and channels per group; no fine-tuning.",
            "columns": COLUMNS,
            "commands": commands,
            "notes": [note(rows, m) for m in dict.fromkeys(r["model"] for r in rows)],
            "rows": rows,
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
