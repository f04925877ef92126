"""Where a model comes from: ``zoo:NAME``, a .press file, a Hugging Face model directory, or a weights file
(safetensors or a torch state dict) with the factory that builds its architecture. ``load_model`` reads any of
them into a ``ModelHandle``: the module plus what netpress must know about it."""

from __future__ import annotations

import codecs
import importlib
import importlib.util
import os
import pickle
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from netpress import codec, hf, zoo
from netpress.codec.codes import Encoded, SparseValues
from netpress.codec.container import Packed
from netpress.compressed import CompressedModel, fp32_bytes, prefix_hint, tied_names
from netpress.errors import FormatError, ModelSourceError, file_problem, one_line
from netpress.methods.base import check_tensors_only


@dataclass
class ModelHandle:
    """A model plus what netpress must know about it: where it came from and what data it expects."""

    module: nn.Module
    source: dict = field(default_factory=dict)
    dataset: str | None = None
    input_shape: tuple[int, ...] | None = None
    input_dtype: str | None = None  # of the inputs structural methods trace with (token ids are int64); None: float32
    # reads sentences with the model, by a Hugging Face directory's tokenizer: an encoder's embeddings (TextEncoder)
    # or a causal language model's next-token predictions (TokenPredictor)
    encoder: hf.TextEncoder | hf.TokenPredictor | None = None
    path: str | None = None  # the file it was loaded from: never an output (not written into files)
    # fp32 bytes of the model before netpress's first stage, for a model read from a .press file: a
    # ratio against the reloaded model alone would hide what the earlier stages (a fold) removed.
    first_original_bytes: int | None = None
    # "fp16" for a .press file that stored every float it kept as floats in fp16: a later stage keeps them so by
    # default (in fp32 they would take twice the bytes for no precision), unless it is told otherwise.
    raw_dtype: str | None = None


def _import_factory(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ModelSourceError(f"arch (CLI: --arch) must look like package.module:factory, got {spec!r}")
    # The current directory is searched last, as `python` would: the `netpress` script does not put it on sys.path.
    # Where the module is found only there, it stays on sys.path: worker processes a sweep starts (spawned with
    # this sys.path) import it again to rebuild the model.
    cwd = os.getcwd()
    added = cwd not in sys.path and not _importable(module_name)
    if added:
        sys.path.append(cwd)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except Exception as exc:  # ImportError, AttributeError, or whatever the module raises while it is imported
        if added:
            sys.path.remove(cwd)
        raise ModelSourceError(
            f"cannot import architecture {spec!r}: {exc}; the module must be importable (installed, in the current "
            "directory, or on PYTHONPATH)"
        ) from exc
    if not callable(factory):
        raise ModelSourceError(f"architecture {spec!r} is not callable")
    return factory


def _importable(module_name: str) -> bool:
    """Whether the top package of ``module_name`` is found on sys.path as it is."""
    try:
        return importlib.util.find_spec(module_name.partition(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def build_architecture(arch: str) -> nn.Module:
    """Call a ``package.module:factory`` with no arguments; it must return an ``nn.Module``."""
    factory = _import_factory(arch)
    try:
        model = factory()
    except (Exception, SystemExit) as exc:  # a factory that parses arguments (argparse) exits instead of raising
        raise ModelSourceError(
            f"{arch}() failed ({type(exc).__name__}: {exc}); netpress calls the factory with no arguments, and it must "
            "return the untrained model"
        ) from exc
    if not isinstance(model, nn.Module):
        raise ModelSourceError(f"{arch} returned {type(model).__name__}, not a torch.nn.Module")
    check_tensors_only(model.state_dict())
    if any(t.is_meta for t in model.state_dict().values()):
        raise ModelSourceError(
            f"{arch} builds its model on the meta device; netpress loads weights into real tensors: build it on the cpu"
        )
    return model


def _weights_reader(path: Path) -> tuple[list[str], Callable[[str], torch.Tensor]]:
    """The names a weights file holds and a function that reads one of them.

    A safetensors file is opened anew for each tensor: the reader copies it out of a memory map that closes
    at once, so the file's pages never add up to a second copy of the model in memory (DESIGN §8)."""
    if path.suffix.lower() == ".safetensors":

        def read(name: str) -> torch.Tensor:
            try:
                with safe_open(str(path), "pt") as weights:
                    return weights.get_tensor(name)
            except (SafetensorError, OSError, ValueError) as exc:
                raise ModelSourceError(f"{path}: cannot read {name}: {exc}") from exc

        try:
            with safe_open(str(path), "pt") as weights:
                return list(weights.keys()), read
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelSourceError(f"{path} is not a readable safetensors file: {exc}") from exc
    try:
        with warnings.catch_warnings():  # torch warns of a legacy pickle before refusing it: the refusal says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch's own text here advises weights_only=False: not for netpress
        if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; this is a bare pickle, or not a pickle
            raise ModelSourceError(
                _unreadable(
                    path,
                    f"{path} is not a zip-format torch.save checkpoint: a bare pickle, a legacy torch.save holding objects "
                    "other than tensors, or another format; save model.state_dict() with torch.save, or a .safetensors file",
                )
            ) from exc
        raise ModelSourceError(
            f"{path} holds pickled objects other than tensors (a whole model?), and netpress unpickles only "
            "tensors (weights_only=True); save model.state_dict() instead, or a .safetensors file"
        ) from exc
    except Exception as exc:  # torch raises many types for a file that is not a torch checkpoint
        raise ModelSourceError(
            _unreadable(path, f"{path} is not a readable torch checkpoint ({type(exc).__name__}: {exc})")
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelSourceError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return list(state), state.pop  # each tensor let go once it is in the model


def _load_weights_by_layer(model: nn.Module, path: Path, spec: str, arch: str) -> None:
    """Load a weights file into ``model`` strictly (every tensor, no other), one layer at a time through the
    layer's own ``load_state_dict``: memory holds the model and one layer's tensors, not the model twice."""
    names, read = _weights_reader(path)
    expected = model.state_dict()
    tied = tied_names(expected, set(names))  # safetensors' save_model keeps one name per shared tensor
    missing = [k for k in expected if k not in names and k not in tied]
    unexpected = [k for k in names if k not in expected]
    if missing or unexpected:
        problems = [
            f"{what} {', '.join(keys[:8])}{', …' if len(keys) > 8 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise ModelSourceError(
            f"the weights in {spec} do not fit {arch}: {'; '.join(problems)}{prefix_hint(missing, unexpected)}"
        )
    by_layer: dict[str, list[str]] = {}
    for name in names:
        by_layer.setdefault(name.rpartition(".")[0], []).append(name)
    for layer, layer_names in by_layer.items():
        values = {name: read(name) for name in layer_names}
        for name, value in values.items():
            if expected[name].is_floating_point() and not value.is_floating_point():
                raise ModelSourceError(
                    f"{name} in {spec} is {value.dtype}, where {arch} holds a float tensor; these are not trained float weights"
                )
            if value.shape != expected[name].shape:
                narrower = value.dim() == expected[name].dim() and all(a <= b for a, b in zip(value.shape, expected[name].shape))
                fold_hint = (  # fold keeps every name and narrows the layers
                    "; if they came from `netpress decompress` of a fold file, they have fewer channels than the "
                    "architecture builds: load the .press file instead, which resizes the layers"
                    if narrower
                    else ""
                )
                raise ModelSourceError(
                    f"the weights in {spec} do not fit {arch}: {name} has shape {tuple(value.shape)}, where {arch} builds "
                    f"{tuple(expected[name].shape)}{fold_hint}"
                )
        try:
            model.get_submodule(layer).load_state_dict({n.rpartition(".")[2]: v for n, v in values.items()}, strict=False)
        except RuntimeError as exc:
            raise ModelSourceError(f"the weights in {spec} do not fit {arch}: {one_line(exc)}") from exc


def _zoo_handle(name: str, module: nn.Module, source: dict) -> ModelHandle:
    entry = zoo.ZOO[name]
    return ModelHandle(module, source, entry.dataset, entry.input_shape)


def _text_handle(module: nn.Module, source: dict, **fields) -> ModelHandle:
    """A handle for a Hugging Face model: structural methods trace it with a sequence of token ids."""
    return ModelHandle(module, source, input_shape=(hf.TRACE_LENGTH,), input_dtype="int64", **fields)


STATE_DICT_SUFFIXES = (".safetensors", ".pt", ".pth")  # the model files that need an architecture (--arch)


def _unreadable(path: Path, generic: str) -> str:
    """Why torch cannot read a file: what it is, where its first bytes say (a safetensors file, a text file), else
    ``generic``."""
    with open(path, "rb") as handle:
        head = handle.read(4096)
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000:
        return f"{path} is a safetensors file, not a torch.save checkpoint: name it {path.stem}.safetensors"
    try:  # incrementally: a character cut at the end of the first bytes is not an error
        codecs.getincrementaldecoder("utf-8")().decode(head)
    except UnicodeDecodeError:
        return generic
    return f"{path} is a text file, not a torch checkpoint"


def load_model(spec: str | os.PathLike, arch: str | None = None) -> ModelHandle:
    """Load ``zoo:NAME``; a ``.press`` file; a Hugging Face model directory; or a ``.safetensors``/``.pt``/``.pth``
    state dict with ``arch``."""
    if not isinstance(spec, str | os.PathLike):
        raise ModelSourceError(f"a model source is 'zoo:NAME' or a path, got {type(spec).__name__}")
    spec = os.fspath(spec)
    if arch is not None and not isinstance(arch, str):
        raise ModelSourceError(f"arch names a factory as 'package.module:function', got {arch!r}")
    if spec.startswith("zoo:"):
        if arch is not None:
            raise ModelSourceError(f"{spec} brings its own architecture; drop arch (CLI: --arch)")
        return _zoo_handle(spec[4:], zoo.load_pretrained(spec[4:]), {"zoo": spec[4:]})
    path = Path(spec)
    if path.suffix.lower() == ".press":
        compressed = codec.read(path, lazily=True)
        architecture = architecture_for(compressed.source, arch)
        first = fp32_bytes(architecture)
        module = compressed.load_into(architecture)
        source = {**compressed.source, "earlier": _history(compressed, spec)}
        name = compressed.source.get("zoo")
        read = {"path": spec, "first_original_bytes": first, "raw_dtype": _stored_raw_dtype(compressed)}
        if isinstance(name, str) and name in zoo.ZOO:  # architecture_for refused --arch for a zoo file
            return replace(_zoo_handle(name, module, source), **read)
        if hf.is_hf_source(source):
            return replace(_text_handle(module, source), **read)
        return ModelHandle(module, source, **read)
    if path.is_dir():
        if not hf.is_model_directory(path):
            raise ModelSourceError(f"{spec} is a folder without config.json; a folder is read as a Hugging Face model directory")
        if arch is not None:
            raise ModelSourceError(f"{spec} brings its own architecture (config.json); drop arch (CLI: --arch)")
        module, source = hf.load_directory(path)
        encoder = hf.text_reader(path, module) if hf.has_tokenizer(path) else None
        return _text_handle(module, source, encoder=encoder, path=spec)
    if path.suffix.lower() not in STATE_DICT_SUFFIXES:
        raise ModelSourceError(
            f"unsupported model source {spec!r}; use zoo:NAME, a .press file, a Hugging Face model directory, a .safetensors "
            "file, or a .pt/.pth state dict"
        )
    if problem := file_problem(spec):
        raise ModelSourceError(problem)
    if path.stat().st_size == 0:
        raise ModelSourceError(f"{spec} is empty (0 bytes): an interrupted save or copy?")
    if arch is None:
        raise ModelSourceError(f"{spec} holds weights only; pass the architecture as arch='package.module:factory' (CLI: --arch)")
    model = build_architecture(arch)
    _load_weights_by_layer(model, path, spec, arch)
    return ModelHandle(model.eval(), {"arch": arch}, path=spec)


def input_bytes(path: str | os.PathLike) -> int | None:
    """The bytes the model was read from: its file, or a Hugging Face directory's weight files (None if it is
    neither). The ratio is against the model in fp32; a model shipped in half precision takes about half that."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    if path.is_dir():  # what transformers reads: the safetensors files if there are any, else the PyTorch ones
        for pattern in ("model*.safetensors", "pytorch_model*.bin"):
            if files := [f for f in path.glob(pattern) if f.is_file()]:
                return sum(f.stat().st_size for f in files)
    return None


def _history(compressed: CompressedModel, spec: str) -> list[dict]:
    """The stages a .press file went through, its own last: a file compressed again keeps them, and the
    order checks read them, so a malformed record is refused rather than trusted or dropped."""
    earlier = compressed.source.get("earlier", [])
    stages = (
        [*earlier, {k: compressed.summary[k] for k in ("methods", "budget") if k in compressed.summary}]
        if isinstance(earlier, list)
        else []
    )
    if not stages or not all(_is_stage(stage) for stage in stages):
        raise FormatError(
            f"{spec}: its record of earlier stages (source.earlier, summary.methods) is malformed (a damaged or "
            "hand-edited file), so the order of stages cannot be checked; use the model from before those stages"
        )
    return stages


def _is_stage(stage: object) -> bool:
    methods = stage.get("methods", []) if isinstance(stage, dict) else None
    return isinstance(methods, list) and all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in methods)


def _stored_raw_dtype(compressed: CompressedModel) -> str | None:
    """The dtype a later stage keeps a file's floats in: fp16 where every float the file keeps as floats (uncoded
    tensors, pruned survivors) is float16, else None (the stage's own choice)."""
    dtypes = {kept_float_dtype(value) for value in compressed.tensors.values()} - {None}
    return "fp16" if dtypes == {"float16"} else None


def kept_float_dtype(value: Encoded | Packed | torch.Tensor) -> str | None:
    """The dtype of the floats a file keeps for one tensor (uncoded, or a pruned tensor's survivors), read without
    decoding a stream; None for codes and integer tensors."""
    if isinstance(value, torch.Tensor):
        return str(value.dtype).removeprefix("torch.") if value.is_floating_point() else None
    if isinstance(value, SparseValues):
        return str(value.values.dtype).removeprefix("torch.")
    if isinstance(value, Packed) and value.record.get("kind") == "sparse":
        return value.record["dtype"]
    return None


def architecture_for(source: dict, arch: str | None = None) -> nn.Module:
    """An (untrained) instance of the architecture a file or report names."""
    if arch is not None and isinstance(source.get("zoo"), str):
        raise ModelSourceError(
            f"this file was made from zoo:{source['zoo']}, which brings its own architecture; drop arch (CLI: --arch)"
        )
    if arch is not None and hf.is_hf_source(source):
        raise ModelSourceError("this file holds a Hugging Face model and its config, which rebuild it; drop arch (CLI: --arch)")
    if arch is not None:
        return build_architecture(arch)
    if isinstance(source.get("zoo"), str):
        return zoo.build(source["zoo"])
    if hf.is_hf_source(source):
        return hf.build(source[hf.SOURCE_KEY])
    if isinstance(source.get("arch"), str):
        raise ModelSourceError(
            f"this file was made from a model built by {source['arch']}; pass arch='{source['arch']}' (CLI: --arch) to rebuild it"
        )
    raise ModelSourceError(
        "the file was made from a model passed in as a module, so it names no architecture: give it with arch="
        "'package.module:factory' (CLI: --arch), or load it with netpress.load(path, model=an instance of it)"
    )
