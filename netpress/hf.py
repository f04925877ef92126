"""Hugging Face model directories: load one as a model source, rebuild it from a .press file, embed text with it.

A directory is read offline (``local_files_only``), with safetensors or with ``torch.load(weights_only=True)``,
and only model classes that ship with ``transformers`` are built: a directory whose config names its own
modelling code (``auto_map``) is refused, because loading it would run that code. A .press file keeps the
config and class name, so it rebuilds the model without the directory (and without running any code it names).
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from netpress.errors import DataError, ModelSourceError, UnsupportedModelError
from netpress.progress import progress_bar

INSTALL = "pip install 'netpress[transformers]'"
TRACE_LENGTH = 16  # tokens in the all-zero sequence that structural methods trace the model with
# sentence-transformers' Pooling flags for the poolings netpress computes (its other modes are taken as mean)
POOLING_KEYS = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens"}
DEFAULT_MAX_TOKENS = 512
EMBED_BATCH = 64


def is_model_directory(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded at run time
    try:
        import transformers
    except ImportError as exc:
        raise ModelSourceError(f"a Hugging Face model needs the transformers package: {INSTALL}") from exc
    return transformers


@contextmanager
def _quiet(transformers):
    """Without transformers' own progress bars and warnings: netpress reports what it does itself."""
    logging = transformers.utils.logging
    bars, level = logging.is_progress_bar_enabled(), logging.get_verbosity()
    logging.disable_progress_bar()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _model_class(transformers, name: Any):
    """A model class shipped with transformers, by name; AutoModel (the bare encoder) when none is named."""
    if name is None:
        return transformers.AutoModel
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelSourceError(
            f"{name!r} is not a model class of the installed transformers {transformers.__version__}; "
            "netpress builds only the classes transformers ships"
        )
    return cls


def _config_record(config) -> dict:
    """The config as stored in a .press file: enough to rebuild the model, without the local path it came from."""
    record = config.to_dict()
    record.pop("_name_or_path", None)
    return record


def load_directory(path: Path) -> tuple[nn.Module, dict]:
    """The fp32 model in a Hugging Face directory (in eval mode) and the source record that rebuilds it."""
    transformers = _transformers()
    with _quiet(transformers):
        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except Exception as exc:  # a damaged or foreign config.json
            raise ModelSourceError(f"{path}/config.json is not a readable transformers config: {exc}") from exc
        if getattr(config, "auto_map", None):
            raise ModelSourceError(
                f"{path} names its own modelling code (auto_map in config.json); netpress does not run code a model "
                "directory brings: use a model class that ships with transformers"
            )
        names = getattr(config, "architectures", None) or [None]
        cls = _model_class(transformers, names[0])
        try:
            model = cls.from_pretrained(path, local_files_only=True, weights_only=True, dtype=torch.float32)
        except Exception as exc:  # missing or damaged weights, or weights that do not fit the config
            raise ModelSourceError(f"cannot load the model in {path}: {type(exc).__name__}: {exc}") from exc
    return model.eval(), {"hf": {"class": type(model).__name__, "config": _config_record(config)}}


def build(record: Any) -> nn.Module:
    """An untrained instance of the model a .press file's ``hf`` record names."""
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ModelSourceError("the file's Hugging Face record is damaged: it holds no config")
    transformers = _transformers()
    cls = _model_class(transformers, record.get("class"))
    config = dict(record["config"])
    model_type = config.get("model_type")
    if model_type not in transformers.CONFIG_MAPPING:
        raise ModelSourceError(f"model type {model_type!r} is unknown to the installed transformers {transformers.__version__}")
    with _quiet(transformers):
        model = cls._from_config(transformers.CONFIG_MAPPING[model_type].from_dict(config), dtype=torch.float32)
    return model.eval()


@dataclass(frozen=True)
class TextEncoder:
    """Sentences to unit-length sentence embeddings with a model of a directory: its tokenizer and pooling.

    The pooling follows a sentence-transformers directory (``1_Pooling/config.json``; mean pooling when the
    directory does not say), so the embeddings are the ones that library computes.
    """

    tokenizer: Any
    pooling: str = "mean"
    max_tokens: int = DEFAULT_MAX_TOKENS

    @classmethod
    def from_directory(cls, path: Path) -> TextEncoder:
        transformers = _transformers()
        with _quiet(transformers):
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
            except Exception as exc:
                raise ModelSourceError(f"{path} holds no tokenizer transformers can read: {exc}") from exc
        return cls(tokenizer, _pooling(path), _max_tokens(path, tokenizer))

    @torch.no_grad()
    def embed(self, model: nn.Module, sentences: list[str]) -> torch.Tensor:
        """One unit-length embedding per sentence, in eval mode, batch by batch."""
        if not sentences or not all(isinstance(s, str) for s in sentences):
            raise DataError("embedding needs a non-empty list of sentences (strings)")
        model.eval()
        # Longest first, as sentence-transformers does: a batch of similar lengths carries little padding.
        order = sorted(range(len(sentences)), key=lambda i: -len(sentences[i]))
        out = []
        with progress_bar() as progress:
            task = progress.add_task("embedding sentences", total=len(order))
            for i in range(0, len(order), EMBED_BATCH):
                chunk = [sentences[j] for j in order[i : i + EMBED_BATCH]]
                out.append(self._embed_batch(model, chunk))
                progress.update(task, advance=len(chunk))
        embeddings = torch.empty(len(order), out[0].shape[1], dtype=out[0].dtype)
        embeddings[order] = torch.cat(out)
        return embeddings

    def _embed_batch(self, model: nn.Module, sentences: list[str]) -> torch.Tensor:
        try:
            batch = self.tokenizer(sentences, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        except ValueError as exc:  # e.g. a tokenizer with no padding token
            raise UnsupportedModelError(f"the directory's tokenizer cannot make a batch of sentences: {exc}") from exc
        hidden = getattr(model(**batch), "last_hidden_state", None)
        if hidden is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} returns no last_hidden_state; netpress measures Hugging Face models as "
                "sentence encoders (e.g. BertModel, the class a sentence-transformers directory holds)"
            )
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, float("-inf")).amax(dim=1)
        else:
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1)


def _read_json(path: Path, kind: type):
    """A JSON file's content when it is a ``kind`` (dict or list), else an empty one: these files are optional."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return kind()
    return data if isinstance(data, kind) else kind()


def _pooling(path: Path) -> str:
    """The pooling a sentence-transformers directory declares (its first Pooling module), else mean."""
    for module in _read_json(path / "modules.json", list):
        if isinstance(module, dict) and str(module.get("type", "")).endswith("Pooling"):
            config = _read_json(path / str(module.get("path", "")) / "config.json", dict)
            for mode, key in POOLING_KEYS.items():
                if config.get(key):
                    return mode
    return "mean"


def _max_tokens(path: Path, tokenizer) -> int:
    """sentence-transformers' ``max_seq_length`` when the directory has one, else the tokenizer's limit (≤ 512)."""
    declared = _read_json(path / "sentence_bert_config.json", dict).get("max_seq_length")
    if isinstance(declared, int) and declared > 0:
        return declared
    limit = getattr(tokenizer, "model_max_length", DEFAULT_MAX_TOKENS)
    return min(int(limit), DEFAULT_MAX_TOKENS) if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "tokenizer.model")


def has_tokenizer(path: Path) -> bool:
    return any((path / name).is_file() for name in TOKENIZER_FILES)
