"""A small LLaMA through netpress: perplexity on held-out English text before and after each method.

No pretrained causal language model can be fetched here, so ``--train`` makes one, once, and the directory is
committed (``benchmarks/models/llama-fortunes``): a byte-level BPE tokenizer (1,024 tokens) and a LLaMA of
four layers (hidden 96, SwiGLU MLPs of 256, grouped-query attention with 2 key/value heads for 4 query heads,
RMSNorm, tied embeddings; 0.5 M parameters) trained on the fortunes training split (every usable Debian
fortune outside the 2,000 of the test split), seeded.

The measurement reads the directory as a user does (``netpress.load_model(DIR)``), writes a .press file per
setting, rebuilds the model from the file and scores the 2,000 test fortunes: perplexity, and the share of
tokens at which the file's most likely next token is the original's. FCPTS and L² calibrate on 1,024 training
fortunes; fold and channel-l1 change the MLPs only (the hidden stream passes RMSNorm weights, and attention
heads are not folded). Peers in the same run, on the same model and sentences: the fp32 and fp16 state dicts
and torch.ao's dynamic int8 (Linear layers), saved with ``torch.save``, raw and through zstd-19, each read back
(``weights_only=True``) before it is measured; and Wanda (the usual post-training sparsity baseline for language
models; reimplemented, see ``wanda``) at 50 and 70 % of the blocks' linear weights, calibrated on FCPTS's 1,024
fortunes, against FCPTS and per-layer magnitude pruning told to keep the embeddings as Wanda does.

Run: .venv/bin/python benchmarks/llama.py [--train]
"""

from __future__ import annotations

import argparse
import copy
import random
import time
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from tempfile import TemporaryDirectory

import torch
import zstandard
from common import dynamic_int8, regenerate_results_md, torch_loaded, torch_saved, write_result
from torch import nn

import netpress
from netpress import api
from netpress.budget import Budget
from netpress.data import calibration_subset
from netpress.data.text import Sentences, load_sentences
from netpress.graph.surgery import is_conv1d
from netpress.methods import FCPTS, L2, ChannelL1, Fold, MagnitudePruning, UniformQuantization
from netpress.methods.base import compressible_weights, is_compressible

MODEL_DIR = Path(__file__).parent / "models" / "llama-fortunes"
VOCAB = 1024
EPOCHS = 12
KEPT = "(embeddings kept)"
SETTINGS = [
    ("uniform 8-bit per-channel", [UniformQuantization(8, per_channel=True)], None),
    ("uniform 6-bit per-channel", [UniformQuantization(6, per_channel=True)], None),
    ("uniform 4-bit per-channel", [UniformQuantization(4, per_channel=True)], None),
    ("magnitude global 50 %", [MagnitudePruning("global")], Budget(sparsity=0.5)),
    ("FCPTS 50 %", [FCPTS()], Budget(sparsity=0.5)),
    ("magnitude global 70 %", [MagnitudePruning("global")], Budget(sparsity=0.7)),
    ("FCPTS 70 %", [FCPTS()], Budget(sparsity=0.7)),
    ("L² 8x", [L2()], Budget(ratio=8)),
    ("L² 12x", [L2()], Budget(ratio=12)),
    # Wanda's own setting: the blocks' linear layers pruned, the embeddings (and an output layer tied to them) dense;
    # netpress's rows name the embeddings in keep=, so that the target counts the same weights. Wanda's rows are
    # added by ``measure`` (a peer, reimplemented below).
    *[
        (f"{label} {level} % {KEPT}", [method], Budget(sparsity=level / 100))
        for level in (50, 70)
        for label, method in (("magnitude uniform", MagnitudePruning("uniform")), ("FCPTS", FCPTS()))
    ],
    *[
        setting
        for level in (10, 20)
        for setting in (
            (f"fold {level} % (Ward, adaptive)", [Fold(clustering="ward")], Budget(params=level / 100)),
            (
                f"fold {level} % (Ward, prune_fraction 0.5, uniform)",
                [Fold(clustering="ward", prune_fraction=0.5, allocation="uniform")],
                Budget(params=level / 100),
            ),
            (f"channel-l1 {level} %", [ChannelL1()], Budget(params=level / 100)),
        )
    ],
]
COLUMNS = {
    "file_bytes": "bytes of the .press file",
    "ratio": "fp32 bytes of the model / file_bytes",
    "params": "parameters of the model the file holds (fold and channel-l1 remove MLP neurons)",
    "ppl": "perplexity on the 2,000 test fortunes (the original's: ppl_before)",
    "top1_agreement": "share of the test tokens at which the file's most likely next token is the original's",
    "storage": "the file the row is measured from: netpress's .press, or a peer's torch.save file (read back with "
    "weights_only=True), raw or through zstd-19",
    "seconds": "seconds to compress and write the file",
}
WANDA_LEVELS = (0.5, 0.7)


def build_llama():
    """The LLaMA of this section, seeded (random weights)."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=96,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        tie_word_embeddings=True,
    )
    return transformers.LlamaForCausalLM(config)


def train_model(build, out_dir: Path, epochs: int) -> None:
    """Tokenizer and the model ``build()`` makes, trained seeded on the fortunes training split, into ``out_dir`` (a few
    minutes on 2 cores)."""
    import tokenizers
    import transformers

    texts = load_sentences("fortunes", "train")
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<s>", "</s>"], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(texts, trainer)
    bpe.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="</s>", model_max_length=256
    )
    model = build()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    order = random.Random(0)
    batches_per_epoch = (len(texts) + 31) // 32
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=epochs * batches_per_epoch)
    by_length = sorted(texts, key=len)
    chunks = [by_length[i : i + 32] for i in range(0, len(by_length), 32)]
    start = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order.shuffle(chunks)
        total = 0.0
        for chunk in chunks:
            batch = tokenizer(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt")
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            labels[:, 0] = -100
            loss = model(**batch, labels=labels).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        print(f"epoch {epoch + 1}: train loss {total / len(chunks):.3f} ({time.perf_counter() - start:.0f} s)", flush=True)
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def measure(name: str, build, model_dir: Path, description: str) -> None:
    """The section ``name``: ``--train`` makes the model (``train_model(build, ...)``) first; every setting and peer
    is measured on the directory, and the rows go to results/<name>.json."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--train", action="store_true", help=f"train the model into {model_dir} first")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="training epochs (with --train)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.train:
        train_model(build, model_dir, args.epochs)
    handle = api.load_model(model_dir)
    rows = []
    with TemporaryDirectory() as tmp:
        for label, methods, budget in SETTINGS:
            calib = 1024 if any(m.needs != "none" for m in methods) else None
            keep = embeddings(handle.module) if label.endswith(KEPT) else ()
            report = api.press(handle, methods, budget, out=Path(tmp) / "m.press", data="fortunes", calib=calib, keep=keep)
            rows.append(_row(label, report))
        rows += wanda_rows(handle, Path(tmp))
    rows += peer_rows(handle)
    before = rows[0]["ppl_before"]
    write_result(
        name,
        {
            "description": f"{description} ({model_dir.relative_to(Path(__file__).parent.parent)}, `--train`), compressed "
            f"by each setting; perplexity of the original on the 2,000 test fortunes: {before:.2f}. Every figure is "
            "measured on the model rebuilt from the written file.",
            "columns": COLUMNS,
            "notes": notes(rows),
            "rows": rows,
        },
    )
    regenerate_results_md()


def _row(label: str, report: dict) -> dict:
    """A .press row of the section from its report."""
    row = {
        "setting": label,
        "storage": ".press",
        "file_bytes": report["file_bytes"],
        "ratio": round(report["ratio"], 2),
        "params": report["params_after"],
        "sparsity": round(report["sparsity"], 4),
        "ppl_before": report["perplexity"]["before"],
        "ppl": report["perplexity"]["after"],
        "top1_agreement": report["perplexity"]["top1_agreement"],
        "seconds": report["seconds"],
    }
    print(row, flush=True)
    return row


def embeddings(model: nn.Module) -> list[str]:
    """The names of the model's embedding layers (an output layer tied to one is kept with it)."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Embedding)]


def wanda(handle: api.ModelHandle, sparsity: float, sentences: list[str]) -> nn.Module:
    """Wanda (Sun et al., ICLR 2024), reimplemented here (it ships as a research repository, not a package): every
    linear layer outside the embeddings keeps, in each output row, the weights of largest |W_ij| · ‖X_j‖₂, where X_j
    is its j-th input over the calibration tokens; no weight is updated. The sentences are run one at a time, so
    that no padding enters the norms."""
    model = copy.deepcopy(handle.module).eval()
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    layers = {
        name: m
        for name, m in model.named_modules()
        if is_compressible(m) and not isinstance(m, nn.Embedding) and id(m.weight) not in tied
    }
    squares = {name: torch.zeros((), dtype=torch.float64) for name in layers}

    def keep_norm(name: str, args: tuple) -> None:
        x = args[0].detach().double()
        squares[name] = squares[name] + (x * x).reshape(-1, x.shape[-1]).sum(0)

    hooks = [m.register_forward_hook(lambda _m, args, _out, name=name: keep_norm(name, args)) for name, m in layers.items()]
    with torch.no_grad():
        for sentence in sentences:
            model(**handle.encoder.tokenize([sentence]))
        for hook in hooks:
            hook.remove()
        for name, m in layers.items():
            rows = m.weight.t() if is_conv1d(m) else m.weight  # (out, in): a Conv1D stores (in, out)
            score = rows.abs() * squares[name].sqrt().float()[None, :]
            lowest = score.argsort(dim=1, stable=True)[:, : int(rows.shape[1] * sparsity)]
            rows.scatter_(1, lowest, 0.0)
    return model


def wanda_rows(handle: api.ModelHandle, tmp: Path) -> list[dict]:
    """Wanda at each level, calibrated on the 1,024 training fortunes FCPTS draws (seed 0), written through netpress
    as its own zeros (global magnitude at exactly the model's sparsity over the weights outside the embeddings prunes
    those zeros and no other weight), so that its file is coded as the other pruned files are."""
    train = Sentences(load_sentences("fortunes", "train"), "train")
    subset = calibration_subset(train, 1024, 0)
    sentences = [train[i] for i in subset.indices]
    keep = embeddings(handle.module)
    rows = []
    for level in WANDA_LEVELS:
        start = time.perf_counter()
        pruned = wanda(handle, level, sentences)
        seconds = time.perf_counter() - start
        kept_out = {id(p) for n in keep for p in pruned.get_submodule(n).parameters()}
        weights = [w for w in compressible_weights(pruned).values() if id(w) not in kept_out]
        zeros, total = sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)
        budget = Budget(sparsity=(zeros - 0.5) / total)  # ⌈target · N⌉ = zeros: the model's own
        report = api.press(
            replace(handle, module=pruned), MagnitudePruning("global"), budget, out=tmp / "w.press", data="fortunes", keep=keep
        )
        # press measured the pruned model against itself: the file is measured against the original instead.
        report["perplexity"] = netpress.perplexity(netpress.load(tmp / "w.press"), handle)
        report["seconds"] = round(seconds + report["seconds"], 3)  # Wanda's pass over the sentences, then the writing
        rows.append(_row(f"Wanda (peer) {round(100 * level)} % {KEPT}", report))
    return rows


def peer_rows(handle: api.ModelHandle) -> list[dict]:
    """The usual ways to ship a PyTorch model smaller, on the same model and sentences: its fp32 and fp16 state
    dicts and torch.ao's dynamic int8 (Linear layers), saved with ``torch.save``, raw and through zstd-19, each
    read back before it is measured."""
    model, reader = handle.module, handle.encoder
    sentences = load_sentences("fortunes")
    reference = reader.reference(model, sentences)
    original = api.fp32_bytes(model)
    fp16 = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    peers = [
        ("fp32 state dict", model.state_dict(), lambda: copy.deepcopy(model)),
        ("fp16 state dict", fp16, lambda: copy.deepcopy(model)),
        ("torch.ao dynamic int8 (Linear layers)", dynamic_int8(model).state_dict(), lambda: dynamic_int8(model)),
    ]
    rows = []
    for label, state, build in peers:
        data = torch_saved(state)
        packed = zstandard.ZstdCompressor(level=19).compress(data)
        unpacked = zstandard.ZstdDecompressor().decompress(packed)
        for storage, stored, read in (("torch.save", data, data), ("torch.save + zstd-19", packed, unpacked)):
            loaded = build()
            loaded.load_state_dict(_in_dtypes(torch_loaded(read), loaded.state_dict()))
            measured = reader.compare(loaded, sentences, reference)
            row = {
                "setting": label,
                "storage": storage,
                "file_bytes": len(stored),
                "ratio": round(original / len(stored), 2),
                "ppl_before": measured["before"],
                "ppl": measured["after"],
                "top1_agreement": measured["top1_agreement"],
            }
            print(row, flush=True)
            rows.append(row)
    return rows


def _in_dtypes(values: dict, target: dict) -> dict:
    """A state read back, its float tensors in the dtypes of the model that takes it (fp16 files load into fp32)."""
    fits = lambda k, v: torch.is_tensor(v) and v.is_floating_point() and torch.is_tensor(target.get(k))  # noqa: E731
    cast = OrderedDict((k, v.to(target[k].dtype) if fits(k, v) else v) for k, v in values.items())
    cast._metadata = getattr(values, "_metadata", None)  # layer versions: torch.ao's layers read their keys by them
    return cast


def notes(rows: list[dict]) -> list[str]:
    """What the rows show: each learned method against its data-free baseline at the same target."""
    by = {r["setting"]: r for r in rows if r["storage"] == ".press"}
    peers = [r for r in rows if r["storage"] != ".press"]
    smallest = min(peers, key=lambda r: r["file_bytes"])
    u8, l2 = by["uniform 8-bit per-channel"], by["L² 8x"]
    out = [
        f"The smallest peer file, {smallest['setting']} through {smallest['storage']}, is {smallest['file_bytes']:,} bytes "
        f"at perplexity {smallest['ppl']:.2f}; netpress's uniform 8-bit per-channel file is {u8['file_bytes']:,} bytes at "
        f"{u8['ppl']:.2f}, and L² at 8x {l2['file_bytes']:,} bytes at {l2['ppl']:.2f}. torch.ao's int8 also quantizes "
        "activations at run time (int8 kernels; which of its roundings costs the perplexity was not measured); a .press file "
        "loads as fp32."
    ]
    for level in (50, 70):
        fc, mag = by[f"FCPTS {level} %"], by[f"magnitude global {level} %"]
        out.append(
            f"At {level} % sparsity FCPTS keeps perplexity {fc['ppl']:.2f} against {mag['ppl']:.2f} for global magnitude "
            f"(top-1 agreement {100 * fc['top1_agreement']:.1f} % against {100 * mag['top1_agreement']:.1f} %)."
        )
    for level in (50, 70):
        fc, wa, mag = (by[f"{name} {level} % {KEPT}"] for name in ("FCPTS", "Wanda (peer)", "magnitude uniform"))
        verdict = "below" if fc["ppl"] < wa["ppl"] else "NOT below"
        out.append(
            f"The blocks' linear layers at {level} % (embeddings dense, Wanda's setting): FCPTS's perplexity {fc['ppl']:.2f} "
            f"is {verdict} Wanda's {wa['ppl']:.2f} (reimplemented; same 1,024 calibration fortunes; sparsity "
            f"{wa['sparsity']:.4f} against {fc['sparsity']:.4f}), per-layer magnitude {mag['ppl']:.2f}; top-1 agreement "
            f"{100 * fc['top1_agreement']:.1f} / {100 * wa['top1_agreement']:.1f} / {100 * mag['top1_agreement']:.1f} %; "
            f"seconds {fc['seconds']:.0f} / {wa['seconds']:.0f} / {mag['seconds']:.0f}."
        )
    for level in (10, 20):
        fold, l1 = by[f"fold {level} % (Ward, adaptive)"], by[f"channel-l1 {level} %"]
        uniform = by[f"fold {level} % (Ward, prune_fraction 0.5, uniform)"]
        verdict = "below" if fold["ppl"] < l1["ppl"] else "NOT below"
        out.append(
            f"Removing {level} % of the parameters from the MLPs, data-free: fold's perplexity {fold['ppl']:.2f} (Ward, the "
            f"default adaptive allocation) is {verdict} channel-l1's {l1['ppl']:.2f}; the same share in every layer "
            f"(uniform, with the best uniform setting of the MiniLM measurements, prune_fraction 0.5) gives {uniform['ppl']:.2f}."
        )
    return out


if __name__ == "__main__":
    measure(
        "llama",
        build_llama,
        MODEL_DIR,
        f"A 4-layer LLaMA (0.5 M parameters, {VOCAB}-token BPE) trained on the fortunes training split",
    )
