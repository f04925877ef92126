"""Hugging Face model directories: load one as a model source, rebuild it from a .press file, read text with it
(a sentence encoder's embeddings, or a causal language model's next-token predictions).

A directory is read offline (``local_files_only``), with safetensors or with ``torch.load(weights_only=True)``,
and only model classes that ship with ``transformers`` are built: a directory whose config names its own
modelling code (``auto_map``) is refused, because loading it would run that code. A .press file keeps the
config and class name, so it rebuilds the model without the directory (and without running any code it names).
"""

from __future__ import annotations

import json
import math
import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.func import functional_call

from netpress.errors import DataError, ModelSourceError, UnsupportedModelError
from netpress.progress import progress_bar

INSTALL = "pip install 'netpress[transformers]'"
TRACE_LENGTH = 16  # tokens in the all-zero sequence that structural methods trace the model with
DEFAULT_MAX_TOKENS = 512
EMBED_BATCH = 64
SOURCE_KEY = "hf"  # a source record (of a handle, file or report) with this key holds a Hugging Face model's class and config


def is_hf_source(source: dict) -> bool:
    """Whether a source record describes a Hugging Face model: measured on text, rebuilt from its config."""
    return SOURCE_KEY in source


def is_model_directory(path: Path) -> bool:
    """A Hugging Face model directory is recognised by its config.json."""
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
    """A model class shipped with transformers, by name."""
    cls = getattr(transformers, name, None) if isinstance(name, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ModelSourceError(
            f"{name!r} is not a model class of the installed transformers {transformers.__version__}; "
            "netpress builds only the classes transformers ships"
        )
    return cls


# Config keys that choose an attention or experts kernel: a name there can be a Hub repository whose code
# transformers would fetch and import, so they are dropped and netpress names the kernel itself.
KERNEL_KEYS = (
    "attn_implementation",
    "_attn_implementation",
    "_attn_implementation_internal",
    "experts_implementation",
    "_experts_implementation",
)


def _with_builtin_attention(cls, build_model):
    """``build_model(attn_implementation=...)`` with PyTorch's SDPA attention where ``cls`` has it, else the plain
    one: never a kernel a config names. A class that does not say (AutoModel) is tried with SDPA first."""
    supports = getattr(cls, "_supports_sdpa", None)
    if isinstance(supports, bool):
        return build_model(attn_implementation="sdpa" if supports else "eager")
    try:
        return build_model(attn_implementation="sdpa")
    except (ValueError, ImportError):
        return build_model(attn_implementation="eager")


def _config_record(config) -> dict:
    """The config as stored in a .press file: enough to rebuild the model, without the local path it came from."""
    record = config.to_dict()
    for key in ("_name_or_path", *KERNEL_KEYS):
        record.pop(key, None)
    return record


def _refuse_pickle_advice(path: Path, exc: Exception) -> None:
    """torch's text for a refused pickle advises weights_only=False, which netpress never does: say it in one line."""
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in str(exc):
        raise ModelSourceError(
            f"the weights in {path} hold pickled objects other than tensors, and netpress unpickles only tensors "
            "(weights_only=True); save the model with safetensors (save_pretrained's default)"
        ) from exc


def load_directory(path: Path) -> tuple[nn.Module, dict]:
    """The fp32 model in a Hugging Face directory (in eval mode) and the source record that rebuilds it.

    Every weight the model class holds must come from the directory: a weight transformers would initialise
    at random (a missing head, renamed tensors, a shape that does not fit) is refused, since compressing it
    would be meaningless. The pooler, which sentence embeddings never use, may be absent.
    """
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
        names = getattr(config, "architectures", None) or []
        cls = _model_class(transformers, names[0]) if names else transformers.AutoModel

        def from_directory(**attention):
            return cls.from_pretrained(
                path,
                local_files_only=True,
                weights_only=True,
                dtype=torch.float32,
                output_loading_info=True,
                ignore_mismatched_sizes=True,  # reported below, by name
                **attention,
            )

        try:
            model, info = _with_builtin_attention(cls, from_directory)
        except Exception as exc:  # missing or damaged weights, or weights that do not fit the config
            _refuse_pickle_advice(path, exc)
            raise ModelSourceError(f"cannot load the model in {path}: {type(exc).__name__}: {exc}") from exc
    missing = [k for k in info.get("missing_keys", ()) if not k.startswith("pooler.")]
    unfit = [str(k[0]) if isinstance(k, tuple) else str(k) for k in info.get("mismatched_keys", ())]
    if missing or unfit:
        absent = sorted(missing + unfit)
        shown = ", ".join(absent[:5]) + (f" and {len(absent) - 5} more" if len(absent) > 5 else "")
        raise ModelSourceError(
            f"{path} has no trained weights of the right shape for {type(model).__name__}'s {shown}, which would start "
            "random; check that config.json (architectures, sizes) describes the weights saved there"
        )
    return model.eval(), {SOURCE_KEY: {"class": type(model).__name__, "config": _config_record(config)}}


def build(record: Any) -> nn.Module:
    """An untrained instance of the model a .press file's ``hf`` record names."""
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise ModelSourceError("the file's Hugging Face record is damaged: it holds no config")
    transformers = _transformers()
    cls = _model_class(transformers, record.get("class"))
    config = {k: v for k, v in record["config"].items() if k not in KERNEL_KEYS}
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or model_type not in transformers.CONFIG_MAPPING:
        raise ModelSourceError(f"model type {model_type!r} is unknown to the installed transformers {transformers.__version__}")
    config_class = transformers.CONFIG_MAPPING[model_type]
    try:
        with _quiet(transformers):
            model = _with_builtin_attention(
                cls, lambda **attention: cls._from_config(config_class.from_dict(config), dtype=torch.float32, **attention)
            )
    except Exception as exc:  # a config this transformers cannot build: damaged, or from another version
        made = config.get("transformers_version", "an unknown version")
        raise ModelSourceError(
            f"cannot rebuild {cls.__name__} from the file's config ({type(exc).__name__}: {exc}); it was written with "
            f"transformers {made}, this is {transformers.__version__}"
        ) from exc
    return model.eval()


def _batch(tokenizer, sentences: list[str], max_tokens: int) -> dict[str, torch.Tensor]:
    """One padded batch of token ids and attention mask, cut at ``max_tokens``; a tokenizer that cannot make one
    (no padding token, say) is the model directory's problem, said so."""
    try:
        return dict(tokenizer(sentences, padding=True, truncation=True, max_length=max_tokens, return_tensors="pt"))
    except ValueError as exc:
        raise UnsupportedModelError(f"the directory's tokenizer cannot make a batch of sentences: {exc}") from exc


@dataclass(frozen=True)
class TextEncoder:
    """Sentences to unit-length sentence embeddings with a model of a directory: its tokenizer and pooling.

    A sentence-transformers directory declares its pipeline (``modules.json``) and pooling; netpress computes
    the Transformer → Pooling → Normalize pipeline with any one pooling mode, as that library does, and
    records any other pipeline as ``problem`` (a directory without ``modules.json`` is mean-pooled).
    """

    tokenizer: Any
    pooling: str = "mean"
    max_tokens: int = DEFAULT_MAX_TOKENS
    problem: str | None = None  # why these embeddings would not be the directory's own; refused when embedding

    report_key: ClassVar[str] = "fidelity"

    @classmethod
    def from_directory(cls, path: Path, positions: int | None = None) -> TextEncoder:
        """``positions``: the model's position table, which bounds the tokens of a sentence."""
        tokenizer = _tokenizer(path)
        pooling, problem = _pipeline(path)
        return cls(tokenizer, pooling, _max_tokens(path, tokenizer, positions), problem)

    @torch.no_grad()
    def embed(self, model: nn.Module, sentences: list[str]) -> torch.Tensor:
        """One unit-length embedding per sentence, in eval mode, batch by batch."""
        if self.problem is not None:
            raise UnsupportedModelError(self.problem)
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
                out.append(self.encode(model, self.tokenize(chunk)))
                progress.update(task, advance=len(chunk))
        embeddings = torch.empty(len(order), out[0].shape[1], dtype=out[0].dtype)
        embeddings[order] = torch.cat(out)
        return embeddings

    def tokenize(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        """One padded batch of token ids and attention mask, cut at ``max_tokens``."""
        return _batch(self.tokenizer, sentences, self.max_tokens)

    def encode(self, model: nn.Module, batch: dict[str, torch.Tensor], params: dict | None = None) -> torch.Tensor:
        """Unit-length embeddings of a tokenized batch, differentiable (FCPTS trains through it); ``params``
        replace the model's own tensors, as ``torch.func.functional_call`` does."""
        try:
            output = model(**batch) if params is None else functional_call(model, params, (), batch)
        except Exception as exc:  # an encoder-decoder wanting decoder inputs, token ids the model has no row for, ...
            raise UnsupportedModelError(
                f"{type(model).__name__} cannot embed tokenized sentences ({type(exc).__name__}: {exc}); netpress measures "
                "Hugging Face models as sentence encoders that take the tokenizer's output"
            ) from exc
        hidden = getattr(output, "last_hidden_state", None)
        if hidden is None:
            raise UnsupportedModelError(
                f"{type(model).__name__} returns no last_hidden_state; netpress measures Hugging Face models as "
                "sentence encoders (e.g. BertModel, the class a sentence-transformers directory holds)"
            )
        return torch.nn.functional.normalize(POOLINGS[self.pooling](hidden, batch["attention_mask"]), dim=1)

    def reference(self, model: nn.Module, sentences: list[str]) -> torch.Tensor:
        """What a compressed model is compared with: the original's embeddings."""
        return self.embed(model, sentences)

    def compare(self, model: nn.Module, sentences: list[str], reference: torch.Tensor) -> dict:
        """A report's ``fidelity``: cosine and top-10 neighbour agreement of ``model``'s embeddings with ``reference``."""
        from netpress.evaluate import fidelity

        return fidelity(self.embed(model, sentences), reference).to_dict()


@dataclass(frozen=True)
class NextTokens:
    """A causal language model's figures on some sentences: summed negative log-likelihood of their tokens, the
    number of tokens predicted, and its top-1 prediction at each of them (sentence by sentence, in order)."""

    nll: float
    tokens: int
    top1: torch.Tensor

    @property
    def perplexity(self) -> float:
        """exp of the mean token loss; infinite where that overflows (a model the compression broke)."""
        mean = self.nll / self.tokens
        return math.exp(mean) if mean < 700 else math.inf


@dataclass(frozen=True)
class TokenPredictor:
    """Sentences to next-token predictions with a causal language model of a directory and its tokenizer.

    A compressed model is measured by its perplexity on the text, next to the original's, and by the share of
    tokens at which its most likely next token is the original's. Sentences are padded on the right and every
    token after a sentence's first is predicted.
    """

    tokenizer: Any
    max_tokens: int = DEFAULT_MAX_TOKENS
    report_key: ClassVar[str] = "perplexity"

    @classmethod
    def from_directory(cls, path: Path, positions: int | None = None) -> TokenPredictor:
        tokenizer = _tokenizer(path)
        if tokenizer.pad_token is None:  # decoder tokenizers often have none; padded places are masked anyway
            if tokenizer.eos_token is None:
                raise UnsupportedModelError(f"{path}'s tokenizer has neither a padding nor an end-of-text token to pad with")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "right"
        return cls(tokenizer, _max_tokens(path, tokenizer, positions))

    def tokenize(self, sentences: list[str]) -> dict[str, torch.Tensor]:
        """One right-padded batch of token ids and attention mask, cut at ``max_tokens``."""
        batch = _batch(self.tokenizer, sentences, self.max_tokens)
        return {k: batch[k] for k in ("input_ids", "attention_mask")}

    @staticmethod
    def predicted(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Where a next token is predicted: both it and the token before it are text, not padding."""
        mask = batch["attention_mask"].bool()
        return mask[:, 1:] & mask[:, :-1]

    def logits(self, model: nn.Module, batch: dict[str, torch.Tensor], params: dict | None = None) -> torch.Tensor:
        """The next-token logits at the predicted places of a batch, one row per token, differentiable (FCPTS and
        L² train through them); ``params`` replace the model's own tensors."""
        try:
            output = model(**batch) if params is None else functional_call(model, params, (), batch)
        except Exception as exc:  # token ids the model has no row for, ...
            raise UnsupportedModelError(
                f"{type(model).__name__} cannot read tokenized sentences ({type(exc).__name__}: {exc})"
            ) from exc
        logits = getattr(output, "logits", None)
        if logits is None or logits.dim() != 3:
            raise UnsupportedModelError(f"{type(model).__name__} returns no next-token logits (batch, tokens, vocabulary)")
        return logits[:, :-1][self.predicted(batch)]

    def targets(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tokens that ``logits`` predict, in the same order."""
        return batch["input_ids"][:, 1:][self.predicted(batch)]

    @torch.no_grad()
    def score(self, model: nn.Module, sentences: list[str]) -> NextTokens:
        """Summed negative log-likelihood and top-1 predictions over ``sentences``, in eval mode, batch by batch."""
        if not sentences or not all(isinstance(s, str) for s in sentences):
            raise DataError("a language model is measured on a non-empty list of sentences (strings)")
        model.eval()
        nll, tokens, top1 = 0.0, 0, []
        with progress_bar() as progress:
            task = progress.add_task("predicting tokens", total=len(sentences))
            for i in range(0, len(sentences), EMBED_BATCH):
                chunk = sentences[i : i + EMBED_BATCH]
                batch = self.tokenize(chunk)
                logits = self.logits(model, batch)  # tokens × vocabulary: kept in the model's precision
                if not bool(torch.isfinite(logits).all()):
                    raise DataError("the model's next-token logits on the text are not finite")
                targets = self.targets(batch)
                nll += float(torch.nn.functional.cross_entropy(logits, targets, reduction="none").double().sum())
                tokens += len(targets)
                top1.append(logits.argmax(dim=1))
                progress.update(task, advance=len(chunk))
        if tokens == 0:
            raise DataError("the sentences hold no token to predict (each is one token or less): give texts of a few words")
        return NextTokens(nll, tokens, torch.cat(top1))

    def reference(self, model: nn.Module, sentences: list[str]) -> NextTokens:
        """What a compressed model is compared with: the original's figures."""
        return self.score(model, sentences)

    def compare(self, model: nn.Module, sentences: list[str], reference: NextTokens) -> dict:
        """A report's ``perplexity``: before (``reference``) and after, and the top-1 agreement with the original."""
        return self.figures(self.score(model, sentences), reference, len(sentences))

    @staticmethod
    def figures(mine: NextTokens, reference: NextTokens, samples: int) -> dict:
        """``mine`` next to ``reference`` (measured on the same ``samples`` sentences), as a report states them."""
        if mine.tokens != reference.tokens:
            raise DataError("the reference was measured on other sentences: its token count differs")
        return {
            "before": round(reference.perplexity, 4),
            "after": round(mine.perplexity, 4),
            "top1_agreement": round(float((mine.top1 == reference.top1).double().mean()), 4),
            "tokens": mine.tokens,
            "samples": samples,
        }


def _tokenizer(path: Path):
    """The directory's tokenizer, read offline without running code it names."""
    transformers = _transformers()
    with _quiet(transformers):
        try:
            return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
        except Exception as exc:
            raise ModelSourceError(f"{path} holds no tokenizer transformers can read: {exc}") from exc


def sentences_cut(reader: TextEncoder | TokenPredictor, sentences: list[str]) -> int:
    """How many of ``sentences`` are longer than the reader's ``max_tokens`` (the model's positions), and so are
    measured on their first tokens only: a report says so."""
    lengths = reader.tokenizer(sentences, verbose=False)["input_ids"]
    return sum(len(ids) > reader.max_tokens for ids in lengths)


def is_causal_lm(model: nn.Module) -> bool:
    """A causal language model: measured by its next-token predictions."""
    return is_causal_lm_class(type(model).__name__)


# Left-to-right language models whose class is not named ...ForCausalLM (XLNet's and XLM's LM heads are not)
LM_HEAD_MODELS = ("GPT2LMHeadModel", "OpenAIGPTLMHeadModel", "CTRLLMHeadModel")


def is_causal_lm_class(name: str) -> bool:
    """A causal language model's class name: transformers' ``...ForCausalLM``, and GPT-2's and its kin's
    ``...LMHeadModel``."""
    return name.endswith("ForCausalLM") or name in LM_HEAD_MODELS


def text_reader(path: Path, model: nn.Module) -> TextEncoder | TokenPredictor:
    """How netpress reads text with the model of a directory: next-token predictions for a causal language model,
    sentence embeddings for any other."""
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return (TokenPredictor if is_causal_lm(model) else TextEncoder).from_directory(path, positions)


def _masked_sum(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (hidden * weights.unsqueeze(-1).to(hidden.dtype)).sum(dim=1)


def _weighted_mean(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return _masked_sum(hidden, weights) / weights.sum(dim=1, keepdim=True).clamp(min=1e-9)


def _first_real(mask: torch.Tensor) -> torch.Tensor:
    """Each sentence's first real token, with padding on either side (a left-padding tokenizer puts it first)."""
    return mask.int().argmax(dim=1)


def _first_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return hidden[torch.arange(len(hidden)), _first_real(mask)]


def _last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    last = mask.shape[1] - 1 - mask.flip(1).int().argmax(dim=1)
    return hidden[torch.arange(len(hidden)), last]


def _position_weighted_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token i of a sentence (from its first real token) weighs i + 1."""
    positions = torch.arange(1, mask.shape[1] + 1) - _first_real(mask).unsqueeze(1)
    return _weighted_mean(hidden, mask * positions)


# sentence-transformers' pooling modes (a Pooling module's ``pooling_mode``), computed as that library does
POOLINGS = {
    "mean": _weighted_mean,
    "mean_sqrt_len_tokens": lambda h, m: _masked_sum(h, m) / m.sum(dim=1, keepdim=True).clamp(min=1e-9).sqrt(),
    "max": lambda h, m: h.masked_fill(m.unsqueeze(-1) == 0, -1e9).amax(dim=1),
    "cls": _first_token,
    "weightedmean": _position_weighted_mean,
    "lasttoken": _last_token,
}
# Their older config format: one flag per mode
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
PIPELINE_MODULES = ("Transformer", "Pooling", "Normalize")  # the modules.json types netpress computes (cosine ignores Normalize)


def _read_json(path: Path, kind: type):
    """A JSON file's content when it is a ``kind`` (dict or list), else an empty one: these files are optional."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return kind()
    return data if isinstance(data, kind) else kind()


def _pipeline(path: Path) -> tuple[str, str | None]:
    """The pooling mode a sentence-transformers directory declares, and why netpress cannot compute its
    embeddings (None when it can); mean pooling for a directory that declares none."""
    modules = [m for m in _read_json(path / "modules.json", list) if isinstance(m, dict)]
    others = [str(m.get("type", "?")).rsplit(".", 1)[-1] for m in modules]
    others = [t for t in others if t not in PIPELINE_MODULES]
    if others:
        return "mean", f"{path}'s sentence-transformers pipeline has {', '.join(others)}, which netpress does not compute"
    pooling = next((m for m in modules if str(m.get("type", "")).endswith("Pooling")), None)
    if pooling is None:
        return "mean", None
    config = _read_json(path / str(pooling.get("path", "")) / "config.json", dict)
    modes = config.get("pooling_mode", [mode for flag, mode in POOLING_FLAGS.items() if config.get(flag)])
    modes = [modes] if isinstance(modes, str) else list(modes) if isinstance(modes, list) else []
    if len(modes) == 1 and modes[0] in POOLINGS:
        return modes[0], None
    return "mean", f"{path} pools with {modes or 'no mode'}; netpress computes one of {', '.join(POOLINGS)}"


def _max_tokens(path: Path, tokenizer, positions: int | None) -> int:
    """sentence-transformers' ``max_seq_length`` when the directory has one, else the tokenizer's limit (≤ 512);
    never more than the model's position table holds."""
    declared = _read_json(path / "sentence_bert_config.json", dict).get("max_seq_length")
    limit = getattr(tokenizer, "model_max_length", DEFAULT_MAX_TOKENS)
    limit = min(limit, DEFAULT_MAX_TOKENS) if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS
    if isinstance(declared, int) and declared > 0:
        limit = declared
    return min(limit, positions) if isinstance(positions, int) and positions > 0 else limit


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "spiece.model", "tokenizer.model")


def has_tokenizer(path: Path) -> bool:
    """Whether a directory ships a tokenizer (needed only to measure the model on text)."""
    return any((path / name).is_file() for name in TOKENIZER_FILES)
