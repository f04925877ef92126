"""Model folding against structured pruning at the same parameter budget, no fine-tuning.

CNNs (``--models resnet20 vgg mobilenetv2``): for 10 %–60 % of parameters removed, Fashion-MNIST accuracy of
fold (Ward clustering, the default; section fold-clustering compares k-means) with each repair (none, ar, dir, data)
under both group allocations (uniform, the paper's; adaptive, netpress's default), channel-l1 on the same groups
(none, dir, data), and Torch-Pruning's MagnitudePruner (L1, global and uniform; its ratio bisected so the parameters
removed match fold's). The clustering runs once per level; repairs are applied to copies of the
folded model, and the DeepInversion samples are drawn once per model. Accuracy is measured on a
fixed seeded 2,000-image subset of the test split (the machine is shared; full-set evaluation of
every cell would not fit the 10-minute bound).

MiniLM (``--models minilm``): all-MiniLM-L6-v2, the FFN intermediate neurons of every layer folded
(or L1-pruned) by 10 %–50 %; fidelity to the original on 2,000 Debian fortunes sentences. Fold runs
three ways with the uniform allocation: k-means (the paper's CNN code), Ward (its LLM code), and Ward after
dropping half of the removed neurons by smallest L1 norm (``prune_fraction=0.5``); and that last one with the
adaptive allocation.

Run: NETPRESS_QUIET=1 .venv/bin/python benchmarks/fold.py --models vgg
Each run replaces its models' rows in results/fold.json and keeps the others.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import matplotlib
import torch
import torch_pruning as tp
from common import (
    RESULTS_DIR,
    command_line,
    embed,
    minilm,
    regenerate_results_md,
    write_result,
)

import netpress
from netpress.budget import Budget
from netpress.data import calibration_subset, load_dataset
from netpress.data.text import fortune_sentences
from netpress.evaluate import count_params, evaluate, fidelity
from netpress.methods.fold import ChannelL1, Fold, deep_inversion, repair
from netpress.report import save_figure

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
MINILM_LEVELS = [0.1, 0.2, 0.3, 0.4, 0.5]
TEST_SUBSET = 2000
COLUMNS = {
    "removed": "fraction of parameters removed (achieved by fold; channel-l1 is identical, Torch-Pruning within 0.5 %)",
    "fold_* / l1_*": "accuracy after fold (Ward clustering, the default) / channel-l1, uniform allocation (the "
    "paper's), with that repair (data = BatchNorm statistics from 1,024 training images)",
    "adapt_*": "fold with the adaptive allocation (netpress's default): fewer channels removed from groups whose merges "
    "cost more; adapt_removed is the share of parameters it removed (at least the level, like the others)",
    "tp_global / tp_uniform": "Torch-Pruning MagnitudePruner, L1 importance, global / uniform ratio, data-free",
    "best_free_fold_wins / adapt_wins": "max(none, ar, dir) of uniform / adaptive fold beats every data-free pruning column",
    "fold_s / adapt_s": "seconds to trace, cluster and fold (no repair)",
    "cosine / top10": "MiniLM: mean cosine of original vs compressed embeddings / mean overlap of top-10 neighbour sets",
    "fold_* (MiniLM) / ward_* / hybrid_* / l1_*": "MiniLM: Fold k-means / Fold Ward / Fold Ward with prune_fraction 0.5 / "
    "L1 neuron pruning, uniform allocation, all on the same FFN groups and budget",
    "adapt_* (MiniLM)": "MiniLM: Fold Ward with prune_fraction 0.5 and the adaptive allocation, same budget",
    "hybrid_wins / kmeans_wins / adapt_wins (MiniLM)": "MiniLM: that fold beats L1 pruning on both cosine and top-10",
}


def _levels(rows: list[dict]) -> str:
    return ", ".join(f"{100 * r['level']:g} %" for r in rows) or "no level"


def best_free(row: dict, prefix: str) -> float:
    """The best data-free accuracy of a fold column set (``fold`` uniform, ``adapt`` adaptive): no repair, ar or dir."""
    return max(row[f"{prefix}_none"], row[f"{prefix}_ar"], row[f"{prefix}_dir"])


def cnn_note(rows: list[dict], model: str) -> str:
    """What the rows of one CNN show: where the best data-free fold wins, where ar over-corrects, and the times."""
    mine = [r for r in rows if r["model"] == model]
    if not mine:
        return ""
    lost = [r for r in mine if not r["best_free_fold_wins"]]
    above_data = [r for r in mine if best_free(r, "fold") > r["l1_data"]]
    over = [r for r in mine if r["fold_ar"] < r["fold_none"]]
    adapt_lost = [r for r in mine if not r["adapt_wins"]]
    adapt_above = [r for r in mine if best_free(r, "adapt") > best_free(r, "fold")]
    gains = [100 * (best_free(r, "adapt") - best_free(r, "fold")) for r in mine]
    data_gains = [100 * (r["adapt_data"] - r["fold_data"]) for r in mine]
    times = [r["fold_s"] for r in mine] + [r["adapt_s"] for r in mine]
    return (
        f"{model} (original {100 * mine[0]['original']:.2f} % on the 2,000-image subset): with the uniform allocation "
        "the best data-free fold "
        + ("beats channel-l1 and Torch-Pruning global/uniform at every level" if not lost else f"loses at {_levels(lost)}")
        + f"; it beats channel-l1 with data repair at {_levels(above_data)}. ar falls below no repair at "
        f"{_levels(over)}. With the adaptive allocation the best data-free fold "
        + ("beats them at every level" if not adapt_lost else f"loses at {_levels(adapt_lost)}")
        + f" and is above the uniform one at {_levels(adapt_above)} ({min(gains):+.1f} to {max(gains):+.1f} points; "
        f"with the data repair {min(data_gains):+.1f} to {max(data_gains):+.1f}). Folding takes "
        f"{min(times):g}-{max(times):g} s; generating the DeepInversion samples took {mine[0]['dir_s']:g} s, once per model."
    )


def minilm_note(rows: list[dict]) -> str:
    mine = [r for r in rows if r["model"] == "minilm"]
    if not mine:
        return ""
    levels = ", ".join(f"{100 * r['level']:g} %" for r in mine)
    lost = [f"{100 * r['level']:g} %" for r in mine if not r.get("hybrid_wins")]
    kmeans_lost = [f"{100 * r['level']:g} %" for r in mine if not r.get("kmeans_wins")]
    verdict = "beats L1 neuron pruning at every level" if not lost else "loses to L1 pruning at " + ", ".join(lost)
    adapt_lost = [f"{100 * r['level']:g} %" for r in mine if not r.get("adapt_wins")]
    adapt_above = [f"{100 * r['level']:g} %" for r in mine if r["adapt_cosine"] > r["hybrid_cosine"]]
    return (
        f"MiniLM at {levels} of the FFN neurons: fold with Ward clustering after dropping half of the removed neurons "
        f"(prune_fraction 0.5) {verdict}; "
        f"plain k-means fold (the paper's CNN recipe) loses at {', '.join(kmeans_lost) or 'no level'}. Averaging two "
        "unrelated FFN neurons into one costs more than dropping a weak one; dropping only, with no folding, is the l1 column. "
        "The same fold with the adaptive allocation "
        + ("beats L1 pruning at every level" if not adapt_lost else "loses to L1 pruning at " + ", ".join(adapt_lost))
        + f"; its cosine is above the uniform allocation's at {', '.join(adapt_above) or 'no level'}."
    )


def torch_pruning(model: torch.nn.Module, example: torch.Tensor, target: float, global_pruning: bool) -> torch.nn.Module:
    """MagnitudePruner (L1) with its ratio bisected until the parameters removed match ``target``."""
    before, last = count_params(model), None
    lo, hi = 0.0, 0.95
    for _ in range(14):
        ratio = (lo + hi) / 2
        pruned = copy.deepcopy(model)
        pruner = tp.pruner.MagnitudePruner(
            pruned,
            example,
            importance=tp.importance.MagnitudeImportance(p=1),
            pruning_ratio=ratio,
            global_pruning=global_pruning,
            ignored_layers=[pruned.get_submodule(_output_layer(pruned))],
        )
        pruner.step()
        removed = 1 - count_params(pruned) / before
        last = pruned
        lo, hi = (ratio, hi) if removed < target else (lo, ratio)
        if abs(removed - target) < 0.002:
            break
    return last


def _output_layer(model: torch.nn.Module) -> str:
    return [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)][-1]


def run_cnn(name: str) -> list[dict]:
    handle = netpress.load_model(f"zoo:{name}")
    model = handle.module
    test = load_dataset("fashion-mnist", "test")
    subset = torch.utils.data.Subset(test, random.Random(0).sample(range(len(test)), TEST_SUBSET))
    calib = calibration_subset(load_dataset("fashion-mnist", "train"), 1024, 0).tensors()[0]
    example = torch.zeros(1, *handle.input_shape)
    start = time.perf_counter()
    synthetic = deep_inversion(model, handle.input_shape, 256, 100, 0)
    di_seconds = time.perf_counter() - start
    acc = lambda m: round(evaluate(m, subset).accuracy, 4)  # noqa: E731
    rows = []
    for level in LEVELS:
        row = {"model": name, "level": level, "original": acc(model)}
        for method, prefix, repairs in (
            (Fold(allocation="uniform"), "fold", ("none", "ar", "dir", "data")),
            (Fold(allocation="adaptive"), "adapt", ("none", "ar", "dir", "data")),
            (ChannelL1(), "l1", ("none", "dir", "data")),
        ):
            start = time.perf_counter()
            reduced, plans, report = method.reduce(model, Budget(params=level), example)
            if prefix != "l1":
                row[f"{prefix}_s"] = round(time.perf_counter() - start, 2)
                row["removed" if prefix == "fold" else "adapt_removed"] = round(report[-1]["params_removed"], 4)
            for kind in repairs:
                repaired = copy.deepcopy(reduced)
                repair(repaired, plans, kind, {"dir": synthetic, "data": calib}.get(kind))
                row[f"{prefix}_{kind}"] = acc(repaired)
        for mode in ("global", "uniform"):
            row[f"tp_{mode}"] = acc(torch_pruning(model, example, row["removed"], mode == "global"))
        pruning = max(row["l1_none"], row["l1_dir"], row["tp_global"], row["tp_uniform"])
        for prefix, key in (("fold", "best_free_fold_wins"), ("adapt", "adapt_wins")):
            row[key] = best_free(row, prefix) > pruning
        row["dir_s"] = round(di_seconds, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def run_minilm(levels: list[float]) -> list[dict]:
    st = minilm()
    sentences = fortune_sentences(2000, 0)
    bert = st[0].model
    total = count_params(bert)
    ffn = sum(layer.intermediate.dense.weight.numel() * 2 + layer.intermediate.dense.bias.numel() for layer in bert.encoder.layer)
    reference = embed(st, sentences)
    rows = []
    text = {"input_shape": (16,), "input_dtype": "int64", "repair": "none"}
    for level in levels:
        row = {"model": "minilm", "level": level}
        for method, prefix in (
            (Fold(clustering="kmeans", allocation="uniform", **text), "fold"),
            (Fold(clustering="ward", allocation="uniform", **text), "ward"),
            (Fold(clustering="ward", prune_fraction=0.5, allocation="uniform", **text), "hybrid"),
            (Fold(clustering="ward", prune_fraction=0.5, allocation="adaptive", **text), "adapt"),
            (ChannelL1(**text), "l1"),
        ):
            start = time.perf_counter()
            budget = Budget(params=level * ffn / total)  # uniform over the FFN groups: `level` of their neurons
            result = method.apply(bert, budget=budget)
            seconds = time.perf_counter() - start
            st[0].model = result.model
            emb = embed(st, sentences)
            st[0].model = bert
            match = fidelity(emb, reference)
            row[f"{prefix}_cosine"], row[f"{prefix}_top10"] = match.cosine, match.top10
            row[f"{prefix}_s"] = round(seconds, 1)
            row["removed"] = round(result.rows[-1]["params_removed"], 4)
        for prefix in ("hybrid", "fold", "adapt"):
            wins = row[f"{prefix}_cosine"] > row["l1_cosine"] and row[f"{prefix}_top10"] > row["l1_top10"]
            row[f"{'kmeans' if prefix == 'fold' else prefix}_wins"] = wins
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    models = [m for m in dict.fromkeys(r["model"] for r in rows) if m != "minilm"]
    fig, axes = plt.subplots(1, max(len(models), 1), figsize=(6 * max(len(models), 1), 4.5), squeeze=False)
    series = ["adapt_none", "adapt_dir", "adapt_data", "fold_none", "fold_ar", "fold_dir", "fold_data"]
    series += ["l1_none", "l1_dir", "l1_data", "tp_global", "tp_uniform"]
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        for key in series:
            style = "--" if key.startswith(("l1", "tp")) else ":" if key.startswith("fold") else "-"
            removed = "adapt_removed" if key.startswith("adapt") else "removed"
            ax.plot([r[removed] for r in mine], [r[key] for r in mine], style, marker="o", ms=3, label=key)
        ax.set(title=f"{model} on Fashion-MNIST, no fine-tuning", xlabel="parameters removed", ylabel="test accuracy (2k subset)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet20", "vgg", "mobilenetv2", "minilm"])
    parser.add_argument("--minilm-levels", nargs="+", type=float, default=MINILM_LEVELS)
    args = parser.parse_args()
    torch.manual_seed(0)
    path = RESULTS_DIR / "fold.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    rows = [r for r in old.get("rows", []) if r["model"] not in args.models]
    commands = {k: v for k, v in old.get("commands", {}).items() if k not in args.models}
    for name in args.models:
        rows += run_minilm(args.minilm_levels) if name == "minilm" else run_cnn(name)
    plot(rows, RESULTS_DIR / "fold.png")

    commands.update({name: command_line() for name in args.models})
    write_result(
        "fold",
        {
            "description": "Fold vs structured pruning at equal parameters removed, no fine-tuning. "
            "Curve: [fold.png](results/fold.png).",
            "columns": COLUMNS,
            "commands": commands,
            "notes": [cnn_note(rows, m) for m in dict.fromkeys(r["model"] for r in rows) if m != "minilm"]
            + [n for n in [minilm_note(rows)] if n],
            "rows": rows,
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
