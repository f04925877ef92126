"""Depthwise convolutions (MobileNetV2): every method compresses them, and the file gives back the model."""

from dataclasses import replace

import pytest
import torch

import netpress
from netpress import Budget, MagnitudePruning, api
from netpress.data import calibration_subset
from netpress.evaluate import predict
from netpress.graph.dead_channels import cut_dead_channels
from netpress.methods import FCPTS, L2, ChannelL1, Fold, SelfCompression, SoftWeightSharing
from tests.archs import tiny_mobilenet

DIGITS = (1, 8, 8)
METHODS = {
    "magnitude": (MagnitudePruning(), Budget(sparsity=0.7)),
    "fcpts": (FCPTS(iterations=10, batch_size=32), Budget(sparsity=0.7)),
    "l2": (L2(rounds=1, transform_steps=10, reconstruction_steps=10, batch_size=32), Budget(ratio=3)),
    "soft-sharing": (SoftWeightSharing(epochs=1, batch_size=64, tau=0.05), None),
    "self-compress": (SelfCompression(steps=20, batch_size=64, preserve=50), None),
    "fold": (Fold(repair="ar", input_shape=DIGITS), Budget(params=0.3)),
    "channel-l1": (ChannelL1(repair="data", input_shape=DIGITS), Budget(params=0.3)),
}


@pytest.fixture(scope="module")
def train():
    return calibration_subset(api.resolve_dataset("digits", "train", DIGITS), 256, seed=0)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_writes_a_mobilenet_that_loads_back_exactly(name, train, tmp_path):
    method, budget = METHODS[name]
    compressed = netpress.compress(tiny_mobilenet(), method, budget, data=train)
    path = tmp_path / f"{name}.press"
    netpress.save(compressed, path)
    loaded = netpress.load(path, model=tiny_mobilenet())
    inputs = train.tensors()[0]
    assert torch.equal(predict(loaded, inputs), predict(compressed.to_module(tiny_mobilenet()), inputs))
    if name in ("fold", "channel-l1"):
        depthwise = [m for m in loaded.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
        assert depthwise and all(m.groups == m.in_channels == m.out_channels < 16 for m in depthwise)


def test_a_dead_channel_through_a_depthwise_conv_is_cut_and_the_function_stays():
    model = tiny_mobilenet().eval()
    block = model[3].conv  # expansion 0-1, depthwise 3-4, projection 6
    with torch.no_grad():
        block[0].weight[[2, 9]] = 0
        block[3].weight[[2, 9]] = 0
        block[4].bias[[2, 9]] = -1.0  # BN after the depthwise: zero after the ReLU6
        block[4].running_mean[[2, 9]] = 0
    x = torch.randn(16, *DIGITS)
    before = model(x)
    cuts = cut_dead_channels(model, x[:4])
    assert [len(c.kept) for c in cuts] == [14]
    assert (block[3].groups, block[3].out_channels, tuple(block[6].weight.shape)) == (14, 14, (8, 14, 1, 1))
    torch.testing.assert_close(model(x), before, rtol=1e-5, atol=1e-5)


def test_a_fold_file_of_a_mobilenet_states_its_narrower_depthwise_layers(train, tmp_path):
    compressed = netpress.compress(tiny_mobilenet(), replace(METHODS["fold"][0], repair="none"), Budget(params=0.4))
    netpress.save(compressed, tmp_path / "f.press")
    loaded = netpress.load(tmp_path / "f.press", model=tiny_mobilenet())
    assert sum(p.numel() for p in loaded.parameters()) <= 0.6 * sum(p.numel() for p in tiny_mobilenet().parameters())
