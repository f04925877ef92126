"""Architectures users bring that the zoo lacks: BatchNorm variants, 3-d convolutions, token-id inputs, extra
state, fixed-width reshapes, tiny models. Each is compressed into a file that loads back, or refused in one
line that says why."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

import netpress
from netpress import Budget, api
from netpress.errors import BudgetError, ModelSourceError, UnsupportedModelError
from netpress.evaluate import predict
from netpress.methods import FCPTS, ChannelL1, Fold, SelfCompression, UniformQuantization
from tests.archs import Versioned

IMAGE = (1, 8, 8)


def _cnn(norm: nn.Module, dims: int = 2) -> nn.Module:
    torch.manual_seed(0)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    pool = nn.AdaptiveAvgPool2d(1) if dims == 2 else nn.AdaptiveAvgPool3d(1)
    model = nn.Sequential(conv(1, 8, 3), norm, nn.ReLU(), conv(8, 8, 3), pool, nn.Flatten(), nn.Linear(8, 10)).eval()
    if norm.running_var is not None:  # statistics a trained model would have
        with torch.no_grad():
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
    return model


def _data(shape: tuple[int, ...], n: int = 256, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, *shape, generator=generator), torch.randint(10, (n,), generator=generator)
    return TensorDataset(x[: n * 3 // 4], y[: n * 3 // 4]), TensorDataset(x[n * 3 // 4 :], y[n * 3 // 4 :])


def _round_trip(model: nn.Module, method, budget, path, data=None, built=None) -> nn.Module:
    """Press ``model`` and load the file back into a fresh ``built()``; the loaded model runs as the report says."""
    report = netpress.press(model, method, budget, out=path, data=data)
    loaded = netpress.load(path, model=built() if built else None)
    assert report["params_after"] == sum(p.numel() for p in loaded.parameters())
    return loaded


@pytest.mark.parametrize("repair", ["none", "ar", "data"])
def test_a_batchnorm_without_affine_parameters_folds_as_one_with_unit_scale(repair, tmp_path):
    plain = lambda: _cnn(nn.BatchNorm2d(8, affine=False))  # noqa: E731
    affine = _cnn(nn.BatchNorm2d(8))
    affine[1].load_state_dict({**plain()[1].state_dict(), "weight": torch.ones(8), "bias": torch.zeros(8)})
    data = _data(IMAGE)
    # Uniform: the adaptive allocation weighs merge costs against the group's whole features, γ = 1 included.
    fold = Fold(repair=repair, input_shape=IMAGE, allocation="uniform")
    folded = _round_trip(plain(), fold, Budget(params=0.3), tmp_path / "p.press", data, plain)
    assert folded[1].num_features == folded[0].out_channels < 8
    if repair == "ar":  # with no γ to scale, σ is divided by the correction s_c ≥ 1 instead
        unrepaired = _round_trip(plain(), replace(fold, repair="none"), Budget(params=0.3), tmp_path / "n.press", data, plain)
        eps = folded[1].eps
        scale = ((unrepaired[1].running_var + eps) / (folded[1].running_var + eps)).sqrt()
        assert bool((scale >= 1 - 1e-6).all()) and bool((scale > 1.01).any())
    else:  # γ = 1 and β = 0 are features of the affine model's channels too, so ar's ρ̄ would differ there
        reference = _round_trip(affine, fold, Budget(params=0.3), tmp_path / "a.press", data, lambda: _cnn(nn.BatchNorm2d(8)))
        x = data[1].tensors[0]
        torch.testing.assert_close(predict(folded, x), predict(reference, x), rtol=1e-4, atol=1e-5)
    loaded = _round_trip(plain(), ChannelL1(input_shape=IMAGE), Budget(params=0.3), tmp_path / "c.press", built=plain)
    assert loaded[1].num_features == loaded[0].out_channels < 8


def test_a_batchnorm_without_running_statistics_is_left_alone_and_its_repair_refused(tmp_path):
    model = _cnn(nn.BatchNorm2d(8, track_running_stats=False))
    compressed = netpress.compress(model, ChannelL1(input_shape=IMAGE), Budget(params=0.2))
    reasons = [row.get("reason", "") for row in compressed.details["layers"]["channel-l1"]]
    assert any("without running statistics (track_running_stats=False)" in r for r in reasons)
    with pytest.raises(UnsupportedModelError, match="no BatchNorm layer with running statistics; use repair='none'"):
        netpress.compress(model, Fold(repair="ar", input_shape=IMAGE), Budget(params=0.2))


def test_a_folded_conv3d_with_batchnorm3d_loads_back(tmp_path):
    model = _cnn(nn.BatchNorm3d(8), dims=3)
    shape = (1, 6, 6, 6)
    loaded = _round_trip(
        model, Fold(input_shape=shape), Budget(params=0.3), tmp_path / "f.press", built=lambda: _cnn(nn.BatchNorm3d(8), 3)
    )
    assert loaded[1].num_features == loaded[0].out_channels < 8
    compressed = netpress.compress(model, Fold(input_shape=shape), Budget(params=0.3))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in compressed.state_dict().items())


class _Bag(nn.Module):
    """A bag of token embeddings: its inputs are int64 ids."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding, self.hidden, self.out = nn.Embedding(50, 16), nn.Linear(16, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(self.embedding(x).mean(1))))


def test_fold_traces_your_model_with_inputs_of_your_datasets_dtype(tmp_path):
    generator = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(50, (160, 12), generator=generator), torch.randint(10, (160,), generator=generator)
    data = (TensorDataset(ids[:128], labels[:128]), TensorDataset(ids[128:], labels[128:]))
    report = netpress.press(_Bag().eval(), Fold(), Budget(params=0.1), out=tmp_path / "b.press", data=data)
    assert report["params_after"] < report["params_before"] and 0 <= report["agreement"] <= 1


def test_extra_state_is_refused_by_name_before_any_work(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(UnsupportedModelError, match=r"^_extra_state is dict extra state .* stores tensors only"):
        netpress.press(Versioned(), UniformQuantization(8), out=tmp_path / "v.press")
    with pytest.raises(UnsupportedModelError, match="get_extra_state"):
        netpress.compress(Versioned(), FCPTS(), Budget(sparsity=0.5))
    weights = tmp_path / "w.safetensors"
    save_file(dict(Versioned().fc.state_dict(prefix="fc.")), weights)
    with pytest.raises(UnsupportedModelError, match="_extra_state is dict extra state"):
        api.load_model(weights, "tests.archs:Versioned")
    assert not list(tmp_path.glob("*.press"))


@pytest.mark.parametrize("dtype", [torch.int16, torch.int8, torch.complex64])
def test_a_tensor_of_a_dtype_the_file_does_not_store_is_refused_before_any_work(dtype, tmp_path):
    model = nn.Sequential(nn.Linear(8, 4))
    model.register_buffer("index", torch.arange(4).to(dtype))
    with pytest.raises(UnsupportedModelError, match=rf"^index is {dtype}, which a .press file does not store"):
        netpress.compress(model, UniformQuantization(8))
    with pytest.raises(UnsupportedModelError, match="does not store"):
        netpress.press(model, UniformQuantization(8), out=tmp_path / "m.press")
    assert not list(tmp_path.glob("*.press"))


def test_a_model_with_a_tensor_the_file_does_not_store_still_loads_to_be_measured(tmp_path):
    from safetensors.torch import save_file

    from tests.archs import int16_indexed

    save_file(int16_indexed().state_dict(), str(tmp_path / "w.safetensors"))
    handle = netpress.load_model(tmp_path / "w.safetensors", arch="tests.archs:int16_indexed")
    assert handle.module.index.dtype == torch.int16


class _FixedWidth(nn.Module):
    """A view to a width the channel tracing does not see."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.conv2, self.fc = nn.Conv2d(1, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv2(F.relu(self.conv(x)))).mean((2, 3)).view(-1, 16))


def test_self_compression_keeps_the_channels_of_a_model_that_would_not_run_without_them(tmp_path):
    model = _FixedWidth().eval()
    with torch.no_grad():
        model.conv2.weight[:8] = 0  # dead channels to cut
        model.conv2.bias[:8] = 0
    method = SelfCompression(steps=5, batch_size=32, preserve=8)
    report = netpress.press(model, method, out=tmp_path / "s.press", data=_data(IMAGE))
    (cut,) = report["layers"]["self-compress"][0]["cut"]
    assert cut["reason"].startswith("no channel cut: with its dead channels cut the model no longer runs (RuntimeError")
    assert report["params_after"] == report["params_before"]


def test_the_default_calibration_is_the_whole_training_split_when_it_is_smaller(tmp_path):
    report = netpress.press(
        _cnn(nn.BatchNorm2d(8)), FCPTS(iterations=2), Budget(sparsity=0.5), out=tmp_path / "f.press", data=_data(IMAGE, 200)
    )
    assert report["calibration"]["n"] == 150


def test_a_ratio_no_file_can_reach_says_so_instead_of_advising_one_below_one(tmp_path):
    torch.manual_seed(0)
    tiny = nn.Sequential(nn.Linear(8, 2))
    with pytest.raises(BudgetError, match="no ratio above 1 is reachable: the file's fixed costs"):
        netpress.press(tiny, UniformQuantization(), Budget(ratio=2), out=tmp_path / "t.press")


@pytest.mark.parametrize("prefix, wrapped", [("module.", "model.module"), ("_orig_mod.", "model._orig_mod")])
def test_a_wrapped_models_state_dict_is_refused_with_the_prefix_named(prefix, wrapped, tmp_path):
    from safetensors.torch import save_file

    from tests.archs import tiny_mlp

    path = tmp_path / "wrapped.safetensors"
    save_file({prefix + k: v for k, v in tiny_mlp().state_dict().items()}, path)
    with pytest.raises(ModelSourceError, match=rf"has the prefix '{prefix}' of a wrapped model: save {wrapped}\.state_dict"):
        api.load_model(path, "tests.archs:tiny_mlp")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_a_torchscript_model_is_refused_with_what_to_do():
    from tests.archs import tiny_mlp

    with pytest.raises(UnsupportedModelError, match="TorchScript model: compress the Python model, then script"):
        netpress.compress(torch.jit.script(tiny_mlp()), UniformQuantization(8))


def test_the_press_file_of_a_wrapped_model_names_the_prefix_when_loaded_into_the_bare_one(tmp_path):
    from tests.archs import tiny_mlp

    netpress.save(netpress.compress(nn.DataParallel(tiny_mlp()), UniformQuantization(8)), tmp_path / "dp.press")
    with pytest.raises(ModelSourceError, match=r"prefix 'module\.' of a wrapped model: compress model\.module instead"):
        netpress.load(tmp_path / "dp.press", model=tiny_mlp())


class _Encoder(nn.Module):
    """A small nn.TransformerEncoder classifier over the 8 rows of an 8×8 image; ``separate``: attention with its own
    key/value widths, whose query, key and value weights are three tensors instead of one packed in-projection."""

    def __init__(self, separate: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True), 2)
        self.mix = nn.MultiheadAttention(16, 2, kdim=12, vdim=12, batch_first=True) if separate else None
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.enc(self.inp(x.reshape(x.shape[0], 8, 8)))
        if self.mix is not None:
            h = self.mix(h, h[..., :12], h[..., :12])[0]
        return self.head(h.mean(1))


def test_attention_in_projections_are_coded_like_linear_weights(tmp_path):
    model = _Encoder().eval()
    weights = netpress.methods.compressible_weights(model)
    packed = [n for n in weights if n.endswith("self_attn.in_proj_weight")]
    assert packed == ["enc.layers.0.self_attn.in_proj_weight", "enc.layers.1.self_attn.in_proj_weight"]
    compressed = netpress.compress(model, netpress.MagnitudePruning("lamp"), Budget(sparsity=0.6))
    assert compressed.details["uncompressed_layers"] == {}
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((compressed.state_dict()[n] == 0).sum()) for n in weights)
    assert zeros == netpress.methods.base.target_zeros(0.6, total)  # the in-projections count toward the target
    netpress.save(compressed, tmp_path / "m.press")
    loaded = netpress.load(tmp_path / "m.press", model=_Encoder())
    for name, value in compressed.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
    x = torch.randn(4, *IMAGE)
    assert torch.equal(predict(loaded, x), predict(compressed.to_module(model), x))


def test_fcpts_learns_attention_in_projections_and_keeps_the_exact_target(tmp_path):
    train, test = _data(IMAGE)
    report = netpress.press(
        _Encoder().eval(), FCPTS(iterations=5, batch_size=16), Budget(sparsity=0.5), out=tmp_path / "f.press", data=(train, test)
    )
    rows = {r["name"]: r for r in report["layers"]["fcpts"]}
    assert "enc.layers.0.self_attn.in_proj_weight" in rows and report["uncompressed_layers"] == {}
    assert netpress.inspect(tmp_path / "f.press")["sparsity"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("allocation", ["uniform", "erk", "lamp"])
def test_allocations_count_the_query_key_and_value_rows_as_three_layers(allocation):
    """The packed in-projection is allocated as the three Linear layers a model that writes them apart would have."""
    model = _Encoder().eval()
    name = "enc.layers.0.self_attn.in_proj_weight"
    compressed = netpress.compress(model, netpress.MagnitudePruning(allocation), Budget(sparsity=0.6))
    parts = [int((p == 0).sum()) for p in compressed.state_dict()[name].chunk(3)]
    row = next(r for r in compressed.details["layers"]["magnitude"] if r["name"] == name)
    assert row["part_sparsity"] == [c / 256 for c in parts] and row["sparsity"] == sum(parts) / 768
    weights = netpress.methods.compressible_weights(model)
    separate = [q for n, w in weights.items() for q in (w.chunk(3) if n.endswith("in_proj_weight") else [w])]
    counts = netpress.methods.baselines.prune_counts(separate, 0.6, allocation)
    first = [n for n in weights].index(name)
    assert parts == counts[first : first + 3]
    if allocation == "uniform":
        assert parts == [154, 154, 154]  # 0.6 of each 16×16 part, where one share of the 48×16 rows let them differ


def test_fcpts_learns_a_threshold_for_each_of_the_query_key_and_value_rows(tmp_path):
    train, test = _data(IMAGE)
    out = tmp_path / "f.press"
    report = netpress.press(
        _Encoder().eval(), FCPTS(iterations=5, batch_size=16), Budget(sparsity=0.7), out=out, data=(train, test)
    )
    name = "enc.layers.1.self_attn.in_proj_weight"
    row = next(r for r in report["layers"]["fcpts"] if r["name"] == name)
    stored = netpress.load(out, model=_Encoder()).state_dict()[name]
    assert row["part_sparsity"] == [int((p == 0).sum()) / 256 for p in stored.chunk(3)]
    assert row["kept"] == "learned" and len(set(row["part_sparsity"])) > 1  # learned apart
    sizes = [(math.prod(t["shape"]), t["sparsity"]) for t in netpress.inspect(out)["tensors"] if t["kind"] != "raw"]
    assert sum(round(s * n) for n, s in sizes) == netpress.methods.base.target_zeros(0.7, sum(n for n, _ in sizes))


def test_attention_with_separate_query_key_value_weights_codes_all_three(tmp_path):
    """Attention with its own key/value widths holds three weights in place of the packed in-projection: each is a
    layer, as a Linear is, and named by its module it is kept with them all and its output projection."""
    model = _Encoder(separate=True).eval()
    names = [f"mix.{w}_proj_weight" for w in "qkv"]
    weights = netpress.methods.compressible_weights(model)
    assert set(names) <= set(weights)
    compressed = netpress.compress(model, netpress.MagnitudePruning("erk"), Budget(sparsity=0.6))
    assert compressed.details["uncompressed_layers"] == {}
    state = compressed.state_dict()
    assert all(0 < int((state[n] == 0).sum()) < state[n].numel() for n in names)
    zeros = sum(int((state[n] == 0).sum()) for n in weights)
    assert zeros == netpress.methods.base.target_zeros(0.6, sum(w.numel() for w in weights.values()))
    netpress.save(compressed, tmp_path / "m.press")
    loaded = netpress.load(tmp_path / "m.press", model=_Encoder(separate=True))
    assert all(torch.equal(loaded.state_dict()[n], v) for n, v in state.items())
    x = torch.randn(4, *IMAGE)
    assert torch.equal(predict(loaded, x), predict(compressed.to_module(model), x))
    kept = netpress.compress(model, UniformQuantization(4), keep=["mix"]).state_dict()
    for name in [*names, "mix.out_proj.weight"]:
        assert torch.equal(kept[name], model.state_dict()[name]), name
    by_weight = netpress.compress(model, UniformQuantization(4), keep=["mix.k_proj_weight"]).state_dict()
    assert all(torch.equal(by_weight[n], model.state_dict()[n]) for n in names)  # the three, as a recurrent layer's
    assert not torch.equal(by_weight["mix.out_proj.weight"], model.state_dict()["mix.out_proj.weight"])


class _Scaled(nn.Module):
    """ConvNeXt's layer scale (C, 1, 1) and ViT's class token (1, 1, C) and position table (1, L, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.scale = nn.Parameter(torch.ones(8, 1, 1))
        self.token = nn.Parameter(torch.zeros(1, 1, 8))
        self.positions = nn.Parameter(torch.zeros(1, 64, 8))
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = (self.conv(x) * self.scale).flatten(2).transpose(1, 2) + self.positions
        return self.head(torch.cat([self.token.expand(len(x), -1, -1), h], 1)[:, 0])


def test_only_weight_matrices_a_method_leaves_raw_are_named_not_vectors_held_in_more_axes():
    compressed = netpress.compress(_Scaled(), UniformQuantization(8))
    assert compressed.details["uncompressed_layers"] == {"": {"type": "_Scaled", "params": 8 + 8 + 64 * 8}}


class _HeadFirst(nn.Module):
    """Its head declared before the attention it runs after: the last coded weight in declaration order is the
    attention's output projection, whose module the attention never calls."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(16, 10)
        self.inp = nn.Linear(8, 16)
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.reshape(x.shape[0], 8, 8))
        return self.head(self.att(h, h, h)[0].mean(1))


def test_self_compression_picks_its_critical_examples_by_the_layer_that_runs_last(tmp_path):
    from netpress.methods.self_compress import _last_layer_run

    model = _HeadFirst().eval()
    assert _last_layer_run(model, torch.zeros(1, *IMAGE)) is model.head
    train, test = _data(IMAGE)
    method = SelfCompression(steps=3, batch_size=32, preserve=50)
    report = netpress.press(model, method, out=tmp_path / "sc.press", data=(train, test))
    assert report["layers"]["self-compress"][0]["preservation"]["size"] == 50


@pytest.mark.parametrize(
    ("keep", "raw"),
    [
        (["enc.layers.0.self_attn"], {"enc.layers.0.self_attn.in_proj_weight", "enc.layers.0.self_attn.out_proj.weight"}),
        (["*.in_proj_weight"], {"enc.layers.0.self_attn.in_proj_weight", "enc.layers.1.self_attn.in_proj_weight"}),
        (["head.weight"], {"head.weight"}),
    ],
)
def test_keep_takes_an_attention_layer_whole_or_a_weight_by_the_name_inspect_shows(keep, raw):
    compressed = netpress.compress(_Encoder().eval(), UniformQuantization(8), keep=keep)
    floats = {n for n, v in compressed.tensors.items() if isinstance(v, torch.Tensor) and v.dim() > 1}
    assert floats == raw


class _SequenceFirst(nn.Module):
    """nn.TransformerEncoder as PyTorch builds it by default: (sequence, batch, features)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(8, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0), 1, enable_nested_tensor=False)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.inp(x.reshape(x.shape[0], 8, 8)).transpose(0, 1)).mean(0))


def test_self_compression_takes_the_logits_as_features_where_the_last_layer_sees_no_row_per_sample(tmp_path):
    """With the head kept, the last coded layer runs sequence-first: its input rows are positions, not samples."""
    from netpress.methods.self_compress import _logits_and_features

    model = _SequenceFirst().eval()
    inputs = torch.randn(20, *IMAGE)
    with api._keeping(api._as_handle(model), [SelfCompression()], ["head"]):
        logits, features = _logits_and_features(model, inputs)
    assert torch.equal(features, logits) and logits.shape == (20, 10)
    train, test = _data(IMAGE)
    method = SelfCompression(steps=3, batch_size=32, preserve=50)
    netpress.press(model, method, out=tmp_path / "sc.press", data=(train, test), keep=["head"])


class _PackedLSTM(nn.Module):
    """An LSTM fed a packed sequence, the last coded layer its forward pass runs (the head kept)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn, self.head = nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(x.shape[0], 8, 8)
        packed = nn.utils.rnn.pack_padded_sequence(rows, [8] * len(rows), batch_first=True)
        return self.head(self.rnn(packed)[1][0][-1])


def test_self_compression_takes_the_logits_where_the_last_layer_reads_a_packed_sequence():
    from netpress.methods.self_compress import _logits_and_features

    model = _PackedLSTM().eval()
    with api._keeping(api._as_handle(model), [SelfCompression()], ["head"]):
        logits, features = _logits_and_features(model, torch.randn(20, *IMAGE))
    assert torch.equal(features, logits) and logits.shape == (20, 10)
