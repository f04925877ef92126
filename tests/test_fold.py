"""Channel groups, folding, channel-l1 and the repairs, on tiny models (randomly initialised)."""

import warnings

import numpy as np
import pytest
import torch
import torch_pruning
from safetensors.torch import save_file
from scipy.cluster.hierarchy import linkage
from torch import nn
from torch.nn import functional as F

import netpress
from netpress.budget import Budget
from netpress.errors import BudgetError, DataError, ModelSourceError, UnsupportedModelError
from netpress.graph.groups import ParamCounter, channel_groups
from netpress.methods import fold as fold_module
from netpress.methods.fold import ChannelL1, Fold
from netpress.zoo.models import VGG, LeNet5, MobileNetV2, ResNet20
from tests.archs import tiny_cnn, tiny_mlp, tiny_mobilenet


class Block18(nn.Module):
    """torchvision's ResNet-18 BasicBlock: conv-bn-relu-conv-bn, downsample = 1x1 conv + bn."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet18(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(Block18(8, 8), Block18(8, 8))
        self.layer2 = nn.Sequential(Block18(8, 16, 2), Block18(16, 16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(F.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so standardisation and merging are really exercised."""
    generator = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model.eval()


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _tiny_llama(tied: bool = False) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        tie_word_embeddings=tied,
    )
    return transformers.LlamaForCausalLM(config).eval()


IMAGE = (1, 28, 28)
ARCHS = {
    "mlp": (_mlp, IMAGE, "float32"),
    "lenet5": (LeNet5, IMAGE, "float32"),
    "resnet20": (ResNet20, IMAGE, "float32"),
    "vgg": (VGG, IMAGE, "float32"),
    "resnet18-block": (TinyResNet18, IMAGE, "float32"),
    "mobilenetv2": (MobileNetV2, IMAGE, "float32"),
    "llama": (_tiny_llama, (8,), "int64"),
    "llama-tied-embeddings": (lambda: _tiny_llama(tied=True), (8,), "int64"),  # fold resizes a shared weight once
}


def _inputs(shape: tuple[int, ...], dtype: str) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    if dtype == "int64":
        return torch.randint(0, 100, (2, *shape), generator=generator)
    return torch.randn((4, *shape), generator=generator)


def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out if isinstance(out, torch.Tensor) else out.logits


def test_a_pruned_press_file_is_not_folded_in_a_later_run(tmp_path):
    """Fold after pruning would average zeros into dense channels: refused across runs as within one call."""
    path = tmp_path / "pruned.press"
    netpress.save(netpress.compress(netpress.load_model("zoo:lenet300"), netpress.MagnitudePruning(), Budget(sparsity=0.5)), path)
    pruned = netpress.load_model(path)
    with pytest.raises(BudgetError, match=r"already pruned or quantized \(magnitude\); fold"):
        netpress.compress(pruned, Fold(repair="none"), Budget(params=0.2))
    netpress.compress(pruned, netpress.UniformQuantization(6))  # a weight stage after a weight stage stays allowed


@pytest.mark.parametrize("arch", list(ARCHS))
def test_fold_runs_saves_and_loads(arch, tmp_path):
    factory, shape, dtype = ARCHS[arch]
    torch.manual_seed(0)
    model = _randomise_norms(factory())
    x = _inputs(shape, dtype)
    has_norms = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    method = Fold(repair="ar" if has_norms else "none", input_shape=shape, input_dtype=dtype)
    result = method.apply(model, budget=Budget(params=0.2))
    folded = [r for r in result.rows if r.get("folded")]
    assert folded, "no group was folded"
    assert all(r["channels_after"] < r["channels"] for r in folded)
    assert result.rows[-1]["params_removed"] >= 0.2
    out = _logits(result.model, x)
    assert out.shape == _logits(model, x).shape and torch.isfinite(out).all()
    # The file rebuilds the same smaller model, and a second seeded run gives the same weights.
    path = tmp_path / f"{arch}.press"
    netpress.save(netpress.compress(model, method, Budget(params=0.2)), path)
    loaded = netpress.load(path, model=model)
    torch.testing.assert_close(_logits(loaded, x), out, rtol=0, atol=0)


def test_groups_of_resnet18_block_tie_the_residual_stream():
    groups = {g.name: g for g in channel_groups(TinyResNet18(), torch.zeros(1, *IMAGE))}
    stream = groups["conv1"]
    assert stream.reason is None
    producers = {m.module for m in stream.by_role("producer")}
    consumers = {m.module for m in stream.by_role("consumer")}
    assert {"conv1", "layer1.0.conv2", "layer1.1.conv2"} <= producers
    assert {"layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.downsample.0"} <= consumers
    stage2 = groups["layer2.0.conv2"] if "layer2.0.conv2" in groups else groups["layer2.0.downsample.0"]
    assert {"layer2.0.downsample.0", "layer2.0.conv2", "layer2.1.conv2"} <= {m.module for m in stage2.by_role("producer")}
    assert "fc" in {m.module for m in stage2.by_role("consumer")}
    assert groups["fc"].reason == "its channels are outputs of the model"


def test_lenet5_flatten_maps_a_channel_to_columns():
    groups = {g.name: g for g in channel_groups(LeNet5(), torch.zeros(1, *IMAGE))}
    (fc1,) = [m for m in groups["conv2"].members if m.module == "fc1"]
    assert (fc1.role, fc1.expand) == ("consumer", 16)


def test_merging_identical_channels_with_ar_keeps_the_function():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    _randomise_norms(model)
    with torch.no_grad():
        conv, norm, linear = model[0], model[1], model[4]
        for tensor in (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var):
            tensor[1] = tensor[0]
        columns = linear.weight.view(3, 4, 16)
        columns[:, 1] = columns[:, 0]
    x = torch.randn(8, 1, 4, 4)
    one_channel = (9 + 1 + 2 + 3 * 16) / sum(p.numel() for p in model.parameters())
    result = Fold(repair="ar", input_shape=(1, 4, 4)).apply(model, budget=Budget(params=one_channel))
    assert result.model[0].out_channels == 3
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


def test_merging_identical_channels_through_a_depthwise_conv_keeps_the_function():
    """Expansion → BN → depthwise → BN → projection: equal channels in every layer of the group merge exactly."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.ReLU6(), nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.BatchNorm2d(4),
        nn.ReLU6(), nn.Conv2d(4, 3, 1), nn.Flatten(), nn.Linear(3 * 4 * 4, 2),
    )  # fmt: skip
    _randomise_norms(model)
    with torch.no_grad():
        for layer in model[:5]:
            for tensor in layer.parameters():
                tensor[1] = tensor[0]
            for tensor in layer.buffers():
                if tensor.dim():
                    tensor[1] = tensor[0]
        model[6].weight[:, 1] = model[6].weight[:, 0]
    x = torch.randn(8, 1, 4, 4)
    result = Fold(repair="ar", input_shape=(1, 4, 4)).apply(model, budget=Budget(params=0.05))
    depthwise = result.model[3]
    assert (depthwise.groups, depthwise.in_channels, depthwise.out_channels) == (3, 3, 3)
    assert depthwise.weight.shape == (3, 1, 3, 3)
    torch.testing.assert_close(result.model(x), model(x), rtol=1e-5, atol=1e-5)


def test_groups_hold_a_depthwise_conv_as_a_producer_of_its_channels():
    model = MobileNetV2()
    groups = {g.name: g for g in channel_groups(model, torch.zeros(1, *IMAGE))}
    hidden = next(g for g in groups.values() if any(m.module == "features.2.conv.3" for m in g.members))
    roles = {m.module: m.role for m in hidden.members}
    assert roles == {
        "features.2.conv.0": "producer", "features.2.conv.1": "norm", "features.2.conv.3": "producer",
        "features.2.conv.4": "norm", "features.2.conv.6": "consumer",
    }  # fmt: skip
    assert hidden.reason is None and hidden.channels == 64


@pytest.mark.parametrize("target", [0.1, 0.35, 0.6])
@pytest.mark.parametrize("allocation", ["uniform", "adaptive"])
def test_param_budget_is_met_within_one_channel_per_group(target, allocation):
    torch.manual_seed(0)
    model = _randomise_norms(ResNet20())
    result = ChannelL1(repair="none", allocation=allocation, input_shape=IMAGE).apply(model, budget=Budget(params=target))
    before = sum(p.numel() for p in model.parameters())
    after = sum(p.numel() for p in result.model.parameters())
    assert result.rows[-1]["params_after"] == after
    assert after <= before - round(target * before)
    groups = [g for g in channel_groups(model, torch.zeros(1, *IMAGE)) if g.reason is None]
    count = ParamCounter(model, groups)
    sizes = [g.channels for g in groups]
    one_channel = [count(sizes) - count([n - (i == g) for i, n in enumerate(sizes)]) for g in range(len(sizes))]
    assert before - round(target * before) - after <= sum(one_channel)


def test_unsupported_layers_are_named():
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(8, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 28 * 28, 10),
    )
    rows = Fold(repair="none", input_shape=IMAGE).apply(model, budget=Budget(params=0.1)).rows
    reasons = [r["reason"] for r in rows if "reason" in r]
    grouped = "a grouped Conv2d (groups=2, 8 in, 8 out) is not supported; plain and depthwise"
    assert [r.startswith(grouped) or r.startswith("2: " + grouped) for r in reasons].count(True) == 2  # its in and out
    assert "its channels are outputs of the model" in reasons and len(reasons) == 3
    assert any(r.get("folded") and r["producers"] == ["4"] for r in rows)


@pytest.mark.parametrize("repair", ["ar", "dir", "data"])
def test_a_repair_on_a_model_without_batchnorm_is_refused(repair):
    with pytest.raises(UnsupportedModelError, match="no BatchNorm layer"):
        Fold(repair=repair, input_shape=IMAGE).apply(_mlp(), budget=Budget(params=0.2))


def test_data_repair_needs_calibration_and_dir_runs():
    assert Fold(repair="data").needs == "calibration" and ChannelL1(repair="dir").needs == "none"
    torch.manual_seed(0)
    model = _randomise_norms(VGG(widths=(8, 8, 8)))
    result = ChannelL1(repair="dir", input_shape=IMAGE, dir_samples=16, dir_steps=3).apply(model, budget=Budget(params=0.3))
    norm = result.model.features[1]
    assert norm.running_var.shape == (norm.num_features,) and torch.isfinite(result.model(torch.randn(2, *IMAGE))).all()


def test_ward_clustering_and_pruning_share_the_same_budget():
    """Ward and k-means give the same shapes; prune_fraction=1 drops channels exactly like channel-l1 under the
    same allocation."""
    torch.manual_seed(0)
    model = _randomise_norms(ResNet20())
    budget = Budget(params=0.3)
    shapes = {}
    for label, method in {
        "kmeans": Fold(repair="none", input_shape=IMAGE, clustering="kmeans"),
        "ward": Fold(repair="none", input_shape=IMAGE),
        "hybrid": Fold(repair="none", input_shape=IMAGE, clustering="ward", prune_fraction=0.5),
    }.items():
        folded = method.apply(model, budget=budget).model
        shapes[label] = {k: v.shape for k, v in folded.state_dict().items()}
        assert torch.isfinite(folded(torch.randn(2, *IMAGE))).all()
    assert shapes["kmeans"] == shapes["ward"] == shapes["hybrid"]
    dropping = Fold(repair="none", input_shape=IMAGE, clustering="ward", prune_fraction=1.0, allocation="uniform")
    dropped = dropping.apply(model, budget=budget)
    pruned = ChannelL1(repair="none", input_shape=IMAGE).apply(model, budget=budget)
    for key, value in pruned.model.state_dict().items():
        torch.testing.assert_close(dropped.model.state_dict()[key], value)


def test_ward_linkage_from_matrix_products_is_scipys():
    """The distances from |a|² + |b|² − 2a·b, built in blocks of rows, give scipy's own Ward tree (equal rows too)."""
    torch.manual_seed(0)
    features = torch.randn(300, 40, dtype=torch.float64) * torch.linspace(0.1, 3, 40)
    features[7] = features[3]
    ours = fold_module.ward_linkage(features)
    theirs = linkage(features.numpy(), "ward")
    np.testing.assert_array_equal(ours[:, [0, 1, 3]], theirs[:, [0, 1, 3]])
    np.testing.assert_allclose(ours[:, 2], theirs[:, 2], rtol=1e-9, atol=1e-12)


def test_ward_linkage_blocks_do_not_change_the_tree(monkeypatch):
    features = torch.randn(50, 8, dtype=torch.float64)
    whole = fold_module.ward_linkage(features)
    monkeypatch.setattr(fold_module, "WARD_BLOCK", 7)
    blocked = fold_module.ward_linkage(features)
    np.testing.assert_array_equal(blocked[:, [0, 1, 3]], whole[:, [0, 1, 3]])
    np.testing.assert_allclose(blocked[:, 2], whole[:, 2], rtol=1e-12)


@pytest.mark.parametrize("clustering", ["kmeans", "ward"])
def test_equal_channels_still_fold_to_the_budget(clustering):
    """All-zero (so all-equal) channels: k-means finds fewer clusters than asked, which removed more than
    the target; now equal channels share clusters and, under the uniform allocation, the shapes match those of a
    random model (the adaptive one sizes groups by their merge costs, which differ)."""
    torch.manual_seed(0)
    model = ResNet20()
    zeros = ResNet20()
    with torch.no_grad():
        for p in zeros.parameters():
            p.zero_()
    fold = Fold(repair="none", input_shape=IMAGE, clustering=clustering, allocation="uniform")
    budget = Budget(params=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning from k-means on equal rows
        shapes = [{k: v.shape for k, v in fold.apply(m, budget=budget).model.state_dict().items()} for m in (model, zeros)]
    assert shapes[0] == shapes[1]


def test_fold_options_are_validated():
    with pytest.raises(netpress.errors.BudgetError, match="clustering"):
        Fold(clustering="spectral")
    with pytest.raises(netpress.errors.BudgetError, match="prune_fraction"):
        Fold(prune_fraction=1.5)


def test_auto_repair_runs_ar_on_a_model_with_batchnorm_and_none_without():
    """auto is ar where there are BatchNorm statistics and none elsewhere, with no refusal for a model without
    BatchNorm; the last report row says which ran, and ar's result is that of asking for ar."""
    torch.manual_seed(0)
    model, budget = _randomise_norms(ResNet20()), Budget(params=0.3)
    ran = {}
    for label, method, net in (
        ("adaptive", Fold(input_shape=IMAGE), model),
        ("uniform", Fold(input_shape=IMAGE, allocation="uniform"), model),
        ("no batchnorm", Fold(input_shape=(784,)), _mlp()),
    ):
        result = method.apply(net, budget=budget)
        ran[label] = result.rows[-1]["repair"]
        if label == "adaptive":
            asked = Fold(input_shape=IMAGE, repair="ar").apply(net, budget=budget)
            for key, value in asked.model.state_dict().items():
                torch.testing.assert_close(result.model.state_dict()[key], value, rtol=0, atol=0)
    assert ran == {"adaptive": "ar", "uniform": "ar", "no batchnorm": "none"}
    assert Fold().repair == "auto" and ChannelL1().repair == "none"
    with pytest.raises(BudgetError, match="channel-l1 merges none"):
        ChannelL1(repair="auto")


def test_a_ratio_search_sizes_with_a_stand_in_only_for_repairs_that_read_samples():
    """ar (and auto, at most ar) cost next to nothing beside the fold; dir and data are dropped while sizing."""
    for repair in ("auto", "none", "ar"):
        assert Fold(repair=repair).stand_in() == Fold(repair=repair)
    for repair in ("dir", "data"):
        assert Fold(repair=repair).stand_in() == Fold(repair="none")
        assert ChannelL1(repair=repair).stand_in() == ChannelL1()


class _Recurrent(nn.Module):
    def __init__(self, attention: bool) -> None:
        super().__init__()
        self.attention = attention
        self.inp = nn.Linear(28, 16)
        self.mix = nn.MultiheadAttention(16, 2, batch_first=True) if attention else nn.LSTM(16, 16, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.reshape(x.shape[0], 28, 28))
        h = self.mix(h, h, h)[0] if self.attention else self.mix(h)[0]
        return self.fc(h.mean(1))


@pytest.mark.parametrize("attention", [False, True])
def test_a_model_fold_cannot_change_names_the_layers_it_leaves_alone(attention):
    torch.manual_seed(0)
    kind = "MultiheadAttention" if attention else "LSTM"
    with pytest.raises(UnsupportedModelError, match=f"Linear and Conv layers only, not mix \\({kind}\\)") as error:
        Fold(input_shape=IMAGE).apply(_Recurrent(attention), budget=Budget(params=0.2))
    assert "not reached by tracing" not in str(error.value)  # the attention block's own projections are not "unused"


class _IntoBidirectional(nn.Module):
    """A Linear feeding a bidirectional GRU: Torch-Pruning cannot follow its channels into it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.rnn = nn.Linear(28, 16), nn.GRU(16, 12, batch_first=True, bidirectional=True)
        self.mid, self.fc = nn.Linear(24, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.rnn(torch.relu(self.inp(x.reshape(x.shape[0], 28, 28))))[0][:, -1]
        return self.fc(torch.relu(self.mid(h)))


def test_channels_the_tracing_cannot_follow_into_a_layer_are_left_alone_with_the_reason():
    model = _IntoBidirectional().eval()
    result = Fold(input_shape=IMAGE).apply(model, budget=Budget(params=0.05))
    rows = {r["group"]: r for r in result.rows if "group" in r}
    assert rows["inp"]["folded"] is False and "cannot follow its channels" in rows["inp"]["reason"]
    assert rows["mid"]["folded"] is True
    for name, weight in model.rnn.named_parameters():
        assert torch.equal(getattr(result.model.rnn, name), weight)


class _Reused(nn.Module):
    """fc1 runs twice, fed its own output: its input and output channels are one axis."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(64, 64), nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x):
        return self.out(torch.relu(self.fc2(torch.relu(self.fc1(torch.relu(self.fc1(x.flatten(1))))))))


class _ChannelMask(nn.Module):
    """A buffer sized by fc1's channels, which tracing does not see."""

    def __init__(self):
        super().__init__()
        self.fc1, self.out = nn.Linear(64, 48), nn.Linear(48, 10)
        self.register_buffer("mask", torch.ones(48))

    def forward(self, x):
        return self.out(torch.relu(self.fc1(x.flatten(1))) * self.mask)


class _DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.out = nn.Linear(64, 48), nn.Linear(48, 10)

    def forward(self, x):
        return {"logits": self.out(torch.relu(self.fc1(x.flatten(1))))}


def test_a_reused_layer_is_left_alone_and_the_rest_folds():
    rows = Fold(input_shape=(1, 8, 8)).apply(_Reused(), budget=Budget(params=0.1)).rows
    reused = next(r for r in rows if r["group"] == "fc1")
    assert not reused["folded"] and reused["reason"] == "it runs more than once per forward pass (a reused layer is not folded)"
    assert any(r.get("folded") and r["producers"] == ["fc2"] for r in rows)


def test_a_model_that_no_longer_runs_after_folding_is_refused():
    with pytest.raises(UnsupportedModelError, match=r"after fold \(fc1 48→\d+ channels\) the model no longer runs.*buffer"):
        Fold(input_shape=(1, 8, 8)).apply(_ChannelMask(), budget=Budget(params=0.3))


def test_a_dict_output_is_refused_in_one_line():
    with pytest.raises(UnsupportedModelError, match="returns a dict"):
        channel_groups(_DictOut(), torch.zeros(1, 1, 8, 8))


def test_press_traces_a_user_model_with_a_sample_of_its_dataset(tmp_path):
    report = netpress.press(_Reused(), Fold(), Budget(params=0.1), out=tmp_path / "f.press", data="digits")
    assert report["params_after"] < report["params_before"]


def test_a_user_model_that_cannot_take_the_data_is_refused_in_one_line(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 10))
    with pytest.raises(DataError, match=r"cannot run on inputs of shape \(1, 8, 8\)"):
        netpress.press(model, Fold(), Budget(params=0.1), out=tmp_path / "f.press", data="digits")


class _AuxHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.aux = nn.Linear(64, 32), nn.Linear(32, 10), nn.Linear(32, 10)

    def forward(self, x):
        z = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(z), self.aux(z)


def test_a_frozen_layer_is_traced_like_a_trainable_one():
    frozen = _Reused()
    frozen.fc2.requires_grad_(False)
    assert [(g.name, g.reason) for g in channel_groups(frozen, torch.zeros(1, 1, 8, 8))] == [
        (g.name, g.reason) for g in channel_groups(_Reused(), torch.zeros(1, 1, 8, 8))
    ]


def test_every_output_of_a_tuple_is_traced():
    result = Fold(input_shape=(1, 8, 8)).apply(_AuxHead(), budget=Budget(params=0.3))
    logits, aux = result.model(torch.zeros(2, 1, 8, 8))
    assert logits.shape == aux.shape == (2, 10) and any(r.get("folded") and r["producers"] == ["fc1"] for r in result.rows)


def test_channel_l1_refuses_the_ar_repair_it_would_ignore():
    with pytest.raises(BudgetError, match="channel-l1 merges none"):
        ChannelL1(repair="ar")


class _ZeroSkips(nn.Module):
    """fc2 runs only on a non-zero input without negative values (an image), so neither the zeros tracing runs nor the
    random input of the layout check reaches it."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(64, 24), nn.Linear(24, 24), nn.Linear(24, 10)

    def forward(self, x):
        h = torch.relu(self.fc1(x.flatten(1)))
        if x.sum() > 0 and x.min() >= 0:
            h = torch.relu(self.fc2(h))
        return self.out(h)


def test_press_blames_the_compression_when_the_compressed_model_fails_on_the_data(tmp_path):
    with pytest.raises(UnsupportedModelError, match="compressed model does not run on digits, which the original runs on"):
        netpress.press(_ZeroSkips(), Fold(), Budget(params=0.2), out=tmp_path / "f.press", data="digits")
    assert not list(tmp_path.iterdir())


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_an_empty_layer_is_named_not_a_crash():
    class WithEmpty(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.z, self.fc2 = nn.Linear(16, 32), nn.Linear(16, 0), nn.Linear(32, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(torch.cat([torch.relu(self.fc1(x)), self.z(x)], 1))

    for method in (Fold(input_shape=(16,)), ChannelL1(input_shape=(16,))):
        with pytest.raises(UnsupportedModelError, match="z.weight has no elements"):
            netpress.compress(WithEmpty(), method, Budget(params=0.2))


def test_weights_saved_from_a_folded_model_point_to_its_press_file_and_other_mismatches_do_not(tmp_path):
    handle = netpress.ModelHandle(tiny_cnn(), {}, "digits", (1, 8, 8))
    netpress.save(netpress.compress(handle, Fold(repair="none"), Budget(params=0.3)), tmp_path / "f.press")
    save_file(netpress.load(tmp_path / "f.press", model=tiny_cnn()).state_dict(), str(tmp_path / "narrow.safetensors"))
    with pytest.raises(ModelSourceError, match="load the .press file instead"):
        netpress.load_model(tmp_path / "narrow.safetensors", arch="tests.archs:tiny_cnn")
    save_file(tiny_mlp().state_dict(), str(tmp_path / "mlp.safetensors"))
    with pytest.raises(ModelSourceError, match="do not fit") as refused:
        netpress.load_model(tmp_path / "mlp.safetensors", arch="tests.archs:tiny_cnn")
    assert "decompress" not in str(refused.value)
    wider = {**tiny_mlp().state_dict(), "1.weight": torch.zeros(32, 65)}  # one tensor of the wrong shape: named
    save_file(wider, str(tmp_path / "wider.safetensors"))
    with pytest.raises(ModelSourceError, match=r"1.weight has shape \(32, 65\), where tests.archs:tiny_mlp builds \(32, 64\)$"):
        netpress.load_model(tmp_path / "wider.safetensors", arch="tests.archs:tiny_mlp")


def test_deep_inversion_keeps_each_samples_target_class(monkeypatch):
    """DeepInversion fixes one target class per synthetic image; a new draw every step would only add noise."""
    import netpress.methods.fold as fold_module

    seen = []
    cross_entropy = F.cross_entropy

    def recording(out, labels):
        seen.append(labels.clone())
        return cross_entropy(out, labels)

    monkeypatch.setattr(fold_module.F, "cross_entropy", recording)
    samples = fold_module.deep_inversion(tiny_cnn(), (1, 8, 8), samples=16, steps=5, seed=0)
    assert samples.shape == (16, 1, 8, 8) and len(seen) == 5
    assert all(torch.equal(labels, seen[0]) for labels in seen) and seen[0].unique().numel() > 1


class _ChannelsLast(nn.Module):
    """A flatten after a permute: each channel's columns of fc are interleaved, not one block."""

    def __init__(self):
        super().__init__()
        self.c1, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.c1(x)).permute(0, 2, 3, 1).reshape(x.shape[0], -1))


class _Shuffle(nn.Module):
    """ShuffleNet's channel shuffle, written with -1: c2 reads c1's channels in another order."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x):
        h = torch.relu(self.c1(x))
        b, c, height, width = h.shape
        h = h.view(b, 4, -1, height, width).transpose(1, 2).reshape(b, -1, height, width)
        return self.fc(torch.relu(self.c2(h)).mean((2, 3)))


@pytest.mark.parametrize("model, group", [(_ChannelsLast, "c1"), (_Shuffle, "c1")])
def test_channels_that_reach_their_consumer_rearranged_are_not_folded(model, group):
    """Torch-Pruning maps a flatten channel by channel; folding through a permute or shuffle would merge the wrong
    columns without an error, so such a group is left alone with its reason."""
    torch.manual_seed(0)
    reasons = {g.name: g.reason for g in channel_groups(model(), torch.zeros(1, 1, 8, 8))}
    assert "do not reach their consumers as traced" in reasons[group]
    assert all("as traced" not in (g.reason or "") for g in channel_groups(ResNet20(), torch.zeros(1, 1, 28, 28)))


def test_a_layer_the_tracing_input_never_reached_is_warned_about():
    with pytest.warns(netpress.NetpressWarning, match="fc2: not reached by tracing with inputs of shape"):
        Fold(input_shape=(1, 8, 8)).apply(_ZeroSkips(), budget=Budget(params=0.2))


def test_a_tracing_failure_names_the_operation_torch_pruning_failed_at(monkeypatch):
    """Torch-Pruning's own error (a division by zero in its reshape analysis, as on torchvision's ShuffleNetV2)
    names nothing of the model: the refusal says which kind of operation it was following."""
    scope: dict = {}
    fake = "def update_reshape_index_mapping(*args, **kwargs):\n    return 1 // 0\n"
    exec(compile(fake, "/site-packages/torch_pruning/dependency/index_mapping.py", "exec"), scope)
    monkeypatch.setattr(torch_pruning.DependencyGraph, "build_dependency", scope["update_reshape_index_mapping"])
    with pytest.raises(UnsupportedModelError, match="forward pass at a reshape or view of the channel axis .*ZeroDivision"):
        channel_groups(tiny_cnn(), torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize(
    ("frames", "label"),
    [
        (["update_flatten_index_mapping"], " at a flatten"),
        (["update_concat_index_mapping", "infer_channels_between"], " at a concatenation"),  # a helper names no step
        (["build_dependency"], ""),
    ],
)
def test_the_operation_named_is_the_innermost_torch_pruning_step_that_names_one(frames, label):
    from netpress.graph.groups import _failing_step

    source = "".join(f"def {a}():\n    return {b}()\n" for a, b in zip(frames, frames[1:])) + f"def {frames[-1]}():\n    1 // 0\n"
    scope: dict = {}
    exec(compile(source, "/site-packages/torch_pruning/dependency/graph.py", "exec"), scope)
    with pytest.raises(ZeroDivisionError) as error:
        scope[frames[0]]()
    assert _failing_step(error.value) == label


@pytest.mark.parametrize("prune_fraction", [0.0, 0.5])
def test_the_adaptive_allocation_and_ward_clustering_build_each_tree_once(monkeypatch, prune_fraction):
    """The merge costs and the clusters read the same tree (a second build cost 0.1–3 s per layer of 2,048–8,192
    channels); once
    channels are dropped the clusters build the tree of those left. Either way the clusters are those of a
    fresh tree."""
    built = []
    linkage_of, clusters_of = fold_module.ward_linkage, fold_module._ward_clusters
    monkeypatch.setattr(fold_module, "ward_linkage", lambda f: built.append(len(f)) or linkage_of(f))
    method = Fold(repair="none", input_shape=(1, 8, 8), prune_fraction=prune_fraction)
    folded = method.apply(tiny_mobilenet(), budget=Budget(params=0.3))
    groups = [r for r in folded.rows if r.get("channels", 0) > 1 and "channels_after" in r]
    if prune_fraction == 0:
        assert len(built) == len(groups)
    else:
        assert len(built) > len(groups)
    monkeypatch.setattr(fold_module, "_ward_clusters", lambda f, k, tree=None: clusters_of(f, k))
    fresh = method.apply(tiny_mobilenet(), budget=Budget(params=0.3))
    for key, value in folded.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[key], value)
