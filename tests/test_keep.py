"""Layers the caller keeps: left out of every weight stage's pruning and coding, stored as floats, named in the
report. Data-free stages leave them exactly as they were; methods that tune weights tune them as they tune biases."""

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import netpress
from netpress import api, codec
from netpress.budget import Budget
from netpress.cli import app
from netpress.data import calibration_subset, load_dataset
from netpress.errors import BudgetError
from netpress.methods.base import KEPT
from netpress.methods.baselines import MagnitudePruning, UniformQuantization
from netpress.methods.fcpts import FCPTS
from netpress.methods.fold import Fold
from netpress.methods.l2 import L2
from tests.archs import tiny_cnn, tiny_mlp


def _handle(model):
    return netpress.ModelHandle(model, {}, "digits", (1, 8, 8))


@pytest.mark.parametrize(
    "methods",
    [[MagnitudePruning("lamp")], [MagnitudePruning(), UniformQuantization(4)], [UniformQuantization(3, per_channel=True)]],
    ids=["magnitude", "magnitude+4bit", "uniform"],
)
def test_kept_layers_come_back_exactly_and_the_target_counts_the_others(methods, tmp_path):
    model = tiny_cnn()
    budget = Budget(sparsity=0.8) if isinstance(methods[0], MagnitudePruning) else None
    compressed = api.compress(_handle(model), methods, budget, keep=["0"])
    assert compressed.summary["kept"] == ["0"]
    assert not any(hasattr(m, KEPT) for m in model.modules())  # the caller's model as it was
    netpress.save(compressed, tmp_path / "k.press")
    loaded = netpress.load(tmp_path / "k.press", model=tiny_cnn())
    assert torch.equal(loaded[0].weight, model[0].weight)
    if budget is not None:
        assert float((loaded[4].weight == 0).float().mean()) == pytest.approx(0.8, abs=1 / loaded[4].weight.numel())
    assert not torch.equal(loaded[4].weight, model[4].weight)


def test_keep_takes_patterns_and_works_with_methods_that_need_data():
    model = tiny_mlp()
    calib = calibration_subset(load_dataset("digits", "train"), 64, seed=0)
    compressed = api.compress(_handle(model), FCPTS(iterations=2), Budget(sparsity=0.5), calib, keep="*3")
    assert compressed.summary["kept"] == ["3"]
    stored = compressed.tensors["3.weight"]  # a float tensor, not pruned (FCPTS tunes it, as it tunes the biases)
    assert isinstance(stored, torch.Tensor) and bool((stored != 0).all())
    assert float((compressed.tensors["1.weight"].dequantize() == 0).float().mean()) == pytest.approx(0.5, abs=1e-3)
    l2 = api.compress(_handle(model), L2(rounds=1, transform_steps=2, reconstruction_steps=2), Budget(ratio=2), calib, keep=["1"])
    assert isinstance(l2.tensors["1.weight"], torch.Tensor) and l2.summary["kept"] == ["1"]
    assert len(codec.to_bytes(l2)) <= Budget(ratio=2, reference_bytes=netpress.compressed.fp32_bytes(model)).target_bytes()


@pytest.mark.parametrize(
    "keep, methods, message",
    [
        (["fc9"], [MagnitudePruning()], "names no compressible layer or its weight; the layers are 1, 3"),
        (["*"], [MagnitudePruning()], "every compressible layer"),
        ([3], [MagnitudePruning()], "strings"),
        (["1"], [Fold()], "fold changes the widths"),
    ],
)
def test_keep_refuses_what_it_cannot_do(keep, methods, message):
    model = tiny_mlp()
    budget = Budget(params=0.2) if isinstance(methods[0], Fold) else Budget(sparsity=0.5)
    with pytest.raises(BudgetError, match=message):
        api.compress(_handle(model), methods, budget, keep=keep)
    assert not any(hasattr(m, KEPT) for m in model.modules())


def test_the_cli_keeps_and_says_so(tmp_path):
    torch.save(tiny_mlp().state_dict(), tmp_path / "mlp.pt")
    args = [tmp_path / "mlp.pt", "--arch", "tests.archs:tiny_mlp", "-m", "magnitude", "--sparsity", "0.7", "--data", "digits"]
    result = CliRunner().invoke(app, [str(a) for a in ["compress", *args, "--keep", "3", "-o", tmp_path / "k.press"]])
    assert result.exit_code == 0, result.output
    assert "kept uncompressed, by request: 3" in result.output


def test_keep_takes_any_collection_of_names():
    compressed = api.compress(_handle(tiny_mlp()), UniformQuantization(4), keep={"3"})
    assert compressed.summary["kept"] == ["3"]
    with pytest.raises(BudgetError, match="keep takes layer names"):
        api.compress(_handle(tiny_mlp()), UniformQuantization(4), keep=[3])


def test_keep_that_leaves_only_the_ties_of_kept_weights_is_refused_as_keeping_everything():
    torch.manual_seed(0)

    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.fc, self.out = nn.Embedding(10, 16), nn.Linear(16, 16), nn.Linear(16, 10, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.fc(self.emb(x)))

    for keep in (["emb", "fc"], ["out.weight", "fc"]):
        with pytest.raises(BudgetError, match="keep names every compressible layer"):
            netpress.compress(Tied(), UniformQuantization(8), keep=keep)
