"""Your own preservation set: critical examples measured before and after every method, guarded by
self-compression, refused where it would train on test data, and read from a file without pickle."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import Subset as TorchSubset
from torch.utils.data import TensorDataset
from typer.testing import CliRunner

import netpress
from netpress import api, codec
from netpress.budget import Budget
from netpress.cli import app
from netpress.data import calibration_subset, dataset_sha256, load_dataset, load_preservation_set
from netpress.errors import BudgetError, DataError, OutputError
from netpress.methods.baselines import MagnitudePruning
from netpress.methods.self_compress import SelfCompression
from tests.archs import Items, tiny_mlp

FAST = SelfCompression(steps=20, batch_size=64)
runner = CliRunner()


def _handle(model):
    return netpress.ModelHandle(model, {}, "digits", (1, 8, 8))


@pytest.fixture(scope="module")
def train():
    return load_dataset("digits", "train")


@pytest.fixture(scope="module")
def critical(train):
    """Forty training images as a labelled dataset of the user's own."""
    inputs, labels = train.tensors
    return TensorDataset(inputs[:40].clone(), labels[:40].clone())


def test_every_method_reports_the_sets_accuracy_before_and_after_with_the_function_of_the_test_split(critical, tmp_path):
    model = tiny_mlp()
    out = tmp_path / "m.press"
    report = api.press(_handle(model), MagnitudePruning(), Budget(sparsity=0.9), out=out, data="digits", preservation=critical)
    kept = report["preservation"]
    assert kept["samples"] == 40 and kept["in_test_split"] == 0 and kept["sha256"] == dataset_sha256(critical)
    assert kept["accuracy_before"] == netpress.evaluate(model, critical).accuracy
    assert kept["accuracy_after"] == netpress.evaluate(netpress.load(out, model=tiny_mlp()), critical).accuracy


def test_examples_also_in_the_test_split_are_counted_and_refused_where_they_are_trained_on(critical, tmp_path):
    test = load_dataset("digits", "test")
    inputs, labels = test.tensors
    mixed = TensorDataset(torch.cat([critical.tensors[0], inputs[:3]]), torch.cat([critical.tensors[1], labels[:3]]))
    report = api.press(
        _handle(tiny_mlp()), MagnitudePruning(), Budget(sparsity=0.5), out=tmp_path / "m.press", data="digits", preservation=mixed
    )
    assert report["preservation"]["in_test_split"] == 3
    out = tmp_path / "s.press"
    with pytest.raises(DataError, match="3 of the 43 preservation examples are also in the test split"):
        api.press(_handle(tiny_mlp()), FAST, out=out, data="digits", calib=256, preservation=mixed)
    assert not out.exists()
    with pytest.raises(DataError, match="test split"):  # the split itself, handed to the method directly
        SelfCompression(preservation=TorchSubset(test, range(10)))


def test_self_compression_guards_your_examples_and_the_file_records_which(train, critical):
    data = calibration_subset(train, 256, seed=0)
    compressed = api.compress(_handle(tiny_mlp()), replace(FAST, preservation=critical), data=data)
    row = compressed.details["layers"]["self-compress"][0]["preservation"]
    assert row["size"] == 40 and row["yours_sha256"] == dataset_sha256(critical) and "indices" not in row
    (record,) = compressed.summary["methods"]
    assert record["preservation"] == {"samples": 40, "sha256": dataset_sha256(critical)}
    chosen = api.compress(_handle(tiny_mlp()), replace(FAST, preserve=40), data=data)
    assert len(chosen.details["layers"]["self-compress"][0]["preservation"]["indices"]) == 40
    assert codec.to_bytes(chosen) != codec.to_bytes(compressed)  # another set, another guard


def test_press_hands_the_set_to_self_compression_and_refuses_a_second_one(critical, tmp_path):
    report = api.press(_handle(tiny_mlp()), FAST, out=tmp_path / "s.press", data="digits", calib=256, preservation=critical)
    assert report["layers"]["self-compress"][0]["preservation"]["size"] == 40
    inside = report["layers"]["self-compress"][0]["preservation"]["accuracy_after"]  # on the model before it was written
    assert report["preservation"]["accuracy_after"] == pytest.approx(inside)
    other = TensorDataset(critical.tensors[0][:5], critical.tensors[1][:5])
    with pytest.raises(DataError, match="give the preservation set once"):
        api.press(
            _handle(tiny_mlp()), replace(FAST, preservation=other), out=tmp_path / "t.press", data="digits", preservation=critical
        )


def _write(path, **tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize(
    "tensors, message",
    [
        (
            {"preserve_inputs": torch.zeros(4, 1, 8, 8)},
            "no preserve_labels; a data file holds preserve_inputs and preserve_labels",
        ),
        ({"train_inputs": torch.zeros(4, 1, 8, 8)}, "no preserve_inputs"),
        ({"preserve_inputs": torch.zeros(4, 1, 8, 8), "preserve_labels": torch.zeros(3, dtype=torch.int64)}, "one per input"),
        ({"preserve_inputs": torch.zeros(4, 64), "preserve_labels": torch.zeros(4, dtype=torch.int64)}, "the model expects"),
        (
            {"preserve_inputs": torch.full((4, 1, 8, 8), float("nan")), "preserve_labels": torch.zeros(4, dtype=torch.int64)},
            "NaN",
        ),
    ],
    ids=["unlabelled", "missing", "label-count", "shape", "nan"],
)
def test_a_bad_preservation_file_is_refused_before_any_work(tmp_path, tensors, message):
    path = _write(tmp_path / "p.safetensors", **tensors)
    out = tmp_path / "m.press"
    with pytest.raises(DataError, match=message):
        api.press(_handle(tiny_mlp()), MagnitudePruning(), Budget(sparsity=0.5), out=out, data="digits", preservation=path)
    assert not out.exists()


def test_a_preservation_set_is_a_safetensors_file_or_a_dataset(tmp_path):
    with pytest.raises(DataError, match="a .safetensors file holding preserve_inputs and preserve_labels"):
        load_preservation_set(tmp_path / "p.pt")
    with pytest.raises(DataError, match="got list"):
        api.press(_handle(tiny_mlp()), MagnitudePruning(), Budget(sparsity=0.5), out=tmp_path / "m.press", preservation=[1, 2])
    with pytest.raises(DataError, match="no such file"):
        load_preservation_set(tmp_path / "missing.safetensors")


def test_the_cli_reads_the_set_from_a_file_and_says_how_it_fared(critical, tmp_path):
    model = tiny_mlp()
    save_file(model.state_dict(), str(tmp_path / "mlp.safetensors"))
    inputs, labels = critical.tensors
    path = _write(tmp_path / "p.safetensors", preserve_inputs=inputs, preserve_labels=labels)
    args = ["compress", tmp_path / "mlp.safetensors", "--arch", "tests.archs:tiny_mlp", "--data", "digits", "-m", "magnitude"]
    args += ["--sparsity", "0.8", "--preservation-set", path, "-o", tmp_path / "m.press", "--report", tmp_path / "r.json"]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert "preservation set (40 examples): accuracy" in result.output
    refused = runner.invoke(
        app,
        [
            str(a)
            for a in [
                *args[:6],
                "-m",
                "self-compress",
                "--preserve",
                "10",
                "--preservation-set",
                path,
                "-o",
                tmp_path / "s.press",
            ]
        ],
    )
    assert refused.exit_code != 0 and "drop --preserve" in refused.output


def test_a_set_held_by_the_method_is_checked_and_measured_as_one_given_to_press(critical, tmp_path):
    test = load_dataset("digits", "test")
    copies = TensorDataset(test.tensors[0][:4].clone(), test.tensors[1][:4].clone())  # not the split object: copies
    out = tmp_path / "s.press"
    with pytest.raises(DataError, match="4 of the 4 preservation examples are also in the test split"):
        api.press(_handle(tiny_mlp()), replace(FAST, preservation=copies), out=out, data="digits", calib=256)
    assert not out.exists()
    report = api.press(_handle(tiny_mlp()), replace(FAST, preservation=critical), out=out, data="digits", calib=256)
    assert report["preservation"]["samples"] == 40 and report["preservation"]["in_test_split"] == 0


@pytest.mark.parametrize(
    "labels, message",
    [(torch.full((40,), 99), "preservation labels run from 99 to 99"), (torch.zeros(40), "integer class indices")],
    ids=["out-of-range", "float"],
)
def test_bad_labels_are_refused_before_any_work(critical, tmp_path, labels, message):
    bad = TensorDataset(critical.tensors[0], labels)
    out = tmp_path / "m.press"
    with pytest.raises(DataError, match=message):
        api.press(_handle(tiny_mlp()), MagnitudePruning(), Budget(sparsity=0.5), out=out, data="digits", preservation=bad)
    assert not out.exists()


def test_any_map_style_dataset_serves_and_every_point_of_a_sweep_is_measured(critical, tmp_path):
    items = Items([(x, int(y)) for x, y in zip(*critical.tensors)])
    budgets = [Budget(sparsity=0.5), Budget(sparsity=0.9)]
    reports = api.sweep(_handle(tiny_mlp()), MagnitudePruning(), budgets, out_dir=tmp_path, data="digits", preservation=items)
    assert [r["preservation"]["samples"] for r in reports] == [40, 40]
    assert all(r["preservation"]["sha256"] == dataset_sha256(critical) for r in reports)  # the same examples, in order


def test_the_cli_warns_when_the_set_shares_examples_with_the_test_split(tmp_path):
    model = tiny_mlp()
    save_file(model.state_dict(), str(tmp_path / "mlp.safetensors"))
    inputs, labels = load_dataset("digits", "test").tensors
    path = _write(tmp_path / "p.safetensors", preserve_inputs=inputs[:6], preserve_labels=labels[:6])
    args = ["compress", tmp_path / "mlp.safetensors", "--arch", "tests.archs:tiny_mlp", "--data", "digits", "-m", "uniform"]
    result = runner.invoke(app, [str(a) for a in [*args, "--preservation-set", path, "-o", tmp_path / "u.press"]])
    assert result.exit_code == 0, result.output
    assert "warning: 6 of the 6 preservation examples are also in the test split" in result.output
    sweep = [*args, "--preservation-set", path, "--out-dir", tmp_path / "sweep"]
    sweep[:1], sweep[sweep.index("-m") + 1] = ["sweep"], "magnitude"
    result = runner.invoke(app, [str(a) for a in [*sweep, "--sparsities", "0.5,0.9"]])
    assert result.exit_code == 0, result.output
    assert "your examples" in result.output and "6 of the 6 preservation examples" in result.output


def test_eval_measures_the_set_beside_the_test_split(critical, tmp_path):
    model = tiny_mlp()
    save_file(model.state_dict(), str(tmp_path / "mlp.safetensors"))
    path = _write(tmp_path / "p.safetensors", preserve_inputs=critical.tensors[0], preserve_labels=critical.tensors[1])
    args = ["eval", tmp_path / "mlp.safetensors", "--arch", "tests.archs:tiny_mlp", "--data", "digits"]
    args += ["--preservation-set", path]
    result = runner.invoke(app, [str(a) for a in [*args, "--json"]])
    assert result.exit_code == 0, result.output
    expected = {"samples": 40, "accuracy": netpress.evaluate(model, critical).accuracy, "in_test_split": 0}
    assert json.loads(result.stdout)["preservation"] == expected
    assert "your 40 preservation examples" in runner.invoke(app, [str(a) for a in args]).output


def test_a_ratio_target_sizes_the_file_with_the_sets_record(critical, tmp_path):
    out = tmp_path / "s.press"
    report = api.press(_handle(tiny_mlp()), FAST, Budget(ratio=6), out=out, data="digits", calib=256, preservation=critical)
    assert report["ratio"] >= 6 and report["preservation"]["samples"] == 40
    (record,) = netpress.inspect(out)["summary"]["methods"]
    assert record["preservation"] == {"samples": 40, "sha256": dataset_sha256(critical)}


def test_copies_of_test_images_at_half_precision_count_as_test_images(tmp_path):
    inputs, labels = load_dataset("digits", "test").tensors
    halves = TensorDataset(inputs[:5].half().float(), labels[:5])
    out = tmp_path / "m.press"
    report = api.press(_handle(tiny_mlp()), MagnitudePruning(), Budget(sparsity=0.5), out=out, data="digits", preservation=halves)
    assert report["preservation"]["in_test_split"] == 5


@pytest.mark.parametrize(
    "items, message",
    [
        ([(torch.zeros(1, 8, 8), 1)] * 4 + [(torch.full((1, 8, 8), float("nan")), 1)], "NaN"),
        ([(torch.zeros(1, 8, 8), 1), (torch.zeros(1, 8, 8), 2.7)], "integer class indices"),
        ([(torch.zeros(1, 8, 8), 1), (torch.zeros(1, 4, 4), 2)], "inputs of one shape"),
        ([(torch.zeros(1, 8, 8), 1), (torch.zeros(1, 8, 8), "shirt")], "integer label"),
    ],
    ids=["nan-later", "float-label", "ragged", "text-label"],
)
def test_every_item_of_your_own_dataset_is_checked_before_any_work(tmp_path, items, message):
    out, chain = tmp_path / "m.press", MagnitudePruning()
    with pytest.raises(DataError, match=message):
        api.press(_handle(tiny_mlp()), chain, Budget(sparsity=0.5), out=out, data="digits", preservation=Items(items))
    assert not out.exists()


def test_a_count_of_examples_beside_your_set_is_refused_and_the_record_counts_yours(critical):
    with pytest.raises(BudgetError, match="not both"):
        SelfCompression(preserve=10, preservation=critical)
    assert SelfCompression(preservation=critical).preserve == 40


def test_an_output_that_is_not_a_path_is_refused(critical):
    with pytest.raises(OutputError, match="name the .press file"):
        api.press(_handle(tiny_mlp()), MagnitudePruning(), Budget(sparsity=0.5), out=None, data="digits")
    with pytest.raises(OutputError, match="out_dir is a folder's path"):
        api.sweep(_handle(tiny_mlp()), MagnitudePruning(), [Budget(sparsity=0.5)], out_dir=None, data="digits")
