"""Soft weight-sharing on the zoo's LeNets: file size and accuracy after retraining under the mixture prior.

Each model is retrained with ``SoftWeightSharing`` (defaults unless told) on the whole Fashion-MNIST
training split, written, read back and measured on the test split. Peers in the same run, on the same
model: L² at the soft weight-sharing file's size (post-training, 1,024 calibration images), Deep
Compression's recipe without retraining (global magnitude pruning to the same sparsity, then k-means
to the same number of levels, through netpress's codec), and PyTorch's own global L1 pruning to the
same sparsity, saved as a state dict and compressed with zstd-19.

    .venv/bin/python benchmarks/soft_sharing.py [--models lenet300,lenet5] [--epochs 20] [--taus 0.05] [--ratios 80,120]
        [--calib 10000]

With ``--ratios``, one run per ratio target and τ, the τ being the first guess of the method's search (4-epoch
pilot runs; the snap prunes more only where the kept run's file is still over the target).
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import press_row, regenerate_results_md, timed_press, write_result  # noqa: E402
from sparsity import load_peer_file, torch_prune_files  # noqa: E402

from netpress import api  # noqa: E402
from netpress.budget import Budget  # noqa: E402
from netpress.evaluate import evaluate  # noqa: E402
from netpress.methods import L2, KMeansQuantization, MagnitudePruning, SoftWeightSharing  # noqa: E402

PEER_STORAGE = "torch.save + zstd-19"


def comparison(rows: list[dict]) -> list[str]:
    """One line per soft weight-sharing run: against the post-training L² file of its size (the next L² row)."""
    lines = []
    for i, sws in enumerate(rows):
        if sws["method"] != "sws":
            continue
        l2 = next(r for r in rows[i:] if r["method"] == "l2" and r["model"] == sws["model"])
        gap = sws["accuracy"] - l2["accuracy"]
        verdict = f"{abs(gap):.2f} points {'above' if gap > 0 else 'below'}" if gap else "level with"
        met = ""
        if sws.get("target_ratio"):
            allowed = sws["file_bytes"] * sws["ratio"] / sws["target_ratio"]
            met = f" (target {sws['target_ratio']:g}×: {sws['file_bytes'] / allowed:.0%} of the bytes allowed)"
        lines.append(
            f"{sws['model']}, {sws['setting']}: soft weight-sharing {sws['ratio']}× at {sws['accuracy']} %{met} "
            f"({sws['accuracy_before'] - sws['accuracy']:.2f} points lost, {sws['seconds']} s); L² at its size "
            f"{l2['ratio']}× at {l2['accuracy']} % ({l2['seconds']} s): soft weight-sharing is {verdict} L²."
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lenet300,lenet5")
    parser.add_argument("--epochs", type=int, default=SoftWeightSharing.epochs)
    parser.add_argument("--taus", default=str(SoftWeightSharing.tau), help="comma-separated first-epoch τ, one run each")
    parser.add_argument("--ratios", default="", help="comma-separated ratio targets, one run per τ each (default: none)")
    parser.add_argument("--zero-share", type=float, default=SoftWeightSharing.zero_share)
    parser.add_argument("--calib", type=int, default=None, help="retrain on this many training images (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="soft-sharing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    methods = [SoftWeightSharing(epochs=args.epochs, tau=float(tau), zero_share=args.zero_share) for tau in args.taus.split(",")]
    targets = [Budget(ratio=float(r)) for r in args.ratios.split(",")] if args.ratios else [None]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        for name, method, target in itertools.product(args.models.split(","), methods, targets):
            handle = api.load_model(f"zoo:{name}")
            report, seconds = timed_press(handle, method, target, out / f"{name}-sws.press", calib=args.calib)
            if target is None:
                tau = f"τ {method.tau:g} → {method.tau * method.anneal:g}"
            else:
                fit = report["layers"]["sws"][0]["fit"]
                pilots = ", ".join(f"{p['tau']:.3g}" for p in fit["pilots"])
                tau = (
                    f"ratio {target.ratio:g}: τ {fit['tau']:.3g} → {fit['tau'] * method.anneal:.3g} "
                    f"(pilots' τ {pilots}), zero-spike shift {fit['zero_shift']:.3g}"
                )
            setting = f"{method.components} components, {tau}, π0 {method.zero_share:g}, {method.epochs} epochs"
            if args.calib:
                setting += f", {args.calib:,} training images"
            rows.append(press_row(name, "sws", setting, report, seconds))
            if target is not None:
                rows[-1]["target_ratio"] = target.ratio
            print(rows[-1], flush=True)
            sparsity, levels = report["sparsity"], max(r["levels"] for r in report["layers"]["sws"])
            size = report["file_bytes"]

            ratio = report["original_bytes"] / (size - 1)  # strictly smaller than the soft weight-sharing file
            l2, seconds = timed_press(handle, L2(), Budget(ratio=ratio), out / f"{name}-l2.press")
            rows.append(press_row(name, "l2", f"ratio {ratio:.2f} (the sws file's size)", l2, seconds))
            print(rows[-1], flush=True)

            recipe = [MagnitudePruning("global"), KMeansQuantization(levels)]
            pruned, seconds = timed_press(handle, recipe, Budget(sparsity=sparsity), out / f"{name}-recipe.press")
            rows.append(
                press_row(name, "magnitude+kmeans", f"global {sparsity:.4f}, {levels} levels, no retraining", pruned, seconds)
            )
            print(rows[-1], flush=True)

            files, _, seconds = torch_prune_files(handle.module, sparsity)
            test = api.resolve_dataset("fashion-mnist", "test", handle.input_shape)
            peer = evaluate(load_peer_file(handle.module, PEER_STORAGE, files[PEER_STORAGE]), test).accuracy
            peer_report = {
                "file_bytes": len(files[PEER_STORAGE]),
                "ratio": report["original_bytes"] / len(files[PEER_STORAGE]),
                "sparsity": sparsity,
                "accuracy_before": report["accuracy_before"],
                "accuracy_after": peer,
            }
            rows.append(press_row(name, "torch-prune", f"global L1 {sparsity:.4f}, {PEER_STORAGE}", peer_report, seconds))
            print(rows[-1], flush=True)
    write_result(
        args.name,
        {
            "description": (
                "Soft weight-sharing (retraining under a learned Gaussian-mixture prior on the whole Fashion-MNIST "
                "training split) against peers at the same file size or sparsity, same run, same models. Accuracy "
                "on the test split, of the file read back."
            ),
            "columns": {
                "ratio": "fp32 safetensors bytes / file bytes",
                "target_ratio": "the ratio asked for (--ratios), if any",
                "sparsity": "share of zero weights in the coded layers",
                "accuracy_before": "the zoo model's test accuracy (%)",
                "accuracy": "the written file's test accuracy (%)",
                "seconds": "wall time of compressing and writing (and, for netpress, measuring) the file",
            },
            "rows": rows,
            "notes": comparison(rows),
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
