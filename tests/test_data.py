import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch.utils.data import TensorDataset

from netpress import api
from netpress.budget import Budget
from netpress.data import Subset, calibration_subset, check_dataset, load_dataset, sample_digests
from netpress.errors import DataError, UnsupportedModelError
from netpress.evaluate import evaluate, predict
from netpress.methods.baselines import MagnitudePruning
from netpress.methods.fcpts import FCPTS
from netpress.methods.fold import Fold
from tests.archs import Items, tiny_cnn, tiny_mlp
from tests.conftest import needs_fashion_mnist


def test_digits_split_is_disjoint_and_labelled():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert train[0][0].shape == (1, 8, 8)
    train_rows = {tuple(x.flatten().tolist()) for x, _ in train}
    assert sum(tuple(x.flatten().tolist()) in train_rows for x, _ in test) < 20  # digits has a few duplicate images


@needs_fashion_mnist
def test_fashion_mnist_shapes_and_standardisation():
    train = load_dataset("fashion-mnist", "train")
    x, y = train.tensors
    assert x.shape == (60000, 1, 28, 28) and y.shape == (60000,)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-2
    assert len(load_dataset("fashion-mnist", "test")) == 10000


def test_calibration_subset_is_seeded_and_within_the_train_split():
    train = load_dataset("digits", "train")
    a, b, c = calibration_subset(train, 100, seed=1), calibration_subset(train, 100, seed=1), calibration_subset(train, 100, 2)
    assert a.indices == b.indices != c.indices
    assert len(set(a.indices)) == 100 and max(a.indices) < len(train)
    assert a.dataset is train
    x, y = a.tensors()
    assert torch.equal(x[0], train[a.indices[0]][0]) and int(y[0]) == int(train[a.indices[0]][1])


def test_missing_dataset_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("NETPRESS_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", "test")


@pytest.mark.parametrize("damage", [b"not gzip at all", gzip.compress(bytes(100))[:30], gzip.compress(b"\x00\x00\x08\x03")])
def test_damaged_dataset_files_get_a_clear_error(monkeypatch, tmp_path, damage):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (tmp_path / name).write_bytes(damage)
    monkeypatch.setenv("NETPRESS_FASHION_MNIST", str(tmp_path))
    with pytest.raises(DataError, match="damaged|too short"):
        load_dataset("fashion-mnist", "test")


class _Refusing(torch.nn.Module):
    """A user's model whose forward raises something other than a RuntimeError."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("no")


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: load_dataset("imagenet"), "unknown dataset"),
        (lambda: load_dataset("digits", "validation"), "unknown split"),
        (lambda: check_dataset(TensorDataset(torch.zeros(0, 1, 8, 8), torch.zeros(0))), "empty"),
        (lambda: check_dataset(TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4)), (1, 8, 8)), "shape"),
        (lambda: calibration_subset(load_dataset("digits", "train"), 10**6), "only"),
        (lambda: calibration_subset(load_dataset("digits", "train"), 0), "positive"),
        (lambda: Subset(load_dataset("digits", "train"), [], 0), "one or more sample positions"),
        (lambda: Subset(load_dataset("digits", "train"), [10**6], 0), r"must lie in \[0, "),
        (lambda: Subset(load_dataset("digits", "train"), [1.5], 0), "whole numbers"),
        (lambda: predict(tiny_mlp(), torch.zeros(4, 1, 28, 28)), "cannot run on inputs of shape"),
        (lambda: predict(_Refusing(), torch.zeros(4, 1, 8, 8)), "cannot run on inputs of shape .*: ValueError: no"),
        (
            lambda: predict(tiny_cnn().double(), torch.zeros(4, 1, 8, 8)),
            r"weights are torch.float64 and the inputs torch.float32",
        ),
        (  # fold's tracing input says the same
            lambda: api.compress(tiny_cnn().double(), Fold(input_shape=(1, 8, 8)), Budget(params=0.2)),
            r"weights are torch.float64 and the inputs torch.float32",
        ),
    ],
)
def test_bad_data_gets_a_clear_error(call, message):
    with pytest.raises(DataError, match=message):
        call()


def test_a_negative_batchnorm_variance_is_blamed_on_the_model_not_the_data(tmp_path):
    model = tiny_cnn()
    with torch.no_grad():
        model[1].running_var[0] = -1.0
    with pytest.raises(UnsupportedModelError, match="1.running_var holds a negative variance"):
        api.press(model, MagnitudePruning(), Budget(sparsity=0.5), out=tmp_path / "m.press", data="digits")


def _digits_file(path, **changes):
    """digits as a user's data file, with some tensors replaced (None: left out)."""
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    tensors = {"train_inputs": train.tensors[0], "train_labels": train.tensors[1], "test_inputs": test.tensors[0]}
    tensors["test_labels"] = test.tensors[1]
    tensors.update(changes)
    save_file({k: v for k, v in tensors.items() if v is not None}, str(path))
    return str(path)


def test_a_data_file_whose_training_inputs_hold_test_inputs_is_refused_before_calibrating(tmp_path):
    test = load_dataset("digits", "test").tensors[0]
    path = _digits_file(tmp_path / "data.safetensors", train_inputs=torch.cat([test[:40], test[:40] + 1]), train_labels=None)
    with pytest.raises(DataError, match=r"of the 64 calibration samples are also in .*data.safetensors's test_inputs"):
        api.press(tiny_cnn(), FCPTS(iterations=2), Budget(sparsity=0.5), out=tmp_path / "m.press", data=path, calib=64)
    assert not (tmp_path / "m.press").exists()


def test_a_data_file_gives_back_its_splits_and_may_leave_calibration_unlabelled(tmp_path):
    path = _digits_file(tmp_path / "data.safetensors")
    for split in ("train", "test"):
        assert all(torch.equal(a, b) for a, b in zip(load_dataset(path, split).tensors, load_dataset("digits", split).tensors))
    with pytest.raises(DataError, match="test split"):
        calibration_subset(load_dataset(path, "test"), 8)
    unlabelled = load_dataset(_digits_file(tmp_path / "unlabelled.safetensors", train_labels=None), "train")
    subset = calibration_subset(unlabelled, 8)
    inputs, labels = subset.tensors()
    assert labels is None and inputs.shape == (8, 1, 8, 8)


@pytest.mark.parametrize(
    "changes, split, message",
    [
        ({"test_labels": None}, "test", "has no test_labels"),
        ({"train_inputs": None}, "train", "has no train_inputs"),
        ({"test_labels": torch.zeros(3, dtype=torch.int64)}, "test", "one per input"),
        ({"test_labels": torch.zeros(360)}, "test", "integer class indices"),
        ({"train_inputs": torch.zeros(10, 1, 8, 8, dtype=torch.int32)}, "train", "float tensor"),
        ({"train_inputs": torch.zeros(0, 1, 8, 8)}, "train", "non-empty"),
        ({"train_inputs": torch.full((10, 1, 8, 8), float("nan"))}, "train", "NaN"),
    ],
)
def test_a_bad_data_file_gets_a_clear_error(tmp_path, changes, split, message):
    with pytest.raises(DataError, match=message):
        load_dataset(_digits_file(tmp_path / "data.safetensors", **changes), split)


def test_a_missing_or_damaged_data_file_gets_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(str(tmp_path / "absent.safetensors"))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="not a readable safetensors file"):
        load_dataset(str(tmp_path / "junk.safetensors"))


def test_press_takes_a_data_file_as_a_path(tmp_path):
    import netpress
    from netpress import Budget, MagnitudePruning

    path = Path(_digits_file(tmp_path / "data.safetensors"))
    model = tiny_mlp()
    by_path = netpress.press(model, MagnitudePruning("global"), Budget(sparsity=0.5), out=tmp_path / "a.press", data=path)
    by_name = netpress.press(model, MagnitudePruning("global"), Budget(sparsity=0.5), out=tmp_path / "b.press", data="digits")
    assert by_path["accuracy_after"] == by_name["accuracy_after"] and by_path["dataset"] == str(path)


def test_press_takes_your_own_train_and_test_datasets(tmp_path):
    """A (train, test) pair of torch Datasets: calibration from the first, accuracy on the second."""
    from torch.utils.data import Dataset

    class Pairs(Dataset):  # not a TensorDataset: items built on the fly
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i], int(self.y[i])

    digits_train, digits_test = load_dataset("digits", "train"), load_dataset("digits", "test")
    train, test = Pairs(*digits_train.tensors), Pairs(*digits_test.tensors)
    model = tiny_mlp()
    report = api.press(model, FCPTS(iterations=2), Budget(sparsity=0.5), out=tmp_path / "a.press", data=(train, test), calib=32)
    by_name = api.press(model, FCPTS(iterations=2), Budget(sparsity=0.5), out=tmp_path / "b.press", data="digits", calib=32)
    assert report["accuracy_after"] == by_name["accuracy_after"] and report["dataset"] == api.OWN_DATASETS
    assert (tmp_path / "a.press").read_bytes() == (tmp_path / "b.press").read_bytes()
    for data, message in [((test, test), "same object"), ((train,), "pair"), ((train, "digits"), "pair")]:
        with pytest.raises(DataError, match=message):
            api.press(model, MagnitudePruning(), Budget(sparsity=0.5), out=tmp_path / "c.press", data=data)
    nan = digits_test.tensors[0].clone()
    nan[5] = float("nan")
    with pytest.raises(DataError, match="NaN or infinite"):  # accuracy on NaN logits would read as anything
        api.press(model, MagnitudePruning(), Budget(sparsity=0.5), out=tmp_path / "c.press", data=(train, Pairs(nan, test.y)))
    unlabelled = torch.utils.data.TensorDataset(digits_test.tensors[0])
    with pytest.raises(DataError, match="labels"):
        api.press(model, MagnitudePruning(), Budget(sparsity=0.5), out=tmp_path / "c.press", data=(train, unlabelled))
    copied = Pairs(digits_test.tensors[0].clone(), test.y)  # the test split under another name
    with pytest.raises(DataError, match="32 of the 32 calibration samples are also in your test dataset"):
        api.press(model, FCPTS(iterations=2), Budget(sparsity=0.5), out=tmp_path / "c.press", data=(copied, test), calib=32)
    wide = Pairs(torch.zeros(len(test.x), 3, 8, 8), test.y)
    with pytest.raises(DataError, match=r"training inputs have shape \(1, 8, 8\) and your test inputs \(3, 8, 8\)"):
        api.press(model, MagnitudePruning(), Budget(sparsity=0.5), out=tmp_path / "c.press", data=(train, wide))
    assert not (tmp_path / "c.press").exists()


@pytest.mark.parametrize("labels", [[1, 2.7, 3], [1.0, 2.0, 3.0], [1, "shirt", 3], [True, False, True]], ids=str)
def test_labels_that_are_not_class_indices_are_refused_not_truncated(labels):
    with pytest.raises(DataError, match="integer class indices"):
        evaluate(tiny_mlp(), Items([(torch.zeros(1, 8, 8), label) for label in labels]))


def test_integer_labels_of_any_kind_are_read_as_class_indices():
    for labels in ([1, 2, 3], [torch.tensor(1), torch.tensor(2), torch.tensor(3)], list(np.array([1, 2, 3], dtype=np.int32))):
        assert evaluate(tiny_mlp(), Items([(torch.zeros(1, 8, 8), label) for label in labels])).samples == 3


def _one_logit() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))


def test_a_model_with_one_output_is_told_to_return_a_logit_per_class():
    """Distilling one logit's softmax teaches nothing, and its top class is always 0: refused, not run in vain."""
    train = calibration_subset(load_dataset("digits", "train"), 64)
    for call in (
        lambda: api.compress(_one_logit(), FCPTS(iterations=2), Budget(sparsity=0.5), train),
        lambda: evaluate(_one_logit(), load_dataset("digits", "test")),
    ):
        with pytest.raises(UnsupportedModelError, match="one logit per sample"):
            call()


def test_sample_digests_keep_integer_inputs_apart_and_round_floats_only_when_asked():
    ids = torch.utils.data.TensorDataset(torch.tensor([[70000], [70001], [80000]]))
    assert len(set(sample_digests(ids))) == 3  # float16 would make them all inf
    near = torch.utils.data.TensorDataset(torch.tensor([[1.0], [1.0001]]))
    assert len(set(sample_digests(near))) == 1 and len(set(sample_digests(near, exact=True))) == 2
