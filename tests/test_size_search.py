"""A ratio target for methods without one: the setting that sizes the file is searched on the written file."""

import math
import re
from dataclasses import replace

import pytest
import torch
from torch import nn

import netpress
from netpress import api, codec, size_search
from netpress.budget import Budget
from netpress.compressed import fp32_bytes
from netpress.data import calibration_subset, load_dataset
from netpress.errors import BudgetError
from netpress.methods.baselines import KMeansQuantization, MagnitudePruning, UniformQuantization
from netpress.methods.fcpts import FCPTS
from netpress.methods.fold import Fold
from netpress.size_search import TOLERANCE


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    conv = [nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)]
    return nn.Sequential(*conv, nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10))


def _size(compressed) -> int:
    return len(codec.to_bytes(compressed))


@pytest.fixture(scope="module")
def digits():
    return calibration_subset(load_dataset("digits", "train"), 128, seed=0)


@pytest.mark.parametrize("ratio", [4, 12, 30])
def test_pruning_meets_a_ratio_with_the_least_sparsity_that_fits(ratio):
    handle = netpress.ModelHandle(_mlp(), {}, None, (1, 8, 8))
    compressed = api.compress(handle, MagnitudePruning("lamp"), Budget(ratio=ratio))
    target = fp32_bytes(handle.module) // ratio
    assert target * (1 - TOLERANCE) <= _size(compressed) <= target
    assert compressed.summary["budget"] == {"ratio": float(ratio)}
    sparsity = compressed.summary["searched"]["sparsity"]
    assert compressed.summary["sparsity"] == pytest.approx(sparsity, abs=1e-3)
    again = api.compress(handle, MagnitudePruning("lamp"), Budget(ratio=ratio))
    assert codec.to_bytes(again) == codec.to_bytes(compressed)


@pytest.mark.parametrize("quantizer", [UniformQuantization(per_channel=True), KMeansQuantization()], ids=["bits", "levels"])
def test_a_lone_quantizer_gets_the_most_bits_or_levels_that_fit(quantizer):
    handle = netpress.ModelHandle(_mlp(), {}, None, (1, 8, 8))
    budget = Budget(ratio=9)
    compressed = api.compress(handle, quantizer, budget)
    ((setting, value),) = compressed.summary["searched"].items()
    assert compressed.summary["methods"][0][setting] == value
    target = fp32_bytes(handle.module) // 9
    assert _size(compressed) <= target
    one_more = api.compress(handle, replace(quantizer, **{setting: value + 1}))
    assert _size(one_more) > target


def test_a_stage_after_pruning_keeps_its_setting_and_the_sparsity_is_searched():
    handle = netpress.ModelHandle(_mlp(), {}, None, (1, 8, 8))
    compressed = api.compress(handle, [MagnitudePruning(), UniformQuantization(4)], Budget(ratio=40))
    assert "sparsity" in compressed.summary["searched"] and compressed.summary["methods"][1]["bits"] == 4
    assert _size(compressed) <= fp32_bytes(handle.module) // 40


def test_fcpts_is_sized_by_its_stand_in_and_its_own_file_fits(digits):
    handle = netpress.ModelHandle(_mlp(), {}, "digits", (1, 8, 8))
    compressed = api.compress(handle, FCPTS(iterations=4, batch_size=32), Budget(ratio=8), digits)
    assert [m["name"] for m in compressed.summary["methods"]] == ["fcpts"]
    assert _size(compressed) <= fp32_bytes(handle.module) // 8
    assert compressed.summary["calibration"]["n"] == 128
    assert 1 <= compressed.details["search"]["full_runs"] <= 3 and compressed.details["search"]["tries"] > 1


def test_fold_meets_a_ratio_by_removing_channels_and_is_sized_without_a_repair_that_reads_samples():
    handle = netpress.ModelHandle(_cnn(), {}, None, (1, 8, 8))
    compressed = api.compress(handle, Fold(), Budget(ratio=2))
    assert 0 < compressed.summary["searched"]["params"] < 1 and compressed.details["search"]["full_runs"] == 0
    assert _size(compressed) <= fp32_bytes(handle.module) // 2
    repaired = api.compress(handle, Fold(repair="dir", dir_samples=8, dir_steps=2), Budget(ratio=2))
    assert 1 <= repaired.details["search"]["full_runs"] <= 3 and _size(repaired) <= fp32_bytes(handle.module) // 2


def test_an_unreachable_ratio_is_refused(tmp_path):
    handle = netpress.ModelHandle(_mlp(), {}, "digits", (1, 8, 8))
    with pytest.raises(BudgetError, match="no bits reaches a 500x ratio"):
        api.compress(handle, UniformQuantization(), Budget(ratio=500))
    with pytest.raises(BudgetError, match="500x ratio is out of reach"):  # a sweep, before any file
        api.sweep(handle, UniformQuantization(), [Budget(ratio=2), Budget(ratio=500)], out_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_fcpts_is_searched_no_further_than_the_1_percent_it_keeps_of_every_layer(tmp_path):
    """Refused before any work, at FCPTS's own edge, not at magnitude pruning's (which prunes all but one weight)."""
    handle = netpress.ModelHandle(_mlp(), {}, "digits", (1, 8, 8))
    assert FCPTS().most_sparsity(handle.module) == pytest.approx(1 - (82 + 82 + 7) / (64 * 128 + 128 * 64 + 64 * 10))
    with pytest.raises(BudgetError, match="out of reach for fcpts: even at sparsity 0.98") as refused:
        api.sweep(handle, FCPTS(iterations=2), [Budget(ratio=2), Budget(ratio=60)], out_dir=tmp_path / "runs", data="digits")
    assert "--sparsity" not in str(refused.value) and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", [MagnitudePruning(), Fold()], ids=["magnitude", "fold"])
def test_the_ratio_an_unreachable_one_advises_is_met_when_asked_for(method):
    handle = netpress.ModelHandle(_mlp(), {}, None, (1, 8, 8))
    with pytest.raises(BudgetError, match="ask for at most") as refused:
        api.compress(handle, method, Budget(ratio=1000))
    advised = float(re.search(r"at most ([0-9.]+)x", str(refused.value)).group(1))
    compressed = api.compress(handle, method, Budget(ratio=advised))
    assert _size(compressed) <= fp32_bytes(handle.module) // advised


def test_the_report_names_the_setting_found(tmp_path):
    handle = netpress.ModelHandle(_mlp(), {}, "digits", (1, 8, 8))
    report = api.press(handle, [MagnitudePruning(), UniformQuantization(3)], Budget(ratio=20), out=tmp_path / "m.press")
    assert report["budget"] == {"ratio": 20.0} and report["ratio"] >= 20
    assert report["searched"]["sparsity"] == pytest.approx(report["sparsity"], abs=0.02)
    assert report["search"] == {"tries": report["search"]["tries"], "full_runs": 0}
    assert isinstance(netpress.load(tmp_path / "m.press", model=_mlp()), nn.Module)


class _Sized:
    """A stand-in for a compressed model in a search: only its size matters."""

    def __init__(self, size: int) -> None:
        self.size, self.details = size, {}


class _Cheap:
    name, needs, budgets = "cheap", "none", ("sparsity",)


class _Costly:
    """A stage whose file is a little larger than its stand-in's, by a share that changes from run to run (as
    FCPTS's learned allocation does)."""

    name, needs, budgets = "costly", "calibration", ("sparsity",)

    def stand_in(self):
        return _Cheap()


def test_the_real_stage_aims_inside_the_accepted_band_so_its_run_to_run_jitter_still_fits(monkeypatch):
    monkeypatch.setattr(size_search.codec, "to_bytes", lambda sized: b"\0" * sized.size)
    excess = iter([1.04, 1.003, 1.006])  # the costly file over the stand-in's at each run

    def run(chain, budget, searched):
        stand_in = round(100_000 * (1 - budget.sparsity)) + 1_000
        return _Sized(stand_in if chain[0].name == "cheap" else round(stand_in * next(excess)))

    budget = Budget(ratio=10, reference_bytes=300_000)
    found = size_search.meet_ratio([_Costly()], budget, "sparsity", run)
    assert budget.target_bytes() * (1 - size_search.REAL_TOLERANCE) <= found.size <= budget.target_bytes()
    assert found.details["search"]["full_runs"] == 3


@pytest.mark.parametrize("target", [20_000, 6_000, 2_000, 1_500])
def test_a_stage_that_prunes_at_most_99_percent_is_searched_as_before_and_never_given_more(monkeypatch, target):
    """Values past the edge are still measured (the search takes the steps it took before), but none becomes the
    answer; where nothing up to the edge fits, the edge itself is tried, so the refusal's advice is sized on it."""
    monkeypatch.setattr(size_search.codec, "to_bytes", lambda sized: b"\0" * sized.size)
    curve = lambda value: round(100_000 * (1 - value)) + 1_000  # noqa: E731
    free, edged = (size_search._Tries(lambda v: _Sized(curve(v)), target, False, most) for most in (math.inf, 0.99))
    size_search._fraction(free, 0.0, TOLERANCE)
    size_search._fraction(edged, 0.0, TOLERANCE)
    assert list(edged.sizes)[: len(free.sizes)] == list(free.sizes)  # the same values, in the same order
    if free.best.value <= 0.99:
        assert edged.best.value == free.best.value and len(edged.sizes) == len(free.sizes)
    else:
        assert edged.best is None or edged.best.value <= 0.99
        assert list(edged.sizes)[-1] == 0.99
