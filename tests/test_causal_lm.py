"""Causal language models from a Hugging Face directory (LLaMA): measured by perplexity and next-token agreement
with the original, calibrated on sentences by FCPTS and L², folded through their gated MLPs."""

import json
import math

import pytest
import torch

import netpress
from netpress import api, hf
from netpress.budget import Budget
from netpress.data import calibration_subset
from netpress.data.text import Sentences, load_sentences
from netpress.errors import DataError
from netpress.methods import FCPTS, L2, ChannelL1, Fold, MagnitudePruning, UniformQuantization
from netpress.methods.teacher import TokenTeacher, teacher_for
from tests.test_cli import assert_one_line_error, run
from tests.test_hf import WORDS, fortunes  # noqa: F401  (the fortunes fixture: sentences of the tiny vocabulary)

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def _save_word_tokenizer(folder) -> int:
    """A word-level tokenizer of the tiny vocabulary, beginning each sentence with <s>; returns its size."""
    vocab = ["<unk>", "<s>", "</s>", *WORDS]
    model = tokenizers.models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>")
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(folder)
    return len(vocab)


def _save_tiny_llama(folder, tied: bool = False):
    vocab = _save_word_tokenizer(folder)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=tied,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return _save_tiny_llama(tmp_path_factory.mktemp("llama"))


def test_a_causal_lm_is_read_by_its_next_tokens_and_its_perplexity_is_the_mean_token_loss(llama_dir):
    handle = api.load_model(llama_dir)
    assert isinstance(handle.encoder, hf.TokenPredictor) and handle.encoder.tokenizer.pad_token == "</s>"
    sentences = load_sentences("fortunes")[:20]
    scores = handle.encoder.score(handle.module, sentences)
    losses, tokens = [], 0
    with torch.no_grad():
        for sentence in sentences:  # one at a time: no padding at all
            ids = handle.encoder.tokenizer(sentence, return_tensors="pt")["input_ids"]
            logits = handle.module(input_ids=ids).logits[0, :-1]
            losses.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            tokens += ids.shape[1] - 1
    assert scores.tokens == tokens == 20 * 8  # eight words after <s> in every sentence
    assert scores.perplexity == pytest.approx(math.exp(float(sum(losses)) / tokens), rel=1e-5)


def test_press_reports_perplexity_before_and_after_from_the_file(llama_dir, tmp_path):
    handle = api.load_model(llama_dir)
    out = tmp_path / "m.press"
    report = api.press(handle, MagnitudePruning(), Budget(sparsity=0.5), out=out, data="fortunes")
    measured = report["perplexity"]
    assert report["dataset"] == "fortunes" and measured["samples"] == 2000 and 0 < measured["top1_agreement"] < 1
    sentences = load_sentences("fortunes")
    original = handle.encoder.score(handle.module, sentences)
    assert measured["before"] == round(original.perplexity, 4)
    again = netpress.perplexity(api.load_model(out), handle)
    assert again == measured
    with pytest.raises(DataError, match="measured by its perplexity: use netpress.perplexity"):
        netpress.fidelity(api.load_model(out), handle)


@pytest.mark.parametrize(
    "method",
    [FCPTS(iterations=5, batch_size=16), L2(rounds=1, transform_steps=3, reconstruction_steps=3, batch_size=16)],
    ids=["fcpts", "l2"],
)
def test_fcpts_and_l2_calibrate_a_causal_lm_on_training_sentences(llama_dir, tmp_path, method):
    handle = api.load_model(llama_dir)
    budget = Budget(sparsity=0.6) if method.name == "fcpts" else Budget(ratio=3)
    report = api.press(handle, method, budget, out=tmp_path / "c.press", data="fortunes", calib=64)
    assert report["perplexity"]["after"] > 0 and len(report["calibration"]["indices"]) == 64
    if method.name == "fcpts":
        assert report["sparsity"] == pytest.approx(0.6, abs=1e-3)


def test_the_token_teacher_is_at_zero_loss_on_the_dense_model_and_trains_through_the_logits(llama_dir):
    handle = api.load_model(llama_dir)
    data = calibration_subset(Sentences(load_sentences("fortunes", "train"), "train", handle.encoder), 32, seed=0)
    teacher = teacher_for(handle.module, data, temperature=4.0)
    assert isinstance(teacher, TokenTeacher)
    idx = teacher.batch(8, torch.Generator().manual_seed(0))
    outputs = teacher.outputs(handle.module, idx)
    assert outputs.shape == (8 * 8, handle.module.config.vocab_size)
    assert float(teacher.loss(outputs, idx).detach()) == pytest.approx(0.0, abs=1e-6)
    assert teacher.score(handle.module) == pytest.approx(0.0, abs=1e-6)
    teacher.sensitivity_loss(outputs, idx).backward()
    assert handle.module.lm_head.weight.grad is not None


def test_fold_shrinks_the_gated_mlps_and_the_file_is_measured_against_the_directory(llama_dir, tmp_path):
    report_path = tmp_path / "r.json"
    result = run(
        "compress",
        llama_dir,
        "-m",
        "fold",
        "--params",
        "0.1",
        "--data",
        "fortunes",
        "-o",
        tmp_path / "f.press",
        "--report",
        report_path,
    )
    assert result.exit_code == 0, result.output
    assert "ppl before" in result.output and "ppl after" in result.output
    result = run("eval", tmp_path / "f.press", "--data", "fortunes", "--reference", llama_dir, "--json")
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output)
    assert {k: measured[k] for k in ("before", "after", "top1_agreement", "tokens", "samples")} == json.loads(
        report_path.read_text()
    )["perplexity"]
    result = run("eval", tmp_path / "f.press", "--data", "fortunes", "--reference", llama_dir)
    assert "perplexity" in result.output and "top next token the reference's" in result.output
    alone = json.loads(run("eval", llama_dir, "--data", "fortunes", "--json").output)  # the directory on its own
    assert alone["perplexity"] == measured["before"] and alone["tokens"] == measured["tokens"]
    assert_one_line_error(run("eval", tmp_path / "f.press", "--data", "fortunes"), "pass --reference DIR")
    folded = netpress.load(tmp_path / "f.press")
    assert folded.model.layers[0].mlp.gate_proj.out_features < 64


@pytest.mark.parametrize(
    "method, budget",
    [
        (MagnitudePruning(), Budget(sparsity=0.5)),
        (FCPTS(iterations=5, batch_size=16), Budget(sparsity=0.5)),
        (L2(rounds=1, transform_steps=3, reconstruction_steps=3, batch_size=16), Budget(ratio=4)),
    ],
    ids=["magnitude", "fcpts", "l2"],
)
def test_a_tied_embedding_is_coded_once_and_the_file_is_the_methods_model(tmp_path, method, budget):
    folder = _save_tiny_llama(tmp_path / "tied", tied=True)
    handle = api.load_model(folder)
    assert handle.module.lm_head.weight is handle.module.model.embed_tokens.weight
    data = calibration_subset(Sentences(load_sentences("fortunes", "train"), "train", handle.encoder), 32, seed=0)
    result = method.apply(handle.module, data if method.needs != "none" else None, budget)
    compressed = netpress.compress(handle, method, budget, data=data if method.needs != "none" else None)
    assert "lm_head.weight" not in compressed.tensors
    assert not isinstance(compressed.tensors["model.embed_tokens.weight"], torch.Tensor)  # coded
    netpress.save(compressed, tmp_path / "t.press")
    loaded = netpress.load(tmp_path / "t.press")
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    # The method trained one tensor for both uses, and the file gives its codes back for both.
    assert result.model.lm_head.weight is result.model.model.embed_tokens.weight
    assert torch.equal(loaded.lm_head.weight, compressed.state_dict()["model.embed_tokens.weight"])
    if method.name != "l2":  # L²'s ratio target sizes the file press writes, so apply alone codes another way
        assert torch.equal(loaded.lm_head.weight, result.model.lm_head.weight)


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt2")
    vocab = _save_word_tokenizer(folder)
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def test_gpt2_is_a_causal_lm_whose_conv1d_layers_are_coded(gpt2_dir, tmp_path):
    handle = api.load_model(gpt2_dir)
    assert isinstance(handle.encoder, hf.TokenPredictor)
    coded = netpress.methods.compressible_weights(handle.module)
    assert "transformer.h.0.attn.c_attn.weight" in coded and "transformer.h.1.mlp.c_proj.weight" in coded
    settings = ((UniformQuantization(8, per_channel=True), None), (FCPTS(iterations=3, batch_size=16), Budget(sparsity=0.5)))
    for method, budget in settings:
        report = api.press(handle, method, budget, out=tmp_path / "g.press", data="fortunes", calib=64 if budget else None)
        assert report["uncompressed_layers"] == {} and report["perplexity"]["after"] > 0
        assert netpress.perplexity(api.load_model(tmp_path / "g.press"), handle) == report["perplexity"]
    assert report["sparsity"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("method", [Fold(), ChannelL1()])
def test_gpt2s_conv1d_mlps_are_folded_and_stay_conv1d(gpt2_dir, tmp_path, method):
    """Structural methods change GPT-2's Conv1D layers as the Linear layers they compute (their weights stored
    (in, out)); the model keeps its own layers, so the file loads back into GPT-2's class."""
    handle = api.load_model(gpt2_dir)
    report = api.press(handle, method, Budget(params=0.2), out=tmp_path / "f.press", data="fortunes")
    assert report["params_after"] <= 0.8 * report["params_before"]
    loaded = netpress.load(tmp_path / "f.press")
    for block in loaded.transformer.h:
        c_fc, c_proj = block.mlp.c_fc, block.mlp.c_proj
        assert type(c_fc).__name__ == "Conv1D" and c_fc.weight.shape == (32, c_fc.nf) and c_fc.nf < 128
        assert c_proj.weight.shape == (c_fc.nf, 32) and c_proj.nx == c_fc.nf
        assert block.attn.c_attn.weight.shape == (32, 96)  # attention heads are not folded
    assert netpress.perplexity(loaded, handle) == report["perplexity"]
    rows = report["layers"][method.name]
    assert [r["reason"] for r in rows if r["group"].endswith("attn")] == ["attention heads are not folded"] * 2
