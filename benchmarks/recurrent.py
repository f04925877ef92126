"""Recurrent layers (nn.LSTM) coded by every weight method (since commit 3443180), against their weights stored raw
(``keep=["rnn"]``, what every method did before) and against torch.ao's dynamic int8 quantization of the LSTM.

The model reads the 28 rows of a Fashion-MNIST image as 28 steps of 28 pixels: ``nn.LSTM(28, --hidden,
batch_first=True)`` and a Linear head on the last step's output. It is trained here with benchmarks/attention.py's
recipe (``torch.manual_seed(0)``, Adam with a one-cycle learning rate, batches of 128, ``--epochs`` over the training
split). Each setting runs through ``netpress.press`` with the LSTM's weights coded (the default) and kept raw.
Calibration: 1,024 training images, seed 0; accuracy and agreement from the written file on the test split.

    .venv/bin/python benchmarks/recurrent.py [--hidden 128] [--epochs 3] [--threads 2]
        [--settings uniform-8-tensor,uniform-8,uniform-4,lamp-50,lamp-80,fcpts-50,fcpts-80,l2-8,l2-16] [--name recurrent]
"""

from __future__ import annotations

import argparse
import copy
import io
import os
import sys
import warnings
from pathlib import Path

import torch
import zstandard
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("NETPRESS_QUIET", "1")

from attention import ROWS, SETTINGS, chosen_settings, coded_against_raw, dense_predictions, train  # noqa: E402
from common import regenerate_results_md, write_result  # noqa: E402

from netpress import ModelHandle  # noqa: E402
from netpress.compressed import fp32_bytes  # noqa: E402
from netpress.evaluate import predict  # noqa: E402
from netpress.methods import UniformQuantization, compressible_weights  # noqa: E402

# torch.ao's dynamic int8 gives the LSTM one scale per tensor: the like-for-like netpress setting.
RECURRENT_SETTINGS = {"uniform-8-tensor": ("uniform 8-bit per tensor", lambda: [UniformQuantization(8)], None), **SETTINGS}
COLUMNS = {
    "lstm": "coded: the LSTM's weights go through the method (the default since commit 3443180); raw (kept): "
    "press(keep=['rnn']) stores them as floats, as before it; the peer row: torch.ao's dynamic int8 LSTM and head",
    "file_bytes": "bytes of the file: the .press file on disk, or the peer's torch.save file (and through zstd-19)",
    "ratio": "bytes of the model's fp32 safetensors file / file_bytes",
    "sparsity": "zeros among the weights the method coded, in the file",
    "accuracy": "Fashion-MNIST test accuracy (%) of the model loaded back from the file (the peer: see the notes)",
    "agreement": "test images (%) on which the file's top-1 class is the dense model's",
    "seconds": "compression and writing the file, not the evaluation",
    "refused": "press refused the budget before compressing: its message",
}


class RowLSTM(nn.Module):
    """An LSTM classifier over the rows of a 1×28×28 image, one step per row."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(ROWS, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x.reshape(x.shape[0], ROWS, ROWS))[0][:, -1])


def _quantized(model: nn.Module) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's notice that it moves to torchao
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.LSTM, nn.Linear}, dtype=torch.qint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", default="uniform-8-tensor,uniform-8,uniform-4,lamp-50,lamp-80,fcpts-50,fcpts-80,l2-8,l2-16")
    parser.add_argument("--name", default="recurrent")
    args = parser.parse_args()
    chosen = chosen_settings(parser, args.settings, RECURRENT_SETTINGS)
    torch.set_num_threads(args.threads)

    model, train_seconds = train(lambda: RowLSTM(args.hidden), args.epochs)
    inputs, labels, dense_classes, dense = dense_predictions(model)
    print(f"dense test accuracy {100 * dense:.2f} % after {train_seconds:.0f} s of training", flush=True)
    weights = compressible_weights(model)
    recurrent = sum(w.numel() for n, w in weights.items() if n.startswith("rnn."))
    coded_numel = sum(w.numel() for w in weights.values())
    original = fp32_bytes(model)

    def check(_key: str, _mode: str, report: dict, _out: Path) -> dict:
        assert report["uncompressed_layers"] == {}, report["uncompressed_layers"]
        return {}

    handle = ModelHandle(model, {}, "fashion-mnist", (1, ROWS, ROWS))
    rows = coded_against_raw(handle, RECURRENT_SETTINGS, chosen, "lstm", ["rnn"], check)

    quantized = _quantized(model)
    saved = io.BytesIO()
    torch.save(quantized.state_dict(), saved)
    with torch.no_grad():
        classes = predict(quantized, inputs).argmax(1)
    squeezed = zstandard.ZstdCompressor(level=19).compress(saved.getvalue())
    for storage, size in (("torch.save", saved.tell()), ("torch.save + zstd-19", len(squeezed))):
        rows.append(
            {
                "setting": f"torch.ao dynamic int8 (LSTM, Linear), {storage}",
                "lstm": "peer",
                "file_bytes": size,
                "ratio": round(original / size, 2),
                "accuracy": round(100 * (classes == labels).float().mean().item(), 2),
                "agreement": round(100 * (classes == dense_classes).float().mean().item(), 2),
            }
        )
        print(rows[-1], flush=True)
    try:
        torch.load(io.BytesIO(saved.getvalue()), weights_only=True)
        readable = "it reads back with torch.load(weights_only=True)"
    except Exception as exc:  # torch's unpickler refuses the packed LSTM parameters
        readable = f"torch.load(weights_only=True) refuses it ({type(exc).__name__}), so its accuracy is the in-memory model's"

    notes = [
        f"Model: nn.LSTM(28, {args.hidden}) and a Linear head, {sum(p.numel() for p in model.parameters()):,} parameters "
        f"(an fp32 safetensors file of {original:,} bytes, the ratios' reference); the LSTM's two weights hold "
        f"{recurrent:,} of the {coded_numel:,} weights the methods code ({100 * recurrent / coded_numel:.1f} %). Biases are "
        "stored raw in every row.",
        f"Dense model: {100 * dense:.2f} % test accuracy after {args.epochs} epochs of training ({train_seconds:.0f} s on "
        f"{args.threads} threads).",
        "A sparsity budget counts the coded weights only, so a raw row prunes the head alone to that share; an L² ratio "
        "budget counts the whole file, which the raw LSTM weights alone exceed.",
        "To an allocation (LAMP's scores, FCPTS's thresholds) each gate's rows of the LSTM's weights (weight_ih_l0, "
        "weight_hh_l0) are a layer, four per weight (since commit 836568d). Recorded at 5777b87, before it, with each weight "
        "one layer, the coded rows read: LAMP at 50 / 80 % 84.51 / 56.52 %, FCPTS at 50 / 80 % 86.13 / 70.51 %.",
        f"The peer's file holds the quantized LSTM's packed parameters: {readable}.",
    ]
    write_result(
        args.name,
        {
            "description": "nn.LSTM's weights coded by each method, against stored raw (press(keep=['rnn']), the behaviour "
            f"before commit 3443180) and against torch.ao's dynamic int8, on an LSTM classifier for Fashion-MNIST trained "
            f"here (rows as steps, hidden size {args.hidden}). Default method settings; calibration 1,024 training images, "
            f"seed 0; accuracy from the written file. Threads: {args.threads}.",
            "columns": COLUMNS,
            "notes": notes,
            "rows": rows,
        },
    )
    regenerate_results_md()


if __name__ == "__main__":
    main()
