"""A small GPT-2 through netpress: the settings, peers and measurement of ``llama.py``, on GPT-2's architecture.

GPT-2's linear layers are transformers' ``Conv1D`` (weights stored (in, out)) and its query, key and value
projections one packed ``c_attn`` layer, where the LLaMA has ``nn.Linear`` layers and separate projections. ``--train``
makes the model once, with the LLaMA's tokenizer recipe and training schedule, and the directory is committed
(``benchmarks/models/gpt2-fortunes``): four layers, hidden 96, MLPs of 256, four heads, learned positions, tied
embeddings; 0.47 M parameters.

Run: .venv/bin/python benchmarks/gpt2.py [--train]
"""

from __future__ import annotations

from pathlib import Path

import torch
from llama import VOCAB, measure

MODEL_DIR = Path(__file__).parent / "models" / "gpt2-fortunes"


def build_gpt2():
    """The GPT-2 of this section, seeded (random weights)."""
    import transformers

    torch.manual_seed(0)
    sizes = dict(vocab_size=VOCAB, n_positions=256, n_embd=96, n_layer=4, n_head=4, n_inner=256)
    config = transformers.GPT2Config(**sizes, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return transformers.GPT2LMHeadModel(config)


if __name__ == "__main__":
    measure(
        "gpt2",
        build_gpt2,
        MODEL_DIR,
        f"A 4-layer GPT-2 (0.47 M parameters, {VOCAB}-token BPE, Conv1D layers) trained on the fortunes training split",
    )
