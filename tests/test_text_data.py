"""Your own text for a Hugging Face model: a .txt file (one text per line) or a (train, test) pair of lists, split
so that no calibration text is a test text, and refused with one line when it cannot be used."""

import json
import random

import pytest

import netpress
from netpress import api
from netpress.budget import Budget
from netpress.data.text import FIDELITY_SENTENCES, load_sentences
from netpress.errors import DataError
from netpress.methods import FCPTS, MagnitudePruning, UniformQuantization
from tests.test_causal_lm import _save_tiny_llama
from tests.test_cli import assert_one_line_error, run
from tests.test_hf import WORDS, _save_tiny_bert

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


def _texts(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct sentences of the tiny models' vocabulary."""
    rng, texts = random.Random(seed), set()
    while len(texts) < n:
        texts.add(" ".join(rng.choice(WORDS) for _ in range(7)))
    return sorted(texts)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A text file of 500 distinct lines, with a repeated line, blank lines and stray whitespace."""
    path = tmp_path_factory.mktemp("text") / "mine.txt"
    texts = _texts(500)
    path.write_text("\n".join(["", texts[0], *("  " + t.replace(" ", "   ") + " " for t in texts), "", ""]) + "\n")
    return path


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return _save_tiny_llama(tmp_path_factory.mktemp("llama"))


def test_a_text_file_splits_into_distinct_lines_a_fifth_held_out_whatever_their_order(corpus, tmp_path):
    test, train = load_sentences(str(corpus)), load_sentences(str(corpus), "train")
    assert len(test) == 100 and len(train) == 400 and not set(test) & set(train)
    assert set(test) | set(train) == set(_texts(500))  # whitespace normalised, blank and repeated lines dropped
    shuffled = tmp_path / "shuffled.txt"
    lines = _texts(500)
    random.Random(1).shuffle(lines)
    shuffled.write_text("\ufeff" + "\r\n".join(lines))  # a byte-order mark and Windows line ends
    assert load_sentences(str(shuffled)) == test and load_sentences(str(shuffled), "train") == train
    large = tmp_path / "large.txt"
    large.write_text("\n".join(_texts(12_000)))
    assert len(load_sentences(str(large))) == FIDELITY_SENTENCES
    small = tmp_path / "small.txt"
    small.write_text("one text\nanother text\n")
    assert len(load_sentences(str(small))) == 1 and len(load_sentences(str(small), "train")) == 1


def test_a_text_file_that_cannot_be_used_is_refused_with_what_to_do(tmp_path):
    with pytest.raises(DataError, match="no text file at"):
        load_sentences(str(tmp_path / "missing.txt"))
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9 au lait\nune cr\xeape\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text .* save it as UTF-8"):
        load_sentences(str(latin))
    one = tmp_path / "one.txt"
    one.write_text("the same line\nthe same line\n\n")
    with pytest.raises(DataError, match="1 distinct non-empty line; netpress needs at least 2"):
        load_sentences(str(one))
    with pytest.raises(DataError, match="available: fortunes or your own .txt file"):
        load_sentences("wikitext")


def test_press_calibrates_on_the_training_lines_and_measures_on_the_held_out_ones(llama_dir, corpus, tmp_path):
    handle = api.load_model(llama_dir)
    report = api.press(
        handle, FCPTS(iterations=3, batch_size=16), Budget(sparsity=0.5), out=tmp_path / "f.press", data=corpus, calib=64
    )
    assert report["dataset"] == str(corpus) and report["perplexity"]["samples"] == 100
    assert len(report["calibration"]["indices"]) == 64 and max(report["calibration"]["indices"]) < 400
    assert netpress.perplexity(api.load_model(tmp_path / "f.press"), handle, str(corpus)) == report["perplexity"]
    with pytest.raises(DataError, match="training split has only 400"):
        api.press(handle, FCPTS(iterations=1), Budget(sparsity=0.5), out=tmp_path / "g.press", data=corpus, calib=1000)
    assert not (tmp_path / "g.press").exists()


def test_sentences_longer_than_the_model_are_counted_in_the_report(llama_dir, tmp_path):
    long = tmp_path / "long.txt"
    texts = _texts(40)
    long.write_text("\n".join([*texts, *(" ".join([t] * 12) for t in texts[:10])]))  # 84 words: over 64 positions
    handle = api.load_model(llama_dir)
    test = load_sentences(str(long))
    report = api.press(handle, UniformQuantization(8), out=tmp_path / "u.press", data=long)
    assert report["sentences_cut"] == sum(len(t.split()) + 1 > 64 for t in test) > 0
    result = run("compress", llama_dir, "-m", "uniform", "--data", long, "-o", tmp_path / "c.press")
    assert result.exit_code == 0 and "longer than the model's positions" in result.output


def test_the_cli_takes_a_text_file_for_compress_and_eval(llama_dir, corpus, tmp_path):
    out, report = tmp_path / "m.press", tmp_path / "m.json"
    result = run("compress", llama_dir, "-m", "magnitude", "--sparsity", "0.5", "--data", corpus, "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    measured = json.loads(report.read_text())["perplexity"]
    result = run("eval", out, "--data", corpus, "--reference", llama_dir, "--json")
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in json.loads(result.output).items() if k in measured} == measured
    result = run("eval", llama_dir, "--data", corpus)
    assert result.exit_code == 0 and f"on 100 test sentences of {corpus}" in result.output.replace("\n", " ")
    assert_one_line_error(run("eval", llama_dir, "--data", tmp_path / "none.txt"), "no text file at")
    assert_one_line_error(
        run("compress", "zoo:lenet300", "-m", "uniform", "--bits", "8", "--data", corpus, "-o", tmp_path / "z.press"),
        "is text",
    )


def test_your_own_train_and_test_texts_are_used_as_given(tmp_path):
    handle = api.load_model(_save_tiny_bert(tmp_path / "bert"))
    texts = _texts(80)
    train, test = texts[:60], texts[60:]
    report = api.press(handle, UniformQuantization(8), out=tmp_path / "u.press", data=(train, test))
    assert report["dataset"] == "your (train, test) texts" and report["fidelity"]["samples"] == 20
    again = api.press(handle, UniformQuantization(8), out=tmp_path / "u.press", data=[train, test])  # a list is a pair too
    assert again["fidelity"] == report["fidelity"]
    report = api.press(
        handle, FCPTS(iterations=2, batch_size=8), Budget(sparsity=0.5), out=tmp_path / "f.press", data=(train, test), calib=16
    )
    assert report["calibration"]["n"] == 16 and max(report["calibration"]["indices"]) < 60
    refused = {
        "also among the test texts": (train, [*test, train[3]]),
        "test texts are an empty list": (train, []),
        "item 1 is 3, not a non-empty string": (train, [test[0], 3]),
        "item 0 is '  ', not a non-empty string": (["  "], test),
        "pair of lists of texts": ("a text", test),
    }
    for message, data in refused.items():
        with pytest.raises(DataError, match=message):
            api.press(handle, MagnitudePruning(), Budget(sparsity=0.5), out=tmp_path / "x.press", data=data)
    assert not (tmp_path / "x.press").exists()


def test_calibration_sentences_with_no_token_to_predict_are_refused(tmp_path):
    import tokenizers
    import transformers

    folder = _save_tiny_llama(tmp_path / "llama")
    vocab = ["<unk>", "<s>", "</s>", *WORDS]
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()  # no <s>: a one-word text predicts nothing
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>", unk_token="<unk>").save_pretrained(folder)
    handle = api.load_model(folder)
    words, texts = WORDS[:20], _texts(40)
    with pytest.raises(DataError, match="calibration sentences hold no token to predict"):
        api.press(handle, FCPTS(iterations=1), Budget(sparsity=0.5), out=tmp_path / "f.press", data=(words, texts), calib=16)
    assert not (tmp_path / "f.press").exists()
