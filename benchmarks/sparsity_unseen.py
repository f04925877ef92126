"""FCPTS against the four data-free allocations on models that never saw 30,000 of the training images.

The zoo models were trained on all 60,000 training images, so the test split's 10,000 are the only
images they never saw, and at the cells of section ``sparsity`` where FCPTS and the best baseline are
a few images apart, 10,000 cannot tell them apart. Here the three models are trained afresh with the
zoo's recipe on a seeded half of the training split; FCPTS calibrates on 1,024 images of that half;
every file is measured on the 40,000 images the model never saw (the test split and the other half).

    .venv/bin/python benchmarks/sparsity_unseen.py [--models lenet5,resnet20,vgg] [--levels 0.5,0.7,0.8,0.9] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, regenerate_results_md, write_result  # noqa: E402
from sparsity import mcnemar_p, plot_accuracy  # noqa: E402

import netpress  # noqa: E402
from netpress import Budget, zoo  # noqa: E402
from netpress.data import calibration_subset, load_dataset  # noqa: E402
from netpress.evaluate import predict  # noqa: E402
from netpress.methods import ALLOCATIONS, FCPTS, MagnitudePruning  # noqa: E402

SPLIT_SEED = 0
CALIB = 1024


def halves(train: TensorDataset) -> tuple[TensorDataset, TensorDataset]:
    """A seeded split of the training images into the half a model is trained (and calibrated) on and the half it never sees."""
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(SPLIT_SEED))
    seen, unseen = order[: len(train) // 2].sort().values, order[len(train) // 2 :].sort().values
    parts = tuple(TensorDataset(*(t[rows] for t in train.tensors)) for rows in (seen, unseen))
    for part in parts:
        part.split = "train"  # calibration_subset refuses only a test split
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5,resnet20,vgg")
    parser.add_argument("--levels", default="0.5,0.7,0.8,0.9")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="sparsity-unseen")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seen, unseen = halves(load_dataset("fashion-mnist", "train"))
    test = load_dataset("fashion-mnist", "test")
    images = torch.cat([test.tensors[0], unseen.tensors[0]])
    labels = torch.cat([test.tensors[1], unseen.tensors[1]])
    on_test = torch.arange(len(images)) < len(test)
    calibration = calibration_subset(seen, CALIB, seed=0)
    methods = {"fcpts": FCPTS(), **{f"magnitude-{a}": MagnitudePruning(a) for a in ALLOCATIONS}}
    rows, lines = [], []
    models = args.models.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        for model_name in models:
            start = time.perf_counter()
            dense = zoo.fit(model_name, *seen.tensors)
            train_seconds = time.perf_counter() - start
            with torch.no_grad():
                dense_pred = predict(dense, images).argmax(1)
            dense_right = dense_pred == labels
            rows.append(_row(model_name, 0.0, "dense", dense_right, torch.ones_like(dense_right), on_test, train_seconds))
            for level in (float(x) for x in args.levels.split(",")):
                right = {}
                for method_name, method in methods.items():
                    start = time.perf_counter()
                    compressed = netpress.compress(dense, method, Budget(sparsity=level), data=calibration)
                    path = Path(tmp) / f"{model_name}-{level}-{method_name}.press"
                    netpress.save(compressed, path)
                    seconds = time.perf_counter() - start
                    with torch.no_grad():
                        pred = predict(netpress.load(path, model=zoo.build(model_name)), images).argmax(1)
                    right[method_name] = pred == labels
                    row = _row(model_name, level, method_name, right[method_name], pred == dense_pred, on_test, seconds)
                    row["file_bytes"] = path.stat().st_size
                    first_layer = compressed.details["layers"].get("fcpts", [{}])[0]
                    row["kept"] = f"{first_layer['kept']} (from {first_layer['init']})" if first_layer else "–"
                    rows.append(row)
                    print(row, flush=True)
                lines.append(_versus_best(model_name, level, right, on_test))
    plot_accuracy(rows, models, methods, RESULTS_DIR / f"{args.name}.png", "unseen", "accuracy on the 40,000 unseen images (%)")
    write_result(
        args.name,
        {
            "description": (
                f"Zoo architectures trained with the zoo's recipe on a seeded half of the Fashion-MNIST training split "
                f"(30,000 images, split seed {SPLIT_SEED}); FCPTS calibrated on {CALIB:,} images of that half (seed 0); "
                f"every file measured on the 40,000 images the model never saw: the test split and the other half. "
                f"Threads {args.threads}."
            ),
            "columns": {
                "unseen / test / other_half": (
                    "accuracy (%) on the 40,000 unseen images, on the 10,000 test images, on the 30,000 of the other half"
                ),
                "agreement": "share (%) of the 40,000 on which the file predicts what the dense model predicts",
                "kept": "FCPTS: the allocation it returned, learned or its start (safeguard), and the start",
                "seconds": "training (dense) or compress + write",
            },
            "rows": rows,
            "notes": lines,
        },
    )
    regenerate_results_md()


def _row(
    model: str, level: float, method: str, right: torch.Tensor, agrees: torch.Tensor, on_test: torch.Tensor, seconds: float
) -> dict:
    def pct(mask: torch.Tensor) -> float:
        return round(100 * float(mask.float().mean()), 3)

    return {
        "model": model,
        "sparsity": level,
        "method": method,
        "unseen": pct(right),
        "test": pct(right[on_test]),
        "other_half": pct(right[~on_test]),
        "agreement": pct(agrees),
        "seconds": round(seconds, 1),
    }


def _versus_best(model: str, level: float, right: dict[str, torch.Tensor], on_test: torch.Tensor) -> str:
    """FCPTS against the baseline most accurate on the 40,000 unseen images, with an exact McNemar test on them,
    and the same comparison on the test split alone."""
    best = max((m for m in right if m != "fcpts"), key=lambda m: int(right[m].sum()))
    ours, theirs = right["fcpts"], right[best]
    only_ours, only_theirs = int((ours & ~theirs).sum()), int((~ours & theirs).sum())
    gap = 100 * (int(ours.sum()) - int(theirs.sum())) / len(ours)
    test_gap = 100 * float(ours[on_test].float().mean() - theirs[on_test].float().mean())
    return (
        f"{model} {level:.0%}: FCPTS {gap:+.3f} points against {best} on the 40,000 unseen images "
        f"({only_ours} only FCPTS gets right, {only_theirs} only {best}; McNemar p = {mcnemar_p(only_ours, only_theirs):.2g}); "
        f"on the test split alone {test_gap:+.2f}."
    )


if __name__ == "__main__":
    main()
