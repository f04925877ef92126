"""The command line: results on good input, one line and exit code 2 on bad input."""

import json
import math
import os
import pickle
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file, save_model
from typer.testing import CliRunner

import netpress
from netpress import api, cli, zoo
from netpress.cli import app
from netpress.data import load_dataset
from tests.archs import custom_only, mlp_with_custom_layer, tied, tiny_cnn, tiny_mlp
from tests.conftest import needs_fashion_mnist

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    model = tiny_mlp()
    save_file(model.state_dict(), str(folder / "mlp.safetensors"))
    torch.save(model.state_dict(), folder / "mlp.pt")
    torch.save(model, folder / "whole_module.pt")  # a pickled module: must be refused
    (folder / "junk.safetensors").write_bytes(b"not a safetensors file")
    (folder / "empty.pt").write_bytes(b"")
    (folder / "bare.pt").write_bytes(pickle.dumps({"weight": [1.0]}))  # pickled without torch.save
    (folder / "noise.pt").write_bytes(bytes(range(256)))
    (folder / "notes.pt").write_text("weights: see the wiki\n")
    (folder / "sentences.txt").write_text("one text\nanother\n")
    save_file(model.state_dict(), str(folder / "misnamed.pt"))  # a safetensors file under torch's suffix
    torch.save(tied().state_dict(), folder / "tied.pt")
    save_model(tied(), str(folder / "tied.safetensors"))  # keeps one name of the shared weight
    save_file({k: v.to(torch.int32) for k, v in model.state_dict().items()}, str(folder / "int.safetensors"))
    uniform = netpress.compress(netpress.load_model("zoo:lenet300"), netpress.UniformQuantization(8))
    netpress.save(uniform, folder / "lenet300.press")
    for factory in (custom_only, mlp_with_custom_layer):
        save_file(factory().state_dict(), str(folder / f"{factory.__name__}.safetensors"))
    return folder


MLP = ["{w}/mlp.pt", "--arch", "tests.archs:tiny_mlp"]  # the user model of the bad-input cases


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("error:")]  # one line, saying it all
    for fragment in fragments:
        assert fragment in line, result.output


@needs_fashion_mnist
def test_eval_json_reproduces_the_manifest():
    from netpress import zoo

    name = "lenet300"  # test_zoo checks every checkpoint through the API; this checks the CLI path
    result = run("eval", f"zoo:{name}", "--data", "fashion-mnist", "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["accuracy"] == zoo.load_manifest()[name]["test_accuracy"]
    assert set(info) >= {"accuracy", "per_class", "params"} and len(info["per_class"]) == 10


@needs_fashion_mnist
def test_compress_inspect_eval_decompress(tmp_path):
    press, report = tmp_path / "l.press", tmp_path / "r.json"
    args = ["-m", "magnitude", "--sparsity", "0.8", "--bits", "6", "-o", press, "--report", report, "--plot", tmp_path / "a.png"]
    result = run("compress", "zoo:lenet300", *args)
    assert result.exit_code == 0, result.output
    rep = json.loads(report.read_text())
    assert rep["file_bytes"] == press.stat().st_size and rep["sparsity"] >= 0.8
    assert {"original_bytes", "ratio", "accuracy_before", "accuracy_after", "seconds", "layers"} <= set(rep)
    info = json.loads(run("inspect", press, "--json").output)
    assert info["file_bytes"] == press.stat().st_size
    evaluated = json.loads(run("eval", press, "--json").output)
    assert evaluated["accuracy"] == rep["accuracy_after"] and 0.9 < rep["agreement"] < 1
    compared = json.loads(run("eval", press, "--reference", "zoo:lenet300", "--json").output)
    assert (compared["agreement"], compared["reference_accuracy"]) == (rep["agreement"], rep["accuracy_before"])
    assert "classify 9" in run("eval", press, "--reference", "zoo:lenet300").output
    assert_one_line_error(run("eval", press, "--reference", "zoo:lenet5"), "made from lenet300 and --reference is lenet5")
    assert evaluated["per_class"] == rep["per_class_accuracy"]["after"] and len(rep["per_class_accuracy"]["before"]) == 10
    assert run("decompress", press, "-o", tmp_path / "d.safetensors").exit_code == 0
    arch = ["--arch", "netpress.zoo.models:LeNet300", "--data", "fashion-mnist"]  # the same model, rebuilt by its factory
    again = run("eval", tmp_path / "d.safetensors", *arch, "--reference", "zoo:lenet300", "--json")
    assert json.loads(again.output)["agreement"] == rep["agreement"], again.output
    assert_one_line_error(run("eval", press, "--reference", tmp_path / "nothing.press"), "no such file")
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))


@needs_fashion_mnist
def test_decompress_writes_a_tied_weight_under_each_of_its_names(weights, tmp_path):
    press, out = tmp_path / "t.press", tmp_path / "t.safetensors"
    assert run("compress", weights / "tied.pt", "--arch", "tests.archs:tied", "-m", "uniform", "-o", press).exit_code == 0
    result = run("decompress", press, "-o", out)
    assert result.exit_code == 0, result.output
    assert "2 of them copies under a tied name" in " ".join(result.output.split())  # the shared weight and bias
    model = tied()
    model.load_state_dict(load_file(str(out)))  # every name, as a plain state dict
    assert torch.equal(model.state_dict()["3.weight"], netpress.load(press, model=tied()).state_dict()["5.weight"])


def test_paths_with_brackets_are_shown_as_they_are(weights, tmp_path):
    # rich markup in a path ([/x] closes no tag, [red] is a style) once crashed after the file was written, or
    # printed a name that does not exist.
    folder = tmp_path / "d[/x]"  # folders "d[" and "x]"
    folder.mkdir(parents=True)
    press, report, out = folder / "q[red].press", folder / "r.json", folder / "q[red].safetensors"
    result = run("compress", *[a.format(w=weights) for a in MLP], "-m", "uniform", "-o", press, "--report", report)
    assert result.exit_code == 0, result.output
    assert press.is_file() and report.is_file() and "q[red].press" in result.output
    for args in (("inspect", press), ("decompress", press, "-o", out)):
        result = run(*args)
        assert result.exit_code == 0 and str(press if args[0] == "inspect" else out) in " ".join(result.output.split())


def test_a_dataset_the_model_cannot_take_fails_before_the_file_is_written(weights, tmp_path):
    out = tmp_path / "x.press"
    result = run(
        "compress", weights / "mlp.pt", "--arch", "tests.archs:tiny_mlp", "--data", "fashion-mnist", "-m", "uniform", "-o", out
    )
    assert_one_line_error(result, "shape")
    assert not out.exists()


@needs_fashion_mnist
def test_sweep_over_parameters_removed_with_fold(tmp_path):
    args = ["--clustering", "ward", "--prune-fraction", "0.5", "--allocation", "uniform", "--report", tmp_path / "r.json"]
    result = run("sweep", "zoo:lenet300", "-m", "fold", "--params", "0.2,0.4", "--out-dir", tmp_path, *args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.glob("*.press")) == ["fold-params0.2.press", "fold-params0.4.press"]
    methods = [r["methods"][0] for r in json.loads((tmp_path / "r.json").read_text())]
    assert all(m["clustering"] == "ward" and m["prune_fraction"] == 0.5 for m in methods)  # compress's options too
    assert all(m["allocation"] == "uniform" for m in methods)
    assert "fold's auto repair ran none: the model has no BatchNorm statistics to correct" in result.output


@needs_fashion_mnist
def test_sweep_over_ratios_shows_the_setting_searched_for_each(tmp_path):
    result = run("sweep", "zoo:lenet300", "-m", "uniform", "--per-channel", "--ratios", "5,12", "--out-dir", tmp_path)
    assert result.exit_code == 0, result.output
    assert "searched" in result.output and " bits │" in result.output, result.output


@needs_fashion_mnist
def test_sweep_stores_the_survivors_in_the_raw_dtype_asked_for(tmp_path):
    result = run("sweep", "zoo:lenet300", "-m", "magnitude", "--sparsities", "0.8", "--raw-dtype", "fp16", "--out-dir", tmp_path)
    assert result.exit_code == 0, result.output
    info = json.loads(run("inspect", tmp_path / "magnitude-sparsity0.8.press", "--json").output)
    assert {r["dtype"] for r in info["tensors"] if r["kind"] in ("sparse", "raw")} == {"float16"}
    assert "sparse fp16" in run("inspect", tmp_path / "magnitude-sparsity0.8.press").output


@needs_fashion_mnist
def test_a_second_stage_keeps_the_history_of_the_first(tmp_path):
    first, second = tmp_path / "a.press", tmp_path / "b.press"
    assert run("compress", "zoo:lenet300", "-m", "magnitude", "--sparsity", "0.5", "-o", first).exit_code == 0
    assert run("compress", first, "-m", "uniform", "--bits", "6", "-o", second).exit_code == 0
    info = json.loads(run("inspect", second, "--json").output)
    assert info["source"]["zoo"] == "lenet300" and info["summary"]["methods"][0]["name"] == "uniform"
    first_stage = {"methods": [{"name": "magnitude", "allocation": "global"}], "budget": {"sparsity": 0.5}}
    assert info["source"]["earlier"] == [first_stage]


@needs_fashion_mnist
def test_fold_plot_shows_channels_removed_per_group(tmp_path):
    result = run(
        "compress", "zoo:lenet300", "-m", "fold", "--params", "0.3", "-o", tmp_path / "f.press", "--plot", tmp_path / "f.png"
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_fashion_mnist
def test_fold_allocation_is_adaptive_unless_the_command_line_names_one(tmp_path):
    """The file records the allocation each structural method used: fold's adaptive default, the one asked for."""
    for method, asked, recorded in (
        ("fold", None, "adaptive"),
        ("fold", "uniform", "uniform"),
        ("channel-l1", None, "uniform"),
        ("channel-l1", "adaptive", "adaptive"),
    ):
        path = tmp_path / f"{method}-{asked}.press"
        chosen = ["--allocation", asked] if asked else []
        result = run("compress", "zoo:lenet300", "-m", method, "--params", "0.3", *chosen, "-o", path)
        assert result.exit_code == 0, result.output
        info = json.loads(run("inspect", path, "--json").output)
        assert info["summary"]["methods"][0]["allocation"] == recorded
        said = "fold's auto repair ran none: the model has no BatchNorm statistics to correct"
        assert (said in result.output) == (method == "fold")


def test_a_failed_plot_write_leaves_nothing(tmp_path):
    from matplotlib import pyplot as plt

    from netpress.errors import OutputError
    from netpress.report import save_figure

    target = tmp_path / "gone" / "a.png"  # the directory vanished after the up-front check
    with pytest.raises(OutputError, match="cannot write"):
        save_figure(plt.figure(), target)
    assert not target.parent.exists() and plt.get_fignums() == []


def test_user_architecture_with_arch(weights, tmp_path):
    press = tmp_path / "u.press"
    for source in ("mlp.safetensors", "mlp.pt"):
        result = run("compress", weights / source, "-m", "uniform", "--bits", "4", "--arch", "tests.archs:tiny_mlp", "-o", press)
        assert result.exit_code == 0, result.output
    assert run("inspect", press, "--json").exit_code == 0
    assert_one_line_error(run("eval", press, "--data", "digits"), "--arch")
    result = run("eval", press, "--data", "digits", "--arch", "tests.archs:tiny_mlp", "--json")
    assert result.exit_code == 0 and 0 <= json.loads(result.output)["accuracy"] <= 1


def test_a_half_precision_input_is_compared_with_its_own_bytes_too(tmp_path):
    from safetensors.torch import save_file

    from tests.archs import tiny_mlp

    half = tmp_path / "half.safetensors"
    save_file({k: v.half() for k, v in tiny_mlp().state_dict().items()}, half)
    report = tmp_path / "r.json"
    args = ["--arch", "tests.archs:tiny_mlp", "-o", tmp_path / "u.press", "--report", report]
    result = run("compress", half, "-m", "uniform", "--bits", "4", *args)
    assert result.exit_code == 0, result.output
    measured = json.loads(report.read_text())
    assert measured["input_file_bytes"] == half.stat().st_size < measured["original_bytes"] / 1.9
    assert "note: the input takes" in result.output and "fewer than the model in fp32" in result.output
    result = run("compress", half, "-m", "magnitude", "--sparsity", "0.1", *args)  # fp32 survivors: more than fp16
    assert result.exit_code == 0 and "warning: the new file is larger than its input" in result.output
    assert "fewer bits than fp32 (e.g. bfloat16)" in result.output


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["eval", "missing.safetensors", "--arch", "tests.archs:tiny_mlp"], ["no such file"]),
        (["eval", "model.onnx"], ["unsupported model source"]),
        (["eval", "zoo:alexnet"], ["unknown zoo model"]),
        (["eval", "zoo:lenet300", "--arch", "tests.archs:tiny_mlp"], ["drop arch (CLI: --arch)"]),
        (["eval", "{w}/mlp.safetensors"], ["--arch"]),
        (["eval", "{w}/mlp.safetensors", "--arch", "tests.archs"], ["package.module:factory"]),
        (["eval", "{w}/mlp.safetensors", "--arch", "tests.archs:nope"], ["cannot import"]),
        (["eval", "{w}/mlp.safetensors", "--arch", "tests.archs:not_a_module"], ["not a torch.nn.Module"]),
        (["eval", "{w}/mlp.safetensors", "--arch", "tests.archs:tiny_cnn"], ["do not fit"]),
        (["eval", "{w}/junk.safetensors", "--arch", "tests.archs:tiny_mlp"], ["not a readable safetensors"]),
        (["eval", "{w}/empty.pt"], ["is empty (0 bytes)"]),
        (["eval", "zoo:lenet300", "--data", "digits"], ["inputs have shape (1, 8, 8), the model expects (1, 28, 28)"]),
        (["eval", "zoo:lenet300", "--data", "{w}/sentences.txt"], ["sentences.txt is text: it measures models read from"]),
        (["eval", "{w}/notes.pt", "--arch", "tests.archs:tiny_mlp"], ["notes.pt is a text file, not a torch checkpoint"]),
        (["eval", "{w}/misnamed.pt", "--arch", "tests.archs:tiny_mlp"], ["is a safetensors file", "misnamed.safetensors"]),
        (["sweep", *MLP, "-m", "magnitude", "--sparsities", "0.5", "--workers", "0"], ["workers must be"]),
        (["eval", "{w}/whole_module.pt", "--arch", "tests.archs:tiny_mlp"], ["weights_only=True"]),
        (["eval", "{w}/bare.pt", "--arch", "tests.archs:tiny_mlp"], ["not a zip-format torch.save checkpoint"]),
        (["eval", "{w}/noise.pt", "--arch", "tests.archs:tiny_mlp"], ["not a zip-format torch.save checkpoint"]),
        (["eval", *MLP, "--data", "mnist"], ["unknown dataset"]),
        (["eval", *MLP], ["--data"]),
        (
            ["compress", "{w}/custom_only.safetensors", "--arch", "tests.archs:custom_only", "-m", "uniform", "-o", "x.press"],
            ["no compressible layer", "1 (_Mixer)", "supported: Linear"],
        ),
        (["inspect", "{w}/junk.safetensors"], ["not a .press file"]),
        (["compress", *MLP, "-m", "uniform", "-o", "no/x.press"], ["does not exist"]),
        (["compress", *MLP, "-m", "uniform", "-o", "no/../x.press"], ["does not exist"]),  # the OS needs no/ too
        (["sweep", *MLP, "-m", "magnitude", "--sparsities", ",", "--out-dir", "runs"], ["--sparsities takes", "0.5,0.8"]),
        (
            ["compress", *MLP, "-m", "uniform", "--preservation-set", "{w}/none.safetensors", "-o", "x.press"],
            ["preservation set", "no such file"],
        ),
        (["compress", *MLP, "-m", "uniform", "-o", "{w}"], ["is a directory"]),
        (
            ["compress", *MLP, "-m", "uniform", "-o", "x.press"] + ["--report", "no/r.json"],
            ["does not exist"],
        ),
        (["decompress", "{w}/nothing.press", "-o", "no/d.safetensors"], ["does not exist"]),
        (
            ["sweep", *MLP, "-m", "magnitude", "--sparsities", "0.5", "--out-dir", "{w}/runs"]
            + ["--report", "{w}/runs/sub/r.json"],
            ["runs/sub does not exist"],
        ),
        (["inspect", "{w}/nothing.press"], ["no such file"]),
        (["inspect", "{w}"], ["is a directory"]),
        (["demo", "--output-dir", "{w}/mlp.pt"], ["cannot use", "as the output directory"]),
        (["compress", *MLP, "-m", "uniform", "-o", "x.pt"], [".press suffix"]),
        (["compress", *MLP, "-m", "uniform", "-o", "x.press", "--report", "archs.py"], ["ending in .json"]),
        (["compress", *MLP, "-m", "magnitude", "--sparsity", "0.5", "--calib", "64", "-o", "x.press"], ["CLI: --calib"]),
        (["compress", *MLP, "-m", "uniform", "--seed", "5", "-o", "x.press"], ["draws nothing at random; drop --seed"]),
        (["eval", "{w}/int.safetensors", "--arch", "tests.archs:tiny_mlp", "--data", "digits"], ["torch.int32", "float"]),
        (["compress", *MLP, "-m", "uniform", "--data", "", "-o", "x.press"], ["unknown dataset ''"]),
        (
            ["compress", "{w}/lenet300.press", "-m", "magnitude", "--sparsity", "0.5", "-o", "x.press"],
            ["quantized (uniform)", "end with a quantizer"],
        ),
        (
            ["compress", "{w}/lenet300.press", "-m", "fold", "--params", "0.2", "-o", "x.press"],
            ["already pruned or quantized (uniform)", "run fold on the model from before"],
        ),
        (
            [
                "sweep",
                *MLP,
                "-m",
                "magnitude",
                "--sparsities",
                "0.5",
                "--out-dir",
                "s",
                "--report",
                "r.press",
            ],
            ["ending in .json"],
        ),
        (
            ["eval", "{w}/lenet300.press", "--arch", "tests.archs:tiny_mlp", "--data", "digits"],
            ["zoo:lenet300", "drop arch (CLI: --arch)"],
        ),
        (["compress", *MLP, "-m", "uniform", "-o", "x.press", "--plot", "a.jpeg"], ["ending in .png or .svg or .pdf"]),
        (["decompress", "{w}/nothing.press", "-o", "d.bin"], ["ending in .safetensors"]),
        (
            ["compress", *MLP, "-m", "uniform", "-o", "x.press", "--report", "x.press"],
            ["named for two outputs"],
        ),
        (
            ["compress", *MLP, "-m", "uniform", "-o", "x.press", "--plot", "./x.press"],
            ["named for two outputs"],
        ),
        (["compress", "zoo:lenet300", "-m", "uniform", "--data", "digits", "-o", "x.press"], ["shape"]),
        (
            ["compress", *MLP, "-m", "uniform", "--levels", "8", "-o", "x.press"],
            ["-m kmeans"],
        ),
        (
            ["compress", *MLP, "-m", "kmeans", "--bits", "4", "-o", "x.press"],
            ["drop --bits"],
        ),
        (
            ["compress", *MLP, "-m", "kmeans", "--per-channel", "-o", "x.press"],
            ["--per-channel"],
        ),
        (
            ["compress", *MLP, "-m", "magnitude", "--sparsity", "0.5", "--per-channel", "-o", "x.press"],
            ["--per-channel"],
        ),
        (
            ["compress", *MLP, "-m", "fcpts", "--sparsity", "0.5", "--allocation", "lamp", "-o", "x.press"],
            ["--allocation configures --method magnitude, fold and channel-l1 only"],
        ),
        (
            ["compress", *MLP, "-m", "channel-l1", "--params", "0.5", "--repair", "auto", "-o", "x.press"],
            ["the auto repair corrects merged channels and channel-l1 merges none"],
        ),
        (
            ["compress", *MLP, "-m", "fold", "--params", "0.5", "--allocation", "lamp", "-o", "x.press"],
            ["--method fold takes --allocation uniform or adaptive, not lamp"],
        ),
        (
            ["compress", *MLP, "-m", "magnitude", "--sparsity", "0.5", "--allocation", "adaptive", "-o", "x.press"],
            ["--method magnitude takes --allocation", "not adaptive"],
        ),
        (
            ["compress", *MLP, "-m", "magnitude", "--sparsity", "0.5", "--clip", "mse", "-o", "x.press"],
            ["--clip configures uniform quantization"],
        ),
        (
            ["compress", *MLP, "-m", "magnitude", "--sparsity", "0.5", "--group-size", "64", "-o", "x.press"],
            ["--group-size configures uniform quantization"],
        ),
        (
            ["compress", *MLP, "-m", "uniform", "--per-channel", "--group-size", "64", "-o", "x.press"],
            ["--per-channel", "--group-size", "not both"],
        ),
        (
            ["compress", *MLP, "-m", "uniform", "--repair", "ar", "-o", "x.press"],
            ["fold and channel-l1 only"],
        ),
        (["compress", *MLP, "-m", "uniform", "--epochs", "3", "-o", "x.press"], ["--epochs and --tau configure --method sws"]),
        (["compress", *MLP, "-m", "sws", "--bits", "4", "--data", "digits", "-o", "x.press"], ["drop --bits"]),
        (["compress", *MLP, "-m", "sws", "--gamma", "1", "--data", "digits", "-o", "x.press"], ["--method self-compress only"]),
        (["compress", *MLP, "-m", "self-compress", "--levels", "4", "--data", "digits", "-o", "x.press"], ["drop --bits"]),
        (
            ["compress", *MLP, "-m", "l2", "--ratio", "4", "--iterations", "10", "-o", "x.press"],
            ["fcpts only", "--transform-steps"],
        ),
        (
            ["sweep", *MLP, "-m", "magnitude", "--sparsities", "0.5", "--init", "erk"],
            ["--init configures --method fcpts only"],
        ),
        (
            ["sweep", *MLP, "-m", "fcpts", "--sparsities", "0.5", "--rounds", "1"],
            ["configure --method l2 only"],
        ),
        (
            ["compress", *MLP, "-m", "magnitude", "--sparsity", "0.5", "--batch-size", "8", "-o", "x.press"],
            ["fcpts, l2, sws and self-compress only"],
        ),
        (
            ["compress", *MLP, "-m", "magnitude", "--params", "0.5", "-o", "x.press"],
            ["magnitude takes sparsity"],
        ),
        (
            ["sweep", *MLP, "-m", "magnitude", "--sparsities", "0.5", "--params", "0.3"],
            ["one list of targets"],
        ),
        (
            ["sweep", *MLP, "-m", "magnitude", "--sparsities", "a,b"],
            ["--sparsities 0.5,0.8,0.9"],
        ),
        (
            ["sweep", *MLP, "-m", "magnitude", "--sparsities", "0.5"] + ["--out-dir", "{w}/mlp.pt/runs"],
            ["mlp.pt is a file, not a folder"],
        ),
        (
            ["compress", *MLP, "-m", "magnitude", "--sparsity", "1.5", "-o", "x.press"],
            ["fraction in [0, 1)"],
        ),
        (["compress", *MLP, "-m", "magnitude", "-o", "x.press"], ["--sparsity"]),
        (
            ["compress", *MLP, "-m", "channel-l1"] + ["--clustering", "ward", "-o", "x.press"],
            ["--method fold only"],
        ),
        (
            ["compress", *MLP, "-m", "uniform", "--bits", "4", "--ratio", "3", "-o", "x.press"],
            ["search picks --bits", "drop --bits"],
        ),
        (
            ["sweep", *MLP, "-m", "magnitude", "--ratios", "2,1000"],
            ["1000x ratio is out of reach", "bytes"],
        ),
        (
            ["compress", *MLP, "-m", "uniform", "--bits", "1", "-o", "x.press"],
            ["bits must be"],
        ),
        (
            ["compress", *MLP, "-m", "magnitude", "--sparsity", "0.5", "--ratio", "3", "-o", "x.press"],
            ["one target"],
        ),
    ],
)
def test_bad_input_is_one_clear_line(weights, args, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(run(*[a.replace("{w}", str(weights)) for a in args]), *fragments)
    assert not (tmp_path / "x.press").exists() and not (tmp_path / "netpress-sweep").exists()


def test_a_later_stage_keeps_the_fp16_floats_of_its_input_unless_told(weights, tmp_path):
    first, kept, full = (tmp_path / f"{n}.press" for n in ("first", "kept", "full"))
    prune = ["--arch", "tests.archs:tiny_mlp", "-m", "magnitude", "--sparsity"]
    assert run("compress", weights / "mlp.pt", *prune, "0.5", "--raw-dtype", "fp16", "-o", first).exit_code == 0
    again = run("compress", first, *prune, "0.6", "-o", kept)
    assert "in fp16, as the input file stores them" in " ".join(again.output.split())
    assert run("compress", first, *prune, "0.6", "--raw-dtype", "fp32", "-o", full).exit_code == 0
    assert kept.stat().st_size < 0.7 * full.stat().st_size
    model = tiny_mlp()  # fp16 values: the same in either file
    assert torch.equal(netpress.load(kept, model=model)[1].weight, netpress.load(full, model=tiny_mlp())[1].weight)


def test_eval_compares_a_second_stage_with_its_first_both_built_by_one_factory(weights, tmp_path):
    arch = ["--arch", "tests.archs:tiny_mlp"]
    first, second = tmp_path / "a.press", tmp_path / "b.press"
    assert run("compress", weights / "mlp.pt", *arch, "-m", "magnitude", "--sparsity", "0.5", "-o", first).exit_code == 0
    assert run("compress", first, *arch, "-m", "uniform", "--bits", "4", "-o", second).exit_code == 0
    result = run("eval", second, *arch, "--data", "digits", "--reference", first, "--json")
    assert result.exit_code == 0, result.output
    assert 0 < json.loads(result.output)["agreement"] <= 1


def test_quantizing_a_quantized_file_again_is_noted(weights, tmp_path):
    arch = ["--arch", "tests.archs:tiny_mlp"]
    assert run("compress", weights / "mlp.pt", *arch, "-m", "uniform", "--bits", "4", "-o", tmp_path / "u.press").exit_code == 0
    again = run("compress", tmp_path / "u.press", *arch, "-m", "kmeans", "--levels", "4", "-o", tmp_path / "k.press")
    assert "already quantized by uniform, and kmeans rounds its values again" in " ".join(again.output.split())
    pruned = run(
        "compress", tmp_path / "u.press", *arch, "-m", "magnitude", "--sparsity", "0.6", "--bits", "4", "-o", tmp_path / "m.press"
    )
    assert pruned.exit_code == 0 and "rounds its values again" in " ".join(pruned.output.split())


def test_a_path_that_is_no_regular_file_is_named_as_such(weights, tmp_path, monkeypatch):
    os.mkfifo(tmp_path / "pipe.press")  # reading it would block: refused before
    os.mkfifo(tmp_path / "pipe.safetensors")
    assert_one_line_error(run("inspect", tmp_path / "pipe.press"), "not a regular file")
    data = ["--data", tmp_path / "pipe.safetensors", "-o", tmp_path / "x.press"]
    fcpts = run("compress", weights / "mlp.pt", "--arch", "tests.archs:tiny_mlp", "-m", "fcpts", *data)
    assert_one_line_error(fcpts, "not a regular file")
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # as root every file is readable: pretend it is not
    with pytest.raises(netpress.NetpressError, match="no permission to read it"):
        netpress.load(weights / "lenet300.press")


def test_the_console_script_gives_a_usage_error_in_one_line(tmp_path):
    """Through ``main`` (the ``netpress`` script), not typer's test runner: a value that is no number, a missing
    option."""
    for args in (
        ["--sparsity", "abc", "-o", tmp_path / "a.press"],
        ["--sparsity", "[/x]", "-o", tmp_path / "a.press"],
        ["--sparsity", "0.5"],
    ):
        argv = ["netpress", "compress", "zoo:lenet300", "-m", "magnitude", *map(str, args)]
        code = f"import sys; sys.argv = {argv!r}; import netpress.cli; netpress.cli.main()"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error:"), done.stderr
        assert "compress --help" in done.stderr


def test_sweep_never_overwrites_its_input(weights, tmp_path):
    source = tmp_path / "magnitude-sparsity0.5.press"  # the name sweep would give its own output
    mlp = ["--arch", "tests.archs:tiny_mlp"]
    assert run("compress", weights / "mlp.pt", *mlp, "-m", "magnitude", "--sparsity", "0.5", "-o", source).exit_code == 0
    before = source.read_bytes()
    result = run("sweep", source, *mlp, "-m", "magnitude", "--sparsities", "0.5", "--out-dir", tmp_path)
    assert_one_line_error(result, "is the input file")
    assert source.read_bytes() == before


def test_sweep_report_may_go_inside_the_out_dir_it_creates(weights, tmp_path):
    runs = tmp_path / "runs" / "lenet"
    mlp = ["--arch", "tests.archs:tiny_mlp", "--data", "digits"]
    args = ["-m", "magnitude", "--sparsities", "0.5", "--out-dir", runs, "--report", runs / "report.json"]
    result = run("sweep", weights / "mlp.pt", *mlp, *args)
    assert result.exit_code == 0, result.output
    assert json.loads((runs / "report.json").read_text())[0]["file"] == str(runs / "magnitude-sparsity0.5.press")


def test_fcpts_from_the_command_line_starts_where_init_says_and_meets_the_target(weights, tmp_path):
    press, report = tmp_path / "s.press", tmp_path / "r.json"
    args = ["--arch", "tests.archs:tiny_mlp", "--data", "digits", "-m", "fcpts", "--sparsity", "0.7", "--init", "erk"]
    result = run("compress", weights / "mlp.pt", *args, "--iterations", "3", "--calib", "64", "-o", press, "--report", report)
    assert result.exit_code == 0, result.output
    assert {row["init"] for row in json.loads(report.read_text())["layers"]["fcpts"]} == {"erk"}
    pruned = [t for t in json.loads(run("inspect", press, "--json").output)["tensors"] if t["kind"] == "sparse"]
    weights_in_file = sum(math.prod(t["shape"]) for t in pruned)
    assert sum(round(t["sparsity"] * math.prod(t["shape"])) for t in pruned) == math.ceil(0.7 * weights_in_file)


def test_soft_weight_sharing_from_the_command_line_retrains_on_the_split_it_is_given(weights, tmp_path):
    press, report = tmp_path / "s.press", tmp_path / "r.json"
    args = ["--arch", "tests.archs:tiny_mlp", "--data", "digits", "-m", "sws", "--epochs", "1", "--tau", "0.1", "--levels", "5"]
    result = run("compress", weights / "mlp.pt", *args, "--calib", "256", "-o", press, "--report", report)
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert written["calibration"]["n"] == 256
    assert all(row["levels"] <= 5 for row in written["layers"]["sws"])


def test_soft_weight_sharing_meets_a_ratio_from_the_command_line(weights, tmp_path):
    press, report = tmp_path / "s.press", tmp_path / "r.json"
    args = ["--arch", "tests.archs:tiny_mlp", "--data", "digits", "-m", "sws", "--epochs", "2", "--ratio", "5"]
    result = run("compress", weights / "mlp.pt", *args, "--calib", "256", "-o", press, "--report", report)
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert press.stat().st_size <= written["original_bytes"] // 5
    assert written["layers"]["sws"][0]["fit"]["pilots"]
    assert "pilot run(s) of 2 epoch(s)" in result.output and "of the" in result.output


def test_self_compression_from_the_command_line_reports_bit_depths_and_its_preservation_set(weights, tmp_path):
    press, report, plot = tmp_path / "c.press", tmp_path / "r.json", tmp_path / "bits.png"
    args = ["--arch", "tests.archs:tiny_mlp", "--data", "digits", "-m", "self-compress", "--steps", "20", "--preserve", "50"]
    result = run("compress", weights / "mlp.pt", *args, "--gamma", "0.5", "-o", press, "--report", report, "--plot", plot)
    assert result.exit_code == 0, result.output
    rows = json.loads(report.read_text())["layers"]["self-compress"]
    assert rows[0]["preservation"]["size"] == 50 and all("bit_depth" in row for row in rows)
    for accuracy in (rows[0]["preservation"]["accuracy_before"], rows[0]["preservation"]["accuracy_after"]):
        assert round(accuracy * 50) / 50 == accuracy  # a count over 50, not a float32 mean (0.7599999904632568)
    assert plot.stat().st_size > 0


def test_zeros_added_by_quantizing_survivors_are_named(weights, tmp_path):
    args = ["--arch", "tests.archs:tiny_mlp", "-m", "magnitude", "--sparsity", "0.5", "--bits", "2", "-o", tmp_path / "q.press"]
    result = run("compress", weights / "mlp.pt", *args, "--report", tmp_path / "r.json")
    assert result.exit_code == 0 and "kept rounded to zero when quantized" in result.output, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    weights_pruned = sum(row["params"] for row in report["layers"]["magnitude"])
    added = round(report["sparsity"] * weights_pruned) - math.ceil(0.5 * weights_pruned)
    assert report["survivors_rounded_to_zero"] == added > 0
    alone = run("compress", weights / "mlp.pt", *args[:-4], "-o", tmp_path / "p.press")
    assert alone.exit_code == 0 and "rounded to zero" not in alone.output


def test_a_file_larger_than_fp32_is_flagged(weights, tmp_path):
    args = ["--arch", "tests.archs:tiny_mlp", "-m", "kmeans", "--levels", "4000", "-o", tmp_path / "k.press"]
    result = run("compress", weights / "mlp.pt", *args)
    assert result.exit_code == 0 and "larger than the model in fp32" in result.output, result.output


def test_fold_traces_a_user_model_with_a_sample_of_data(tmp_path):
    source = tmp_path / "cnn.pt"
    torch.save(tiny_cnn().state_dict(), source)
    args = ["--arch", "tests.archs:tiny_cnn", "--data", "digits", "-m", "fold", "--params", "0.5"]
    result = run("compress", source, *args, "-o", tmp_path / "f.press")
    assert result.exit_code == 0, result.output
    assert "fold's auto repair ran ar: the data-free correction" in result.output  # it has a BatchNorm


def test_damaged_press_file_fails_cleanly(weights, tmp_path):
    press = tmp_path / "d.press"
    assert run("compress", weights / "mlp.pt", "--arch", "tests.archs:tiny_mlp", "-m", "uniform", "-o", press).exit_code == 0
    data = bytearray(press.read_bytes())
    data[-5] ^= 0x55
    press.write_bytes(bytes(data))
    assert_one_line_error(run("eval", press, "--arch", "tests.archs:tiny_mlp", "--data", "digits"), "CRC32")
    press.write_bytes(bytes(data[: len(data) // 2]))
    assert_one_line_error(run("inspect", press), "truncated")


def test_zoo_list():
    result = run("zoo", "list")
    assert result.exit_code == 0 and "lenet5" in result.output


def test_an_output_path_that_is_an_input_is_refused_and_the_input_kept(weights, tmp_path):
    source = tmp_path / "mlp.safetensors"
    source.write_bytes((weights / "mlp.safetensors").read_bytes())
    args = ["compress", source, "--arch", "tests.archs:tiny_mlp", "-m", "uniform", "-o", source]
    assert_one_line_error(run(*args), "is the input file")
    assert source.read_bytes() == (weights / "mlp.safetensors").read_bytes()
    press = tmp_path / "m.press"
    assert run(*args[:-1], press).exit_code == 0
    kept = press.read_bytes()
    assert_one_line_error(run("decompress", press, "-o", press), "is the input file")
    assert press.read_bytes() == kept
    assert not list(tmp_path.glob("*.tmp"))


def test_layers_no_method_compresses_are_named(weights, tmp_path):
    model, arch = weights / "mlp_with_custom_layer.safetensors", "tests.archs:mlp_with_custom_layer"
    result = run("compress", model, "--arch", arch, "-m", "uniform", "-o", tmp_path / "c.press")
    assert result.exit_code == 0, result.output
    assert "stored uncompressed" in result.output and "3 (_Mixer, 1,024 parameters)" in " ".join(result.output.split())


def test_arch_is_found_in_the_current_directory(weights, tmp_path, monkeypatch):
    (tmp_path / "my_arch_here.py").write_text("from tests.archs import tiny_mlp as build\n")
    monkeypatch.chdir(tmp_path)
    result = run("compress", weights / "mlp.pt", "--arch", "my_arch_here:build", "-m", "uniform", "-o", "m.press")
    assert result.exit_code == 0, result.output


@needs_fashion_mnist
def test_a_second_stage_after_fold_reports_the_ratio_against_the_model_before_the_first(tmp_path):
    first, second, report = tmp_path / "a.press", tmp_path / "b.press", tmp_path / "b.json"
    assert run("compress", "zoo:lenet300", "-m", "fold", "--params", "0.5", "-o", first).exit_code == 0
    result = run("compress", first, "-m", "uniform", "--bits", "8", "-o", second, "--report", report)
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    assert r["first_original_bytes"] == api.fp32_bytes(zoo.build("lenet300")) > r["original_bytes"]
    assert r["overall_ratio"] == r["first_original_bytes"] / r["file_bytes"]
    assert "before the first stage (fold)" in result.output


def test_a_second_stage_that_grows_the_file_says_so(weights, tmp_path):
    """Re-quantizing an 8-bit file to 8 bits per channel moves every weight to a new grid: a larger file."""
    result = run(
        "compress", weights / "lenet300.press", "-m", "uniform", "--bits", "8", "--per-channel", "-o", tmp_path / "b.press"
    )
    assert result.exit_code == 0, result.output
    assert "warning: the new file is larger than its input" in " ".join(result.output.split())


def test_file_suffixes_are_read_in_any_case(weights, tmp_path):
    upper = tmp_path / "LENET300.PRESS"
    upper.write_bytes((weights / "lenet300.press").read_bytes())
    result = run("inspect", upper)
    assert result.exit_code == 0, result.output
    assert run("compress", upper, "-m", "uniform", "--bits", "4", "-o", tmp_path / "b.press").exit_code == 0


def test_an_output_directory_without_write_permission_is_refused_before_any_work(weights, tmp_path, monkeypatch):
    monkeypatch.setattr("os.access", lambda path, mode: False)  # as root every path is writable: pretend otherwise
    result = run("compress", *(a.format(w=weights) for a in MLP), "-m", "uniform", "-o", tmp_path / "x.press")
    assert_one_line_error(result, "no permission to write")
    assert not (tmp_path / "x.press").exists()


def test_clip_and_group_size_reach_uniform_quantization_after_pruning(tmp_path):
    report = tmp_path / "r.json"
    options = "-m magnitude --sparsity 0.5 --bits 4 --clip mse --group-size 100".split()
    result = run("compress", "zoo:lenet300", *options, "-o", tmp_path / "c.press", "--report", report)
    assert result.exit_code == 0, result.output
    methods = json.loads(report.read_text())["methods"]
    assert methods[-1] == {"name": "uniform", "bits": 4, "per_channel": False, "clip": "mse", "group_size": 100}
    loaded = netpress.load(tmp_path / "c.press")
    assert netpress.codec.read(tmp_path / "c.press").tensors["fc1.weight"].levels.shape == (300 * 8, 15)  # 784 = 8 runs
    assert loaded is not None


def test_a_data_file_of_your_own_calibrates_and_measures_like_the_named_dataset(weights, tmp_path):
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    data = tmp_path / "mine.safetensors"
    save_file({"train_inputs": train.tensors[0], "test_inputs": test.tensors[0], "test_labels": test.tensors[1]}, str(data))
    reports = []
    for name, source in (("named", "digits"), ("file", data)):
        args = ["--arch", "tests.archs:tiny_mlp", "--data", source, "-m", "fcpts", "--sparsity", "0.5", "--iterations", "2"]
        result = run(
            "compress",
            weights / "mlp.pt",
            *args,
            "--calib",
            "32",
            "-o",
            tmp_path / f"{name}.press",
            "--report",
            tmp_path / f"{name}.json",
        )
        assert result.exit_code == 0, result.output
        reports.append(json.loads((tmp_path / f"{name}.json").read_text()))
    assert (tmp_path / "named.press").read_bytes() == (tmp_path / "file.press").read_bytes()
    assert reports[0]["accuracy_after"] == reports[1]["accuracy_after"] and reports[1]["dataset"] == str(data)
    result = run("eval", tmp_path / "file.press", "--arch", "tests.archs:tiny_mlp", "--data", data, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["accuracy"] == reports[1]["accuracy_after"]


def test_the_demo_without_fashion_mnist_runs_every_setting_on_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("NETPRESS_FASHION_MNIST", str(tmp_path / "absent"))
    result = run("demo", "--output-dir", tmp_path / "demo")
    assert result.exit_code == 0, result.output
    assert "digits" in result.output and "then L² 40× of the folded file" in result.output
    folded, further = (netpress.inspect(tmp_path / "demo" / f"{n}.press") for n in ("fold30", "fold30-l2-40x"))
    assert further["file_bytes"] < folded["file_bytes"]


def test_outputs_leave_a_neighbouring_tmp_alone_and_too_long_names_are_refused_first(weights, tmp_path):
    model = [a.replace("{w}", str(weights)) for a in MLP]
    press = tmp_path / "a.press"
    assert run("compress", *model, "-m", "uniform", "--bits", "4", "-o", press).exit_code == 0
    (tmp_path / "d.safetensors.tmp").write_text("someone's notes")
    (tmp_path / "r.json.tmp").mkdir()
    assert run("decompress", press, "-o", tmp_path / "d.safetensors").exit_code == 0
    assert (tmp_path / "d.safetensors.tmp").read_text() == "someone's notes"
    args = ["-m", "uniform", "--bits", "4", "-o", tmp_path / "b.press", "--report", tmp_path / "r.json"]
    assert run("compress", *model, *args).exit_code == 0 and (tmp_path / "r.json.tmp").is_dir()
    long = tmp_path / ("x" * 250 + ".press")
    assert_one_line_error(run("compress", *model, "-m", "uniform", "-o", long), "longer than the 255 bytes")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_press_input_whose_stage_names_no_methods_compresses_again(tmp_path):
    compressed = api.compress(tiny_mlp(), netpress.UniformQuantization(4))
    del compressed.summary["methods"]  # a file written by hand through netpress.save
    netpress.save(compressed, tmp_path / "bare.press")
    again = run(
        "compress",
        tmp_path / "bare.press",
        "--arch",
        "tests.archs:tiny_mlp",
        "-m",
        "kmeans",
        "--levels",
        "4",
        "-o",
        tmp_path / "k.press",
    )
    assert again.exit_code == 0, again.output


def test_a_layer_left_all_zero_is_warned_about_in_python_and_on_the_command_line(weights, tmp_path):
    """Global magnitude pruning at 99 % empties tiny_mlp's small layers: the overall sparsity does not show that."""
    with pytest.warns(netpress.NetpressWarning, match="every weight of .* is zero after magnitude"):
        api.compress(tiny_mlp(), netpress.MagnitudePruning("global"), netpress.Budget(sparsity=0.99))
    result = run(
        "compress",
        weights / "mlp.pt",
        "--arch",
        "tests.archs:tiny_mlp",
        "-m",
        "magnitude",
        "--allocation",
        "global",
        "--sparsity",
        "0.99",
        "-o",
        tmp_path / "m.press",
    )
    assert result.exit_code == 0 and "warning: every weight of" in " ".join(result.output.split())


def test_other_warnings_are_shown_as_python_shows_them_and_the_command_ends(weights, tmp_path):
    arch = ["--arch", "tests.archs:warns_when_built"]
    done = subprocess.run(
        [
            sys.executable,
            "-W",
            "always",
            "-m",
            "netpress.cli",
            "compress",
            weights / "mlp.pt",
            *arch,
            "-m",
            "uniform",
            "-o",
            tmp_path / "u.press",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NETPRESS_QUIET": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("a deprecated option") == 1


def test_a_note_shows_enough_decimals_to_tell_two_sparsities_apart():
    """18 zeros more than asked among 430,500 weights: "80.00 % sparse, above the 80.00 %" would contradict itself."""
    assert (cli._distinct_percent(0.800042, 0.8), cli._distinct_percent(0.8, 0.800042)) == ("80.004", "80.000")
    assert cli._distinct_percent(0.8125, 0.5) == "81.25"
