"""Does the calibration text matter? FCPTS and L² on a text model, calibrated on text of its own domain or on
unrelated text, measured on the same held-out sentences.

Two models read as a user does, from their Hugging Face directories: the 4-layer LLaMA trained on the fortunes
training split (``benchmarks/models/llama-fortunes``, see ``llama.py``) and the pretrained all-MiniLM-L6-v2. Each
setting is calibrated twice, on 1,024 texts drawn with seed 0 from

* ``fortunes``: the fortunes training split (the LLaMA's own training text; for MiniLM, the text it is measured on);
* ``licences``: the lines of Debian's package copyright files (``/usr/share/doc/*/copyright``: licence terms,
  names, file lists), written to a text file and read as a user's ``--data my.txt`` (its training split),

and measured on the 2,000 test fortunes (``data=(train_texts, test_texts)``): the LLaMA by perplexity, MiniLM by
the cosine of its sentence embeddings to the original's. The licence lines depend on the packages installed, so
the description records how many there were and their SHA-256.

    .venv/bin/python benchmarks/calibration_text.py [--models llama,minilm] [--threads 2]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import minilm_directory, regenerate_results_md, write_result  # noqa: E402
from llama import MODEL_DIR  # noqa: E402

from netpress import api  # noqa: E402
from netpress.budget import Budget  # noqa: E402
from netpress.data.text import load_sentences  # noqa: E402
from netpress.methods import FCPTS, L2  # noqa: E402

SETTINGS = {
    "llama": [("FCPTS 50 %", FCPTS(), Budget(sparsity=0.5)), ("L² 8x", L2(), Budget(ratio=8))],
    "minilm": [("FCPTS 50 %", FCPTS(iterations=200, batch_size=16), Budget(sparsity=0.5))],
}
COLUMNS = {
    "calibrated_on": "the 1,024 calibration texts: the fortunes training split, or lines of Debian's copyright files",
    "measure": "LLaMA: perplexity on the 2,000 test fortunes (the original's: before); MiniLM: mean cosine of the file's "
    "sentence embeddings to the original's on them",
    "agreement": "LLaMA: share of test tokens whose most likely next token is the original's; MiniLM: overlap of each "
    "test fortune's 10 nearest neighbours",
    "seconds": "to compress and write the file",
}


def licence_lines() -> list[str]:
    """Every distinct line of 20–400 characters in the installed packages' copyright files, whitespace-normalised."""
    lines = set()
    for path in sorted(Path("/usr/share/doc").glob("*/copyright")):
        for line in path.read_text(errors="ignore").splitlines():
            text = " ".join(line.split())
            if 20 <= len(text) <= 400:
                lines.add(text)
    return sorted(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama,minilm")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test = load_sentences("fortunes")
    licences = licence_lines()
    digest = hashlib.sha256("\n".join(licences).encode()).hexdigest()
    rows = []
    with TemporaryDirectory() as tmp:
        licence_file = Path(tmp) / "licences.txt"
        licence_file.write_text("\n".join(licences) + "\n")
        sources = {"fortunes": load_sentences("fortunes", "train"), "licences": load_sentences(str(licence_file), "train")}
        assert not set(sources["licences"]) & set(test), "a licence line is a test fortune"
        for model in args.models.split(","):
            handle = api.load_model(MODEL_DIR if model == "llama" else minilm_directory())
            for label, method, budget in SETTINGS[model]:
                for source, train in sources.items():
                    report = api.press(handle, method, budget, out=Path(tmp) / "m.press", data=(train, test), calib=1024)
                    figures = report.get("perplexity") or report["fidelity"]
                    row = {
                        "model": model,
                        "setting": label,
                        "calibrated_on": source,
                        "file_bytes": report["file_bytes"],
                        "ratio": round(report["ratio"], 2),
                        "before": figures["before"] if "before" in figures else 1.0,
                        "measure": figures["after"] if "after" in figures else figures["cosine"],
                        "agreement": figures.get("top1_agreement", figures.get("top10")),
                        "seconds": report["seconds"],
                    }
                    print(row, flush=True)
                    rows.append(row)
                    write_result(  # after every row: a run cut short keeps what it measured
                        "calibration-text",
                        {
                            "description": "FCPTS and L² calibrated on the model's own kind of text (fortunes) or on "
                            f"unrelated text (the {len(licences):,} distinct lines of this machine's Debian copyright "
                            f"files, SHA-256 {digest[:16]}…, read from a .txt file as `--data my.txt` reads it), each "
                            "measured on the 2,000 test fortunes from the written file.",
                            "columns": COLUMNS,
                            "notes": notes(rows),
                            "rows": rows,
                        },
                    )
    regenerate_results_md()


def notes(rows: list[dict]) -> list[str]:
    """One line per setting: the measure with each calibration text."""
    said = []
    for model, label in dict.fromkeys((r["model"], r["setting"]) for r in rows):
        by = {r["calibrated_on"]: r for r in rows if (r["model"], r["setting"]) == (model, label)}
        if len(by) < 2:
            continue
        own, other = by["fortunes"], by["licences"]
        kind = "perplexity" if model == "llama" else "cosine"
        said.append(
            f"{model} {label}: {kind} {own['measure']:.4g} calibrated on fortunes, {other['measure']:.4g} on the licence "
            f"lines (the original: {own['before']:.4g}); files {own['file_bytes']:,} and {other['file_bytes']:,} bytes"
        )
    return said


if __name__ == "__main__":
    main()
