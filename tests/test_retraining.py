"""What the methods that retrain on labelled training data share: soft weight-sharing and self-compression."""

import pytest
import torch
from torch import nn

import netpress
from netpress import MagnitudePruning, SelfCompression, SoftWeightSharing, compress
from netpress.budget import Budget
from netpress.data import Subset, calibration_subset, load_dataset
from netpress.errors import DataError
from netpress.methods.base import compressible_weights
from tests.archs import tiny_mlp

RETRAINING = [SoftWeightSharing(epochs=2, batch_size=64, tau=0.05), SelfCompression(steps=30, batch_size=64, preserve=100)]
NAMES = {"sws": "soft weight-sharing", "self-compress": "self-compression"}


@pytest.fixture(scope="module")
def train():
    return calibration_subset(load_dataset("digits", "train"), 512, seed=0)


@pytest.mark.parametrize("method", RETRAINING, ids=lambda m: m.name)
def test_a_run_is_reproducible_bit_for_bit(method, train, tmp_path):
    files = []
    for i in range(2):
        netpress.save(compress(tiny_mlp(), method, data=train), tmp_path / f"{i}.press")
        files.append((tmp_path / f"{i}.press").read_bytes())
    assert files[0] == files[1]


@pytest.mark.parametrize("method", RETRAINING, ids=lambda m: m.name)
def test_weights_an_earlier_stage_pruned_stay_zero(method, train):
    pruned = compress(tiny_mlp(), [MagnitudePruning("global"), method], Budget(sparsity=0.6), data=train)
    before = MagnitudePruning("global").apply(tiny_mlp(), budget=Budget(sparsity=0.6)).model
    after = pruned.to_module(tiny_mlp())
    for (name, w0), w1 in zip(compressible_weights(before).items(), compressible_weights(after).values()):
        assert not w1[w0 == 0].any(), name


@pytest.mark.parametrize("method", RETRAINING, ids=lambda m: m.name)
def test_without_labels_it_says_what_it_needs(method, train):
    inputs, _ = train.tensors()
    unlabelled = torch.utils.data.TensorDataset(inputs)
    with pytest.raises(DataError, match=f"{NAMES[method.name]} retrains on labelled data"):
        method.apply(tiny_mlp(), Subset(unlabelled, list(range(len(inputs))), 0))
    with pytest.raises(DataError, match="training split"):
        method.apply(tiny_mlp(), None)


@pytest.mark.parametrize("method", RETRAINING, ids=lambda m: m.name)
def test_labels_outside_the_models_classes_are_refused_before_training(method, train):
    inputs, labels = train.tensors()
    shifted = torch.utils.data.TensorDataset(inputs, labels + 5)
    with pytest.raises(DataError, match="the model has 10 classes"):
        method.apply(tiny_mlp(), Subset(shifted, list(range(len(inputs))), 0))


@pytest.mark.parametrize(
    "method", [SoftWeightSharing(epochs=1, batch_size=64), SelfCompression(steps=5, batch_size=64, preserve=0)]
)
def test_a_model_with_dropout_gives_the_same_file_for_the_same_seed(method):
    """Dropout draws from torch's global generator while these methods train: the run seeds it from the method's seed
    (and leaves the caller's state as it was)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
    data = calibration_subset(load_dataset("digits", "train"), 256)
    state = torch.random.get_rng_state()
    first = netpress.compress(model, method, data=data)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(123)
    second = netpress.compress(model, method, data=data)
    assert netpress.codec.to_bytes(first) == netpress.codec.to_bytes(second)
