"""Cutting channels whose producers are all zero: the function stays, the layers shrink."""

import torch
from torch import nn

from netpress.graph.dead_channels import cut_dead_channels
from tests.archs import tiny_cnn, tiny_mlp


def _killed_mlp() -> nn.Module:
    model = tiny_mlp().eval()
    hidden = model[1]
    with torch.no_grad():
        hidden.weight[:6] = 0
        hidden.bias[:3] = -0.5  # after the ReLU: zero, cut as it is
        hidden.bias[3:6] = 0.7  # after the ReLU: 0.7, absorbed into the next layer's bias
    return model


def test_dead_neurons_are_cut_and_the_function_stays():
    model = _killed_mlp()
    x = torch.randn(32, 64)
    before = model(x)
    cuts = cut_dead_channels(model, x[:8])
    assert [len(cut.kept) for cut in cuts] == [26]
    assert model[1].weight.shape == (26, 64) and model[3].weight.shape == (10, 26) and model[1].out_features == 26
    assert torch.allclose(model(x), before, atol=1e-6)


def test_a_constant_a_convolution_cannot_absorb_keeps_its_channel():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1), nn.Flatten()).eval()
    with torch.no_grad():
        model[0].weight[:2] = 0
        model[0].bias[0] = -1.0  # zero after the ReLU: cut
        model[0].bias[1] = 1.0  # a constant 1 that zero padding would change at the borders: kept
    x = torch.randn(4, 1, 6, 6)
    before = model(x)
    (cut,) = cut_dead_channels(model, x)
    assert cut.kept.tolist() == [1, 2, 3]
    assert torch.allclose(model(x), before, atol=1e-6)


def test_a_batchnorm_channel_is_cut_with_its_producer_and_the_flattened_columns():
    model = tiny_cnn().eval()
    with torch.no_grad():
        model[0].weight[[1, 5]] = 0
        model[0].bias[[1, 5]] = 0
        model[1].running_mean[[1, 5]] = 0
        model[1].bias[1] = -0.3  # zero after the ReLU
        model[1].bias[5] = 0.4  # absorbed by the Linear after the flatten, 64 columns of it
    x = torch.randn(16, 1, 8, 8)
    before = model(x)
    (cut,) = cut_dead_channels(model, x[:4])
    assert len(cut.kept) == 6
    assert model[1].running_var.shape == (6,) and model[4].weight.shape == (10, 6 * 64)
    assert torch.allclose(model(x), before, atol=1e-5)


def test_a_group_keeps_one_channel_when_all_are_dead():
    model = tiny_mlp().eval()
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.fill_(-1.0)
    (cut,) = cut_dead_channels(model, torch.randn(4, 64))
    assert len(cut.kept) == 1


def test_consecutive_groups_are_cut_together():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    with torch.no_grad():
        model[0].weight[:4] = 0
        model[0].bias[:4] = -1.0
        model[2].weight[:5] = 0
        model[2].bias[:5] = 0.25
    x = torch.randn(32, 64)
    before = model(x)
    cuts = cut_dead_channels(model, x[:8])
    assert sorted(len(cut.kept) for cut in cuts) == [11, 28]
    assert [layer.weight.shape for layer in model[::2]] == [(28, 64), (11, 28), (10, 11)]
    assert torch.allclose(model(x), before, atol=1e-6)
