"""FCPTS on a pretrained sentence encoder: all-MiniLM-L6-v2 at an exact global sparsity, against the four
data-free magnitude allocations and PyTorch's own pruning, in one run.

The model is read as a user does, from its Hugging Face directory. FCPTS distils the dense model's sentence
embeddings (cosine distance) on 1,024 Debian fortunes drawn (seed 0) from the train split, every usable
fortune outside the 2,000 the model is measured on; the magnitude allocations use no data. Every netpress row
is measured on the model loaded back from its written .press file (fidelity: mean cosine to the original's
embeddings and the overlap of each sentence's 10 nearest neighbours, on the 2,000 test fortunes), with the
zeros counted in the file. The peer, ``torch.nn.utils.prune.global_unstructured`` (L1 over the same layers,
the same masks as magnitude-global), is saved as a PyTorch user would (dense ``torch.save``; CSR with int32
indices through zstd-19) and measured on each file loaded back.

    .venv/bin/python benchmarks/encoder_sparsity.py [--levels 0.5] [--iterations 200] [--batch-size 16]
        [--threads 2] [--raw-dtype fp32] [--pruned-only] [--name encoder-sparsity]

``--raw-dtype fp16`` stores the survivors (and biases, normalisation) in fp16, and the peer's whole state
dict too; ``--pruned-only`` leaves out the rows that quantize the survivors to 8 bits.

Needs the ``transformers`` and ``bench`` extras, and Debian's fortunes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NETPRESS_QUIET", "1")

from common import minilm_directory, regenerate_results_md, write_result  # noqa: E402
from sparsity import RAW_DTYPES, load_peer_file, torch_prune_files  # noqa: E402

import netpress  # noqa: E402
from netpress import Budget, api  # noqa: E402
from netpress.compressed import fp32_bytes  # noqa: E402
from netpress.data.text import load_sentences  # noqa: E402
from netpress.evaluate import fidelity  # noqa: E402
from netpress.methods import ALLOCATIONS, FCPTS, MagnitudePruning, UniformQuantization  # noqa: E402
from netpress.methods.base import compressible_weights, target_zeros  # noqa: E402

COLUMNS = {
    "sparsity": "the global target: the share of the compressible weights (every Linear and the Embedding tables) set to zero",
    "storage": "the file the figures come from: netpress's .press, or the peer's file",
    "cosine": "mean cosine of the original and the compressed model's embeddings of the same test fortune",
    "top10": "mean overlap of each test fortune's 10 nearest neighbours (cosine) between the two models",
    "exact": "the zeros counted in the written file equal ⌈target · weights⌉ (with 8-bit codes after pruning, a survivor "
    "that rounds to zero would add one)",
    "kept": "FCPTS: the allocation it returned (learned, or its start as a safeguard) and the start it chose",
    "file_bytes": "bytes of the file on disk",
    "ratio": "fp32 bytes of the model / file_bytes",
    "seconds": "to compress and write the file (FCPTS: including embedding the calibration fortunes)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="0.5")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--raw-dtype", default="fp32", choices=list(RAW_DTYPES))
    parser.add_argument("--pruned-only", action="store_true")
    parser.add_argument("--name", default="encoder-sparsity")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    handle = api.load_model(minilm_directory())
    sentences = load_sentences("fortunes")
    reference = handle.encoder.embed(handle.module, sentences)
    original_bytes = fp32_bytes(handle.module)
    fcpts = FCPTS(iterations=args.iterations, batch_size=args.batch_size)
    rows = []

    def row(level: float, setting: str, storage: str, file_bytes: int, match: dict, **extra) -> None:
        rows.append(
            {
                "sparsity": level,
                "setting": setting,
                "storage": storage,
                "cosine": match["cosine"],
                "top10": match["top10"],
                **extra,
                "file_bytes": file_bytes,
                "ratio": round(original_bytes / file_bytes, 2),
            }
        )
        print(rows[-1], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for level in [float(x) for x in args.levels.split(",")]:
            settings = [(f"magnitude-{a}", [MagnitudePruning(a)]) for a in ALLOCATIONS]
            eight = UniformQuantization(8, per_channel=True)
            settings.append(("fcpts", [fcpts]))
            if not args.pruned_only:
                settings += [
                    ("magnitude-lamp + uniform 8-bit per-channel", [MagnitudePruning("lamp"), eight]),
                    ("fcpts + uniform 8-bit per-channel", [fcpts, eight]),
                ]
            for setting, methods in settings:
                path = Path(tmp) / "m.press"
                budget = Budget(sparsity=level)
                report = api.press(handle, methods, budget, out=path, data="fortunes", raw_dtype=args.raw_dtype)
                weights = compressible_weights(netpress.load(path)).values()
                zeros, numel = sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)
                layers = report["layers"].get("fcpts")
                row(
                    level,
                    setting,
                    ".press",
                    report["file_bytes"],
                    report["fidelity"],  # measured by press on the model loaded back from the file
                    exact=zeros == target_zeros(level, numel),
                    kept=f"{layers[0]['kept']} (from {layers[0]['init']})" if layers else "–",
                    seconds=report["seconds"],
                )
            files, _, seconds = torch_prune_files(handle.module, level, args.raw_dtype)
            for storage in ("torch.save", "CSR torch.save + zstd-19"):
                model = load_peer_file(handle.module, storage, files[storage])
                match = fidelity(handle.encoder.embed(model, sentences), reference).to_dict()
                row(level, "torch-prune (global L1)", storage, len(files[storage]), match, seconds=round(seconds, 1))

    floats = " Floats stored as floats (survivors, biases; the peer's state dict) in fp16." if args.raw_dtype == "fp16" else ""
    write_result(
        args.name,
        {
            "description": "all-MiniLM-L6-v2 (22.7 M parameters, 11.7 M of them in the token-embedding table) pruned to an "
            f"exact global sparsity. FCPTS: {args.iterations} steps of {args.batch_size} calibration fortunes (sentences of "
            f"similar length per step), 1,024 fortunes from the train split, seed 0. Threads: {args.threads}.{floats}",
            "columns": COLUMNS,
            "rows": rows,
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
