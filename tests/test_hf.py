"""Hugging Face model directories: compressed, written, rebuilt from the .press file alone, and measured as
sentence encoders against their original; bad input is refused with one line."""

import json
from pathlib import Path

import pytest
import torch

import netpress
from netpress import api, hf
from netpress.compressed import fp32_bytes
from netpress.data import calibration_subset
from netpress.data.text import FIDELITY_SENTENCES, FORTUNES_ENV, Sentences, fortune_sentences, load_sentences
from netpress.errors import BudgetError, DataError, ModelSourceError, UnsupportedModelError
from netpress.evaluate import fidelity
from netpress.methods.base import compressible_weights, target_zeros
from netpress.methods.teacher import EmbeddingTeacher
from tests.test_cli import assert_one_line_error, run

transformers = pytest.importorskip("transformers")

WORDS = "the a cat dog bird fish sat ran flew swam on under over mat tree sea big small red blue old new".split()


def _save_tiny_bert(folder, pooling: str | None = None):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    transformers.BertModel(config).save_pretrained(folder)
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(folder)
    if pooling is not None:  # a sentence-transformers directory declares its pooling
        (folder / "modules.json").write_text(json.dumps([{"idx": 1, "name": "1", "path": "1_Pooling", "type": "Pooling"}]))
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps({f"pooling_mode_{pooling}_token": True}))
    return folder


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return _save_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(autouse=True)
def fortunes(tmp_path_factory, monkeypatch):
    """A fortune file of distinct sentences of the tiny vocabulary, in place of Debian's package."""
    folder = tmp_path_factory.getbasetemp() / "fortunes"
    if not folder.is_dir():
        folder.mkdir()
        generator = torch.Generator().manual_seed(0)
        lines = set()
        while len(lines) < FIDELITY_SENTENCES + 100:
            lines.add(" ".join(WORDS[i] for i in torch.randint(len(WORDS), (8,), generator=generator).tolist()))
        (folder / "fortunes").write_text("\n%\n".join(sorted(lines)) + "\n%\n")
    monkeypatch.setenv(FORTUNES_ENV, str(folder))
    return folder


def test_directory_round_trip_rebuilds_from_the_file_alone(bert_dir, tmp_path):
    handle = api.load_model(bert_dir)
    assert isinstance(handle.module, transformers.BertModel) and handle.encoder is not None
    report = api.press(handle, netpress.UniformQuantization(8, per_channel=True), out=tmp_path / "b.press", data="fortunes")
    assert report["dataset"] == "fortunes" and report["fidelity"]["samples"] == FIDELITY_SENTENCES
    assert 0.99 < report["fidelity"]["cosine"] <= 1 and 0.5 < report["fidelity"]["top10"] <= 1
    model = netpress.load(tmp_path / "b.press")  # no directory, no arch: the file holds the config
    assert isinstance(model, transformers.BertModel)
    stored = netpress.codec.read(tmp_path / "b.press").state_dict()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())
    again = api.fidelity(model, handle, "fortunes")
    assert again.to_dict() == report["fidelity"]


def test_fidelity_of_the_model_itself_is_perfect_and_needs_neighbours(bert_dir):
    handle = api.load_model(bert_dir)
    sentences = load_sentences("fortunes")[:50]
    match = api.fidelity(handle, handle, sentences)
    assert (match.cosine, match.top10, match.samples) == (1.0, 1.0, 50)
    with pytest.raises(DataError, match="more than 10"):
        api.fidelity(handle, handle, sentences[:10])
    with pytest.raises(DataError, match="one row per sentence"):
        fidelity(torch.ones(12, 3), torch.ones(12, 4))


def test_embeddings_follow_the_declared_pooling(tmp_path):
    folder = _save_tiny_bert(tmp_path / "st", pooling="cls")
    handle = api.load_model(folder)
    assert handle.encoder.pooling == "cls"
    sentences = ["the cat sat on the mat", "a big red dog ran", "old fish swam under the sea"]
    batch = handle.encoder.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        cls = handle.module(**batch).last_hidden_state[:, 0]
    torch.testing.assert_close(handle.encoder.embed(handle.module, sentences), torch.nn.functional.normalize(cls, dim=1))
    mean = hf.TextEncoder(handle.encoder.tokenizer, "mean").embed(handle.module, sentences)  # longest-first batching
    mask = batch["attention_mask"].unsqueeze(-1).float()
    with torch.no_grad():
        hidden = handle.module(**batch).last_hidden_state
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=1)
    torch.testing.assert_close(mean, expected)


def test_cli_compress_fold_and_eval_against_the_directory(bert_dir, tmp_path):
    report = tmp_path / "r.json"
    options = "-m fold --params 0.1 --data fortunes".split()
    result = run("compress", bert_dir, *options, "-o", tmp_path / "f.press", "--report", report)
    assert result.exit_code == 0, result.output
    assert "cosine" in result.output
    folded = netpress.load(tmp_path / "f.press")
    assert sum(p.numel() for p in folded.parameters()) < sum(p.numel() for p in api.load_model(bert_dir).module.parameters())
    result = run("eval", tmp_path / "f.press", "--data", "fortunes", "--reference", bert_dir, "--json")
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output)
    assert {k: measured[k] for k in ("cosine", "top10", "samples")} == json.loads(report.read_text())["fidelity"]
    assert_one_line_error(run("eval", tmp_path / "f.press"), "pass --reference DIR")
    assert_one_line_error(run("eval", tmp_path / "f.press", "--reference", tmp_path / "f.press"), "uncompressed Hugging Face")
    assert_one_line_error(
        run("compress", tmp_path / "f.press", "-m", "uniform", "-o", tmp_path / "g.press", "--data", "fortunes"),
        "not its tokenizer",
        "--reference DIR",
    )


def test_bad_input_is_refused_before_any_work(bert_dir, tmp_path, monkeypatch):
    out = tmp_path / "x.press"
    assert_one_line_error(
        run("compress", bert_dir, "-m", "fold", "--repair", "data", "--params", "0.1", "-o", out, "--data", "fortunes"),
        "fold needs a classifier's labelled images",
        "takes fcpts and l2",
    )
    assert_one_line_error(run("compress", bert_dir, "-m", "fcpts", "--sparsity", "0.5", "-o", out), "needs calibration data")
    assert_one_line_error(run("compress", bert_dir, "-m", "uniform", "-o", out, "--data", "digits"), "measured on text")
    assert_one_line_error(run("compress", "zoo:lenet300", "-m", "uniform", "-o", out, "--data", "fortunes"), "fortunes is text")
    assert_one_line_error(
        run("compress", bert_dir, "-m", "uniform", "-o", out, "--arch", "tests.archs:tiny_mlp"), "drop arch (CLI: --arch)"
    )
    assert_one_line_error(run("compress", tmp_path, "-m", "uniform", "-o", out), "without config.json")
    assert not out.exists()
    custom = _save_tiny_bert(tmp_path / "custom")
    config = json.loads((custom / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_mine.MyModel"}}))
    with pytest.raises(ModelSourceError, match="does not run code"):
        api.load_model(custom)
    with pytest.raises(ModelSourceError, match="not a model class"):
        hf.build({"class": "os", "config": config})
    monkeypatch.setenv(FORTUNES_ENV, str(tmp_path / "none"))
    with pytest.raises(DataError, match="apt-get install fortunes"):
        fortune_sentences(10)


def test_weights_the_directory_lacks_are_refused(tmp_path):
    folder = _save_tiny_bert(tmp_path / "head")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    with pytest.raises(ModelSourceError, match="classifier.weight.*would start random"):
        api.load_model(folder)


@pytest.mark.parametrize("mode", ["cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken"])
def test_every_single_pooling_mode_matches_sentence_transformers(tmp_path, mode):
    models = pytest.importorskip("sentence_transformers.models")
    from sentence_transformers import SentenceTransformer

    base = _save_tiny_bert(tmp_path / "base")
    word = models.Transformer(str(base))
    st = SentenceTransformer(modules=[word, models.Pooling(32, mode), models.Normalize()])
    st.save(str(tmp_path / "st"))
    handle = api.load_model(tmp_path / "st")
    assert handle.encoder.pooling == mode and handle.encoder.problem is None
    sentences = ["the cat sat on the mat", "a big red dog ran over the old tree under the blue sea", "fish swam"]
    expected = st.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(handle.encoder.embed(handle.module, sentences), expected, atol=1e-5, rtol=1e-5)


def test_pipelines_netpress_does_not_compute_are_refused_when_measuring(tmp_path):
    folder = _save_tiny_bert(tmp_path / "dense", pooling="cls")
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps([*modules, {"idx": 2, "name": "2", "path": "2_Dense", "type": "Dense"}]))
    handle = api.load_model(folder)  # compressing it is fine; measuring it would not give its own embeddings
    with pytest.raises(UnsupportedModelError, match="Dense"):
        handle.encoder.embed(handle.module, ["the cat"])


def test_sentences_are_cut_to_the_model_positions(tmp_path):
    handle = api.load_model(_save_tiny_bert(tmp_path / "short"))
    assert handle.encoder.max_tokens == 64  # the tokenizer names no limit; the position table holds 64
    long = " ".join(WORDS * 10)
    assert handle.encoder.embed(handle.module, [long, "the cat"]).shape == (2, 32)


def test_a_damaged_or_foreign_record_is_refused(bert_dir, tmp_path):
    handle = api.load_model(bert_dir)
    record = handle.source["hf"]
    for damaged, message in (
        ({**record, "class": None}, "not a model class"),
        ({**record, "class": "GPT2Model"}, "cannot rebuild GPT2Model"),
        ({**record, "config": {**record["config"], "model_type": ["bert"]}}, "unknown"),
        ({**record, "config": {**record["config"], "hidden_size": 31}}, "cannot rebuild BertModel"),
    ):
        with pytest.raises(ModelSourceError, match=message):
            hf.build(damaged)
    kernel = hf.build({**record, "config": {**record["config"], "_attn_implementation": "kernels-community/flash-attn"}})
    assert kernel.config._attn_implementation == "sdpa"  # never a kernel a file names
    netpress.save(netpress.compress(handle, netpress.UniformQuantization(8)), tmp_path / "b.press")
    other = _save_tiny_bert(tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(DataError, match="num_hidden_layers 2 against 1"):
        api.fidelity(api.load_model(tmp_path / "b.press"), api.load_model(other), load_sentences("fortunes")[:20])


def test_a_sweep_embeds_the_original_once(bert_dir, tmp_path, monkeypatch):
    handle = api.load_model(bert_dir)
    calls = []
    embed = hf.TextEncoder.embed
    monkeypatch.setattr(
        hf.TextEncoder, "embed", lambda self, model, s: calls.append((model is handle.module, len(s))) or embed(self, model, s)
    )
    methods = [netpress.MagnitudePruning(), netpress.UniformQuantization(8)]
    budgets = [netpress.Budget(sparsity=0.3), netpress.Budget(sparsity=0.6)]
    reports = api.sweep(handle, methods, budgets, out_dir=tmp_path / "sweep", data="fortunes")
    n = FIDELITY_SENTENCES
    assert calls == [(True, 1), (True, n), (False, n), (False, n)]  # a probe, the original once, each written file
    assert reports[0]["fidelity"]["cosine"] > reports[1]["fidelity"]["cosine"]


def test_an_encoder_sweep_shared_by_workers_writes_what_one_process_writes(bert_dir, tmp_path):
    handle = api.load_model(bert_dir)  # the model and its tokenizer go to the workers
    methods = [netpress.MagnitudePruning(), netpress.UniformQuantization(8)]
    budgets = [netpress.Budget(sparsity=0.3), netpress.Budget(sparsity=0.6)]
    alone, shared = (
        api.sweep(handle, methods, budgets, out_dir=tmp_path / str(workers), data="fortunes", workers=workers)
        for workers in (1, 2)
    )
    assert [r["fidelity"] for r in shared] == [r["fidelity"] for r in alone]
    assert all(Path(a["file"]).read_bytes() == Path(b["file"]).read_bytes() for a, b in zip(alone, shared))


def test_cli_sweep_plots_cosine_against_bytes(bert_dir, tmp_path):
    plot, report = tmp_path / "curve.png", tmp_path / "sweep.json"
    options = "-m magnitude --sparsities 0.3,0.6 --bits 8 --data fortunes".split()
    result = run("sweep", bert_dir, *options, "--out-dir", tmp_path / "s", "--plot", plot, "--report", report)
    assert result.exit_code == 0, result.output
    assert "cosine" in result.output and plot.stat().st_size > 0
    assert [r["budget"]["sparsity"] for r in json.loads(report.read_text())] == [0.3, 0.6]
    no_data = run("sweep", bert_dir, *options[:-2], "--out-dir", tmp_path / "t", "--plot", plot)
    assert_one_line_error(no_data, "--data (fortunes or a .txt file for a Hugging Face model)")


@pytest.mark.parametrize("mode", sorted(hf.POOLINGS))
def test_pooling_ignores_which_side_the_padding_is_on(mode):
    real = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0))
    pad = torch.full((1, 2, 4), 7.0)  # padding positions carry junk that must not count
    right, left = torch.cat([real, pad], dim=1), torch.cat([pad, real], dim=1)
    mask_right, mask_left = torch.tensor([[1, 1, 1, 0, 0]]), torch.tensor([[0, 0, 1, 1, 1]])
    pool = hf.POOLINGS[mode]
    torch.testing.assert_close(pool(right, mask_right), pool(left, mask_left))
    torch.testing.assert_close(pool(right, mask_right), pool(real, torch.ones(1, 3, dtype=torch.long)))


def test_a_missing_pooler_is_allowed_and_a_misfit_weight_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _save_tiny_bert(tmp_path / "nopooler")
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if not k.startswith("pooler.")}, str(folder / "model.safetensors"))
    assert isinstance(api.load_model(folder).module, transformers.BertModel)
    weights["encoder.layer.0.intermediate.dense.bias"] = torch.zeros(63)
    save_file(weights, str(folder / "model.safetensors"))
    with pytest.raises(ModelSourceError, match="right shape.*encoder.layer.0.intermediate.dense.bias"):
        api.load_model(folder)


def test_errors_come_before_the_original_is_measured_and_leave_no_folder(bert_dir, tmp_path, monkeypatch):
    handle = api.load_model(bert_dir)
    calls = []
    monkeypatch.setattr(hf.TextEncoder, "embed", lambda self, model, s: calls.append(len(s)) or torch.eye(len(s), 4))
    with pytest.raises(BudgetError, match="raw dtype"):
        api.press(handle, netpress.UniformQuantization(8), out=tmp_path / "a.press", data="fortunes", raw_dtype="fp8")
    with pytest.raises(UnsupportedModelError):  # fold's BatchNorm repair on a model without BatchNorm
        api.press(handle, netpress.Fold(repair="ar"), netpress.Budget(params=0.1), out=tmp_path / "b.press", data="fortunes")
    assert calls == [1]  # only the one-sentence probe of the second call ran
    budgets = [netpress.Budget(sparsity=0.5)]
    with pytest.raises(DataError, match="measured on text"):
        api.sweep(
            handle, [netpress.MagnitudePruning(), netpress.UniformQuantization(8)], budgets, out_dir=tmp_path / "s", data="digits"
        )
    assert not (tmp_path / "s").exists() and not any(tmp_path.glob("*.press"))


def test_text_splits_are_disjoint_and_the_test_split_is_never_calibrated_on(bert_dir):
    test, train = load_sentences("fortunes"), load_sentences("fortunes", "train")
    assert len(test) == FIDELITY_SENTENCES and len(train) == 100 and not set(test) & set(train)
    with pytest.raises(DataError, match="splits 'train' and 'test'"):
        load_sentences("fortunes", "validation")
    handle = api.load_model(bert_dir)
    with pytest.raises(DataError, match="test split"):
        calibration_subset(Sentences(test, "test", handle.encoder), 10)
    budget = netpress.Budget(sparsity=0.5)
    with pytest.raises(DataError, match="need the text reader"):
        api.compress(handle, netpress.FCPTS(iterations=1), budget, calibration_subset(Sentences(train, "train"), 10))
    with pytest.raises(DataError, match="takes fcpts and l2"):
        api.compress(
            handle, netpress.Fold(repair="data"), netpress.Budget(params=0.1), calibration_subset(Sentences(train, "train"), 10)
        )


def test_fcpts_calibrates_an_encoder_on_sentences_and_meets_the_target_exactly(bert_dir, tmp_path):
    handle = api.load_model(bert_dir)
    fcpts = netpress.FCPTS(iterations=5, batch_size=8)
    report = api.press(handle, fcpts, netpress.Budget(sparsity=0.6), out=tmp_path / "0.press", data="fortunes", calib=64)
    options = "-m fcpts --sparsity 0.6 --iterations 5 --batch-size 8 --data fortunes --calib 64".split()
    result = run("compress", bert_dir, *options, "-o", tmp_path / "1.press")
    assert result.exit_code == 0, result.output
    assert "cosine" in result.output
    train = load_sentences("fortunes", "train")
    assert report["calibration"]["n"] == 64 and max(report["calibration"]["indices"]) < len(train)
    assert not {train[i] for i in report["calibration"]["indices"]} & set(load_sentences("fortunes"))
    weights = compressible_weights(netpress.load(tmp_path / "0.press"))
    total = sum(w.numel() for w in weights.values())
    assert sum(int((w == 0).sum()) for w in weights.values()) == target_zeros(0.6, total)
    assert 0 < report["fidelity"]["cosine"] <= 1
    assert (tmp_path / "0.press").read_bytes() == (tmp_path / "1.press").read_bytes()  # reproducible from the seed


def test_l2_calibrates_an_encoder_on_sentences_and_fits_the_ratio(bert_dir, tmp_path):
    handle = api.load_model(bert_dir)
    l2 = netpress.L2(rounds=1, transform_steps=4, reconstruction_steps=6, batch_size=8)
    report = api.press(handle, l2, netpress.Budget(ratio=6), out=tmp_path / "0.press", data="fortunes", calib=64)
    assert report["file_bytes"] == (tmp_path / "0.press").stat().st_size <= fp32_bytes(handle.module) / 6
    assert report["calibration"]["n"] == 64 and 0.5 < report["fidelity"]["cosine"] <= 1
    model = netpress.load(tmp_path / "0.press")
    assert isinstance(model, transformers.BertModel)
    assert api.fidelity(model, handle, "fortunes").to_dict() == report["fidelity"]
    options = "-m l2 --ratio 6 --rounds 1 --transform-steps 4 --reconstruction-steps 6 --batch-size 8 --data fortunes".split()
    result = run("compress", bert_dir, *options, "--calib", "64", "-o", tmp_path / "1.press")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "0.press").read_bytes() == (tmp_path / "1.press").read_bytes()  # reproducible from the seed


def test_the_embedding_teacher_scores_the_dense_model_at_zero(bert_dir):
    handle = api.load_model(bert_dir)
    sentences = load_sentences("fortunes", "train")[:20]
    teacher = EmbeddingTeacher(handle.module, handle.encoder, sentences)
    assert abs(teacher.score(handle.module)) < 1e-6
    idx = torch.arange(4)
    params = dict(handle.module.named_parameters())
    outputs = teacher.outputs(handle.module, idx, params)
    assert outputs.requires_grad and torch.allclose(outputs, teacher.embeddings[:4], atol=1e-5)
    weight = params["encoder.layer.0.output.dense.weight"]
    (flat,) = torch.autograd.grad(teacher.loss(outputs, idx), weight, retain_graph=True)
    (fisher,) = torch.autograd.grad(teacher.sensitivity_loss(outputs, idx), weight)
    assert flat.abs().max() < 1e-4 < fisher.abs().max()  # distillation is flat at the dense model, retrieval is not
