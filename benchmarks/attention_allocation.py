"""Per-layer allocations on nn.MultiheadAttention's packed in-projection: its query, key and value rows allocated
as three layers (netpress since commit 1bb3470; ``part_counts`` in netpress/methods/base.py) against as one (before it).

The model is benchmarks/attention.py's (a 2-layer nn.TransformerEncoder over the rows of a Fashion-MNIST image,
trained here with the same seed and recipe). For each magnitude allocation and sparsity, the "three layers" row is
``netpress.press`` with ``MagnitudePruning(allocation)``, measured on the written file; the "one layer" row prunes
the same model in memory with the same functions (``prune_counts`` and ``smallest_mask``) given the packed weights
whole, which is what netpress wrote before the change. Global magnitude ranks every weight together, so its rows
agree by construction (a check). FCPTS's three thresholds cannot be switched off; its figures before the change are
in section ``attention`` as recorded at ab8170e.

    .venv/bin/python benchmarks/attention_allocation.py [--sparsities 0.5,0.7,0.8] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NETPRESS_QUIET", "1")

from attention import ROWS, RowEncoder, dense_predictions, train  # noqa: E402
from common import regenerate_results_md, timed_press, write_result  # noqa: E402

import netpress  # noqa: E402
from netpress import Budget, ModelHandle  # noqa: E402
from netpress.evaluate import predict  # noqa: E402
from netpress.methods import MagnitudePruning, compressible_weights  # noqa: E402
from netpress.methods.baselines import ALLOCATIONS, prune_counts, smallest_mask  # noqa: E402

COLUMNS = {
    "allocation": "magnitude pruning's per-layer allocation",
    "sparsity": "the global target, over every coded weight (the in-projections among them)",
    "in_proj_as": "three layers: the query, key and value rows allocated apart (netpress since 1bb3470, from the "
    "written file); one layer: the packed rows allocated as one (before it; pruned in memory)",
    "accuracy": "Fashion-MNIST test accuracy (%)",
    "agreement": "test images (%) on which the pruned model's top-1 class is the dense model's",
    "in_proj_sparsity": "zeros among the in-projection weights (all layers together)",
    "qkv_sparsity": "zeros in the query / key / value rows of the first encoder layer",
}


def pruned_as_one_layer(model: torch.nn.Module, allocation: str, sparsity: float) -> torch.nn.Module:
    """The model pruned by ``allocation`` with every coded weight, the packed in-projection too, as one layer."""
    pruned = copy.deepcopy(model)
    weights = compressible_weights(pruned)
    with torch.no_grad():
        for w, count in zip(weights.values(), prune_counts(list(weights.values()), sparsity, allocation)):
            w.masked_fill_(smallest_mask(w.abs(), count), 0.0)
    return pruned


def measured(model: torch.nn.Module, dense_classes: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> dict:
    weights = compressible_weights(model)
    packed = {n: w for n, w in weights.items() if n.endswith("in_proj_weight")}
    first = next(iter(packed.values()))
    with torch.no_grad():
        classes = predict(model, inputs).argmax(1)
    return {
        "accuracy": round(100 * (classes == labels).float().mean().item(), 2),
        "agreement": round(100 * (classes == dense_classes).float().mean().item(), 2),
        "in_proj_sparsity": round(sum(int((w == 0).sum()) for w in packed.values()) / sum(w.numel() for w in packed.values()), 4),
        "qkv_sparsity": " / ".join(f"{(p == 0).float().mean().item():.3f}" for p in first.chunk(3)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.5,0.7,0.8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="attention-allocation")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = train(lambda: RowEncoder(2), 4)
    inputs, labels, dense_classes, dense = dense_predictions(model)
    handle = ModelHandle(model, {}, "fashion-mnist", (1, ROWS, ROWS))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in (float(s) for s in args.sparsities.split(",")):
            for allocation in ALLOCATIONS:
                out = Path(tmp) / f"{allocation}-{sparsity}.press"
                report, _ = timed_press(handle, [MagnitudePruning(allocation)], Budget(sparsity=sparsity), out)
                loaded = netpress.load(out, model=copy.deepcopy(model)).eval()
                three = measured(loaded, dense_classes, inputs, labels)
                assert abs(three["accuracy"] - round(100 * report["accuracy_after"], 2)) < 1e-9
                one = measured(pruned_as_one_layer(model, allocation, sparsity), dense_classes, inputs, labels)
                if allocation == "global":
                    assert one == three, (one, three)
                for name, values in (("three layers", three), ("one layer", one)):
                    rows.append({"allocation": allocation, "sparsity": sparsity, "in_proj_as": name, **values})
                    print(rows[-1], flush=True)
    first = next(w for n, w in compressible_weights(model).items() if n.endswith("in_proj_weight"))
    first_magnitudes = " / ".join(f"{p.abs().mean().item():.3f}" for p in first.detach().chunk(3))
    pairs = [(a, b) for a, b in zip(rows[::2], rows[1::2]) if a["allocation"] != "global"]
    better = sum(a["accuracy"] > b["accuracy"] for a, b in pairs)
    notes = [
        f"Three layers against one: more accurate at {better} of the {len(pairs)} cells of uniform, ERK and LAMP ("
        + "; ".join(f"{a['allocation']} {a['sparsity']:g} {a['accuracy'] - b['accuracy']:+.2f} points" for a, b in pairs)
        + "). Allocated as one layer, the first layer's value rows, whose weights are the smallest there (mean magnitude of "
        f"the query / key / value rows {first_magnitudes}), lose the most (qkv_sparsity).",
        "Global magnitude ranks every weight of the model together: its rows are the same both ways (checked).",
    ]
    write_result(
        args.name,
        {
            "description": "Magnitude pruning of benchmarks/attention.py's 2-layer nn.TransformerEncoder classifier "
            f"(dense test accuracy {100 * dense:.2f} %), its attention layers' packed query/key/value rows allocated as "
            f"three layers (netpress) and as one (before commit 1bb3470). Threads: {args.threads}.",
            "columns": COLUMNS,
            "notes": notes,
            "rows": rows,
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
