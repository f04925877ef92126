"""The ``netpress`` command line: a thin layer that parses options, calls ``netpress.api``, prints."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable
from enum import Enum
from functools import wraps
from pathlib import Path
from typing import Annotated, TypeVar

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from netpress import api, codec, hf, parallel, zoo
from netpress.budget import Budget
from netpress.data.datasets import PRESERVATION_KEYS, load_preservation_set, sample_digests
from netpress.errors import (
    BudgetError,
    DataError,
    FormatError,
    NetpressError,
    NetpressWarning,
    OutputError,
    check_press_suffix,
    check_suffix,
    check_writable,
    one_line,
)
from netpress.methods import (
    ALLOCATIONS,
    CLIPS,
    CLUSTERINGS,
    FCPTS,
    GROUP_ALLOCATIONS,
    L2,
    METHODS,
    REPAIRS,
    ChannelL1,
    Fold,
    KMeansQuantization,
    MagnitudePruning,
    SelfCompression,
    SoftWeightSharing,
    UniformQuantization,
)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Compress trained PyTorch networks into real, smaller files.")
zoo_app = typer.Typer(no_args_is_help=True, help="The model zoo: list and train the reference models.")
app.add_typer(zoo_app, name="zoo")
out = Console(width=max(Console().width, 120), markup=False)
# Messages on stderr are single soft-wrapped lines without rich's number and path highlighting.
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
T = TypeVar("T")


def friendly(fn: Callable[..., T]) -> Callable[..., T]:
    """Turn every NetpressError into one line on stderr and exit code 2: no traceback for bad input; and every
    NetpressWarning into one "warning:" line (other warnings are shown as Python shows them)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", NetpressWarning)
                return fn(*args, **kwargs)
        except NetpressError as exc:
            # One line even where the message quotes a multi-line one (torch's load_state_dict report).
            err.print(f"[bold red]error:[/] {escape(one_line(exc))}", markup=True)  # a path or value may hold [brackets]
            raise typer.Exit(2) from None
        finally:  # shown once the recording has ended: showing one while it runs would record it again
            _show_warnings(caught)

    return wrapper


def _show_warnings(caught: list[warnings.WarningMessage]) -> None:
    """Each NetpressWarning once as one line (a ratio search's trials can raise the same one many times); any
    other warning as Python shows it."""
    shown = set()
    for warning in caught:
        if not issubclass(warning.category, NetpressWarning):
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
        elif (text := one_line(warning.message)) not in shown:
            shown.add(text)
            err.print(f"[bold yellow]warning:[/] {escape(text)}", markup=True)


def check_outputs(*paths: Path | None, keep: tuple[str | Path, ...] = (), made: Path | None = None) -> None:
    """Refuse unwritable output paths before any work is done, so a long run never fails at the end,
    and two outputs that name one file (the second would overwrite the first)."""
    given = [p for p in paths if p is not None]
    for i, path in enumerate(given):
        check_writable(path, keep=keep, made=made)
        for other in given[:i]:
            if os.path.abspath(path) == os.path.abspath(other):
                raise OutputError(f"{path} is named for two outputs; give each output its own file")


PLOT_SUFFIXES = (".png", ".svg", ".pdf")
MODEL_HELP = "zoo:NAME, a .press file, a Hugging Face model directory, or a .safetensors / .pt / .pth state dict"
DATA_HELP = (
    "dataset for calibration and evaluation: fashion-mnist, digits, or your own .safetensors file with train_inputs, "
    "test_inputs and test_labels (train_labels optional); for a Hugging Face model fortunes, or your own .txt file "
    "(one text per line; a fifth of the lines (at least 1, at most 2,000) measure the model, the others calibrate)"
)


MethodName = Enum("MethodName", {name: name for name in METHODS}, type=str)
AllocationName = Enum("AllocationName", {name: name for name in (*ALLOCATIONS, *GROUP_ALLOCATIONS)}, type=str)
ALLOCATION_HELP = (
    "per-layer allocation of the target: magnitude: global (default), uniform, erk or lamp; fold, channel-l1: "
    "adaptive (channels removed first where merging them costs least) or uniform (the same share of every group; "
    f"the paper's); default {Fold.allocation} for fold, {ChannelL1.allocation} for channel-l1"
)
RepairName = Enum("RepairName", {name: name for name in REPAIRS}, type=str)
ClusteringName = Enum("ClusteringName", {name: name for name in CLUSTERINGS}, type=str)
ClipName = Enum("ClipName", {name: name for name in CLIPS}, type=str)
BITS_HELP = (
    "uniform quantization bits (after pruning, of the survivors: one under half a step rounds to zero, so the file "
    "may hold a few more zeros than --sparsity asks)"
)
InitName = Enum("InitName", {name: name for name in ("best", *ALLOCATIONS)}, type=str)
INIT_HELP = (
    f"fcpts: the allocation the thresholds start from: erk (the paper's), global, uniform, lamp, or best, whichever "
    f"of them distils best on the calibration set (default {FCPTS.init})"
)
ITERATIONS_HELP = f"fcpts: optimisation steps (default {FCPTS.iterations}; a sentence encoder on a CPU: 200)"
BATCH_HELP = (
    f"fcpts, l2: calibration samples per step (default {FCPTS.batch_size} for fcpts, {L2.batch_size} for l2; "
    f"a sentence encoder on a CPU: 16); sws, self-compress: training samples per step (default "
    f"{SoftWeightSharing.batch_size}, {SelfCompression.batch_size})"
)
ROUNDS_HELP = f"l2: rounds of a transform and a reconstruction phase (default {L2.rounds}; a sentence encoder on a CPU: 1)"
TRANSFORM_HELP = f"l2: steps on the grids per round (default {L2.transform_steps}; a sentence encoder on a CPU: 30)"
RECONSTRUCTION_HELP = f"l2: steps on the weights per round (default {L2.reconstruction_steps}; a sentence encoder on a CPU: 60)"
GROUP_HELP = (
    "uniform: one scale per run of consecutive weights of an output channel, each channel cut into ⌈n / size⌉ runs "
    "of near-equal length (e.g. 128 at 4 bits; instead of --per-channel)"
)
RAW_DTYPE_HELP = (
    "dtype of the floats stored as floats (pruned survivors, biases, norms): fp32 or fp16 "
    "(default: the method's choice; fp16 for l2, and for a .press input whose floats are all fp16; else fp32)"
)
LEVELS_HELP = "k-means levels including zero (after pruning, of the survivors); sws: mixture components including zero"
TAU_HELP = (
    f"sws: weight of the mixture prior against the training loss in the first epoch, {SoftWeightSharing.anneal:g} times "
    f"that by the last (default {SoftWeightSharing.tau}); higher: fewer non-zero weights and a smaller file, at some accuracy; "
    "with --ratio, the first guess of a search for the τ that meets it; the prior weighs τ/N per image, so with "
    "--calib N under the split's size the same τ prunes far more (scale it by N / the split's size, or give --ratio)"
)
GAMMA_HELP = (
    f"self-compress: weight of the mean bit depth against the training loss (default {SelfCompression.gamma}); "
    "higher: fewer bits and a smaller file, at some accuracy"
)
PRESERVE_HELP = f"self-compress: critical training examples in the preservation set (default {SelfCompression.preserve}; 0: none)"
PRESERVATION_HELP = (
    f"your critical examples: a .safetensors file holding {PRESERVATION_KEYS} (it may be the --data file), measured "
    "before and after; self-compress guards them instead of the --preserve examples it would choose"
)
KEEP_HELP = (
    "comma-separated layers to keep uncompressed, stored as floats (module names or shell patterns: conv1,fc3 or "
    "'layer3.*'; or their weights' names as inspect shows them: fc3.weight, '*.in_proj_weight'; a recurrent layer, or "
    "attention's three separate projections, named by one of its weights is kept whole); the targets count the other "
    "layers' weights; fcpts, l2 and the retraining methods still tune them"
)
CALIB_HELP = (
    f"calibration samples from the training split (default {api.DEFAULT_CALIB}, or the whole split if it is smaller; sws and "
    "self-compress retrain on the whole split unless this says fewer)"
)
CLIP_HELP = "uniform grid range: max (the largest weight) or mse (clipped where the rounding error is least; 4-5 bits)"

# The options compress and sweep share, declared once.
ModelArg = Annotated[str, typer.Argument(help=MODEL_HELP)]
MethodOpt = Annotated[MethodName, typer.Option("--method", "-m", help="compression method")]
BitsOpt = Annotated[int | None, typer.Option(help=BITS_HELP)]
LevelsOpt = Annotated[int | None, typer.Option(help=LEVELS_HELP)]
AllocationOpt = Annotated[AllocationName | None, typer.Option(help=ALLOCATION_HELP)]
PerChannelOpt = Annotated[bool, typer.Option(help="one quantization scale (or l2 grid) per output channel")]
ClipOpt = Annotated[ClipName, typer.Option(help=CLIP_HELP)]
GroupSizeOpt = Annotated[int | None, typer.Option(help=GROUP_HELP)]
REPAIR_HELP = (
    "after fold or channel-l1: auto (fold's default: ar on a model with BatchNorm, else none), "
    "none (channel-l1's default), ar (fold only; data-free), dir (DeepInversion samples), data (needs --data)"
)
RepairOpt = Annotated[RepairName | None, typer.Option(help=REPAIR_HELP)]
ClusteringOpt = Annotated[
    ClusteringName | None, typer.Option(help="fold: ward (default; the paper's LLM code) or kmeans (its CNN code)")
]
PruneFractionOpt = Annotated[
    float, typer.Option(help="fold: share of the removed channels dropped outright (smallest L1 first) before folding the rest")
]
IterationsOpt = Annotated[int | None, typer.Option(help=ITERATIONS_HELP)]
InitOpt = Annotated[InitName | None, typer.Option(help=INIT_HELP)]
BatchSizeOpt = Annotated[int | None, typer.Option(help=BATCH_HELP)]
RoundsOpt = Annotated[int | None, typer.Option(help=ROUNDS_HELP)]
TransformStepsOpt = Annotated[int | None, typer.Option(help=TRANSFORM_HELP)]
ReconstructionStepsOpt = Annotated[int | None, typer.Option(help=RECONSTRUCTION_HELP)]
EpochsOpt = Annotated[int | None, typer.Option(help=f"sws: passes over the training split (default {SoftWeightSharing.epochs})")]
TauOpt = Annotated[float | None, typer.Option(help=TAU_HELP)]
GammaOpt = Annotated[float | None, typer.Option(help=GAMMA_HELP)]
StepsOpt = Annotated[int | None, typer.Option(help=f"self-compress: training steps (default {SelfCompression.steps})")]
PreserveOpt = Annotated[int | None, typer.Option(help=PRESERVE_HELP)]
PreservationSetOpt = Annotated[Path | None, typer.Option(help=PRESERVATION_HELP)]
KeepOpt = Annotated[str | None, typer.Option(help=KEEP_HELP)]
DataOpt = Annotated[str | None, typer.Option(help=DATA_HELP)]
CalibOpt = Annotated[int | None, typer.Option(help=CALIB_HELP)]
SeedOpt = Annotated[
    int | None,
    typer.Option(
        help="seed for calibration sampling and any randomness (default 0); a method that optimises (fcpts, l2, sws, "
        "self-compress) gives the same file for a seed on the same CPU and thread count"
    ),
]
RawDtypeOpt = Annotated[str | None, typer.Option(help=RAW_DTYPE_HELP)]
ArchOpt = Annotated[str | None, typer.Option(help="package.module:factory building the architecture")]


def build_methods(
    method: str,
    bits: int | None,
    allocation: str | None,
    per_channel: bool,
    seed: int,
    repair: str | None = None,
    levels: int | None = None,
    clustering: str | None = None,
    prune_fraction: float = 0.0,
    raw_dtype: str | None = None,
    clip: str = "max",
    iterations: int | None = None,
    batch_size: int | None = None,
    rounds: int | None = None,
    transform_steps: int | None = None,
    reconstruction_steps: int | None = None,
    group_size: int | None = None,
    init: str | None = None,
    epochs: int | None = None,
    tau: float | None = None,
    gamma: float | None = None,
    steps: int | None = None,
    preserve: int | None = None,
) -> list:
    """The method chain a command line asks for: ``--bits`` (uniform) or ``--levels`` (k-means) after a
    pruning method quantizes the survivors.

    Structural methods (fold, channel-l1) get the handle's input shape from ``compress()``;
    ``clustering`` and ``prune_fraction`` configure fold; ``raw_dtype`` goes to L², which sizes the
    file in it; ``clip`` and ``group_size`` to uniform quantization; ``iterations`` and ``init`` to FCPTS;
    ``rounds``, ``transform_steps`` and ``reconstruction_steps`` to L²; ``epochs``, ``tau`` and ``levels``
    (its mixture components) to soft weight-sharing; ``gamma``, ``steps`` and ``preserve`` to self-compression;
    ``batch_size`` to FCPTS, L², soft weight-sharing or self-compression.
    """
    # An option the chosen method would ignore is refused: a silently ignored option is a wrong result.
    if bits is not None and levels is not None:
        raise BudgetError("give --bits (uniform grid) or --levels (k-means), not both")
    if method == "uniform" and levels is not None:
        raise BudgetError("--levels sets k-means levels (-m kmeans); uniform takes --bits")
    if method == KMeansQuantization.name and (bits is not None or per_channel):
        raise BudgetError("k-means takes --levels and keeps one table per tensor; drop --bits and --per-channel")
    if per_channel and method not in ("uniform", L2.name) and bits is None:
        raise BudgetError("--per-channel configures uniform quantization (-m uniform, or --bits after pruning) and l2")
    if clip != "max" and method != "uniform" and bits is None:
        raise BudgetError("--clip configures uniform quantization (-m uniform, or --bits after pruning)")
    if group_size is not None and method != "uniform" and bits is None:
        raise BudgetError("--group-size configures uniform quantization (-m uniform, or --bits after pruning)")
    _check_allocation(method, allocation)
    if method not in (Fold.name, ChannelL1.name) and repair is not None:
        raise BudgetError("--repair configures --method fold and channel-l1 only")
    if method != Fold.name and (clustering is not None or prune_fraction != 0.0):
        raise BudgetError("--clustering and --prune-fraction configure --method fold only")
    l2_schedule = _given(rounds=rounds, transform_steps=transform_steps, reconstruction_steps=reconstruction_steps)
    batch = _given(batch_size=batch_size)
    if method != FCPTS.name and init is not None:
        raise BudgetError("--init configures --method fcpts only")
    if method != FCPTS.name and iterations is not None:
        raise BudgetError("--iterations configures --method fcpts only (l2: --rounds, --transform-steps, --reconstruction-steps)")
    if method != L2.name and l2_schedule:
        raise BudgetError("--rounds, --transform-steps and --reconstruction-steps configure --method l2 only")
    if method not in (FCPTS.name, L2.name, SoftWeightSharing.name, SelfCompression.name) and batch:
        raise BudgetError("--batch-size configures --method fcpts, l2, sws and self-compress only")
    retraining = _given(epochs=epochs, tau=tau)
    if method != SoftWeightSharing.name and retraining:
        raise BudgetError("--epochs and --tau configure --method sws only")
    bit_depths = _given(gamma=gamma, steps=steps, preserve=preserve)
    if method != SelfCompression.name and bit_depths:
        raise BudgetError("--gamma, --steps and --preserve configure --method self-compress only")
    if method == SoftWeightSharing.name:
        if bits is not None or per_channel:
            raise BudgetError("sws learns its own shared levels; drop --bits/--per-channel (--levels sets its components)")
        return [SoftWeightSharing(seed=seed, **_given(components=levels), **retraining, **batch)]
    if method == SelfCompression.name:
        if bits is not None or levels is not None or per_channel:
            raise BudgetError(
                "self-compress learns a bit depth per channel; drop --bits/--levels/--per-channel (--gamma sets the trade)"
            )
        return [SelfCompression(seed=seed, **bit_depths, **batch)]
    if method == KMeansQuantization.name:
        return [KMeansQuantization(levels if levels is not None else 16)]
    if method == "uniform":
        return [UniformQuantization(bits if bits is not None else 8, per_channel, clip, group_size)]
    if method == L2.name:
        if bits is not None or levels is not None:
            raise BudgetError("l2 learns its own quantization grids for the --ratio target; drop --bits/--levels")
        return [L2(per_channel=per_channel, seed=seed, **_given(raw_dtype=raw_dtype), **l2_schedule, **batch)]
    if method in (Fold.name, ChannelL1.name):
        if method == Fold.name:
            options = _given(repair=repair, allocation=allocation, clustering=clustering)
            chain = [Fold(seed=seed, prune_fraction=prune_fraction, **options)]
        else:
            chain = [ChannelL1(seed=seed, **_given(repair=repair, allocation=allocation))]
    else:
        schedule = {**_given(iterations=iterations, init=init), **batch}
        chain = [MagnitudePruning(**_given(allocation=allocation)) if method == "magnitude" else FCPTS(seed=seed, **schedule)]
    if bits is not None:
        chain.append(UniformQuantization(bits, per_channel, clip, group_size))
    if levels is not None:
        chain.append(KMeansQuantization(levels))
    return chain


def methods_for(options: dict) -> list:
    """The method chain of a compress or sweep command line, from its options by name (the two take the same)."""
    o = options
    return build_methods(
        o["method"].value,
        o["bits"],
        o["allocation"] and o["allocation"].value,
        o["per_channel"],
        o["seed"] or 0,
        repair=o["repair"] and o["repair"].value,
        levels=o["levels"],
        clustering=o["clustering"] and o["clustering"].value,
        prune_fraction=o["prune_fraction"],
        raw_dtype=o["raw_dtype"],
        clip=o["clip"].value,
        iterations=o["iterations"],
        batch_size=o["batch_size"],
        rounds=o["rounds"],
        transform_steps=o["transform_steps"],
        reconstruction_steps=o["reconstruction_steps"],
        group_size=o["group_size"],
        init=o["init"] and o["init"].value,
        epochs=o["epochs"],
        tau=o["tau"],
        gamma=o["gamma"],
        steps=o["steps"],
        preserve=o["preserve"],
    )


def refuse_searched(method: str, ratio: bool, bits: int | None, levels: int | None) -> None:
    """With a ratio target a lone quantizer's bits or levels are what the search picks: a value given for them
    would be ignored."""
    if ratio and method in ("uniform", KMeansQuantization.name) and (bits is not None or levels is not None):
        given = "--bits" if bits is not None else "--levels"
        raise BudgetError(f"with --ratio the {method} search picks {given} (the most whose file fits); drop {given}")


def _names(text: str | None) -> list[str]:
    """A comma-separated list of names, without empty entries."""
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _check_allocation(method: str, allocation: str | None) -> None:
    """``--allocation`` names a magnitude allocation for magnitude pruning, a group allocation for fold and channel-l1."""
    if allocation is None:
        return
    if method == MagnitudePruning.name:
        if allocation not in ALLOCATIONS:
            raise BudgetError(f"--method magnitude takes --allocation {', '.join(ALLOCATIONS)}, not {allocation}")
    elif method in (Fold.name, ChannelL1.name):
        if allocation not in GROUP_ALLOCATIONS:
            raise BudgetError(f"--method {method} takes --allocation {' or '.join(GROUP_ALLOCATIONS)}, not {allocation}")
    else:
        raise BudgetError("--allocation configures --method magnitude, fold and channel-l1 only")


def _given(**options) -> dict:
    """The options the command line set; the others keep the method's defaults."""
    return {k: v for k, v in options.items() if v is not None}


def preserving(preservation_set: Path | None, preserve: int | None) -> Path | None:
    """``--preservation-set``, refused beside ``--preserve``: self-compression guards your examples instead of
    the ones it would choose."""
    if preservation_set is not None and preserve is not None:
        raise BudgetError("--preservation-set gives the examples self-compress guards; drop --preserve, which counts its own")
    return preservation_set


def _distinct_percent(share: float, other: float) -> str:
    """``share`` as a percentage with two decimals, or as many more (up to 12) as it takes to differ from ``other``'s:
    18 more zeros among 430,500 weights read "80.004 % … above the 80.000 %", not "80.00 % … above the 80.00 %"."""
    for decimals in range(2, 13):
        if f"{100 * share:.{decimals}f}" != f"{100 * other:.{decimals}f}":
            break
    return f"{100 * share:.{decimals}f}"


def seed_value(seed: int | None, methods: list) -> int:
    """``--seed``, refused where nothing random runs: no calibration draw, no method with a seed."""
    if seed is not None and all(m.needs == "none" and not hasattr(m, "seed") for m in methods):
        raise BudgetError(f"{' + '.join(m.name for m in methods)} draws nothing at random; drop --seed")
    return 0 if seed is None else seed


def build_budget(ratio: float | None, sparsity: float | None, params: float | None) -> Budget | None:
    given = [v for v in (ratio, sparsity, params) if v is not None]
    if not given:
        return None
    if len(given) > 1:
        raise BudgetError("give one target: --ratio, --sparsity or --params")
    return Budget(ratio=ratio, sparsity=sparsity, params=params)


def _quality(report: dict) -> tuple[str, ...]:
    """The measured columns of a report (``_quality_columns``): for a classifier, accuracy before and after and
    the share of test inputs it classifies as the original does; for an encoder, the cosine and top-10 neighbour
    agreement of its embeddings with the uncompressed model's; for a causal language model, its perplexity before
    and after and the share of tokens whose most likely next token is the original's."""
    if "fidelity" in report:
        return f"{report['fidelity']['cosine']:.4f}", f"{100 * report['fidelity']['top10']:.1f} %"
    if "perplexity" in report:
        measured = report["perplexity"]
        return f"{measured['before']:.2f}", f"{measured['after']:.2f}", f"{100 * measured['top1_agreement']:.1f} %"
    if hf.is_hf_source(report["source"]):
        return ("-",) * len(_quality_columns([report]))
    percent = lambda k: f"{100 * report[k]:.2f} %" if k in report else "-"  # noqa: E731
    return percent("accuracy_before"), percent("accuracy_after"), percent("agreement")


def _quality_columns(reports: list[dict]) -> tuple[str, ...]:
    sources = [r["source"].get(hf.SOURCE_KEY) for r in reports]
    if any(isinstance(s, dict) and hf.is_causal_lm_class(str(s.get("class", ""))) for s in sources):
        return "ppl before", "ppl after", "next-token agreement"
    return ("cosine", "top-10 agreement") if any(sources) else ("acc before", "acc after", "agreement")


def _print_report(report: dict) -> None:
    table = Table(title=f"{', '.join(m['name'] for m in report['methods'])} → {report['file']}")
    for col in ("original bytes", "file bytes", "ratio", "params", "sparsity", *_quality_columns([report]), "seconds"):
        table.add_column(col, justify="right")
    table.add_row(
        f"{report['original_bytes']:,}",
        f"{report['file_bytes']:,}",
        f"{report['ratio']:.2f}×",
        f"{report['params_before']:,} → {report['params_after']:,}",
        f"{100 * report['sparsity']:.2f} %",
        *_quality(report),
        f"{report['seconds']:.2f}",
    )
    out.print(table)
    if "first_original_bytes" in report:
        earlier = " + ".join(m["name"] for stage in report["source"].get("earlier", []) for m in stage.get("methods", []))
        out.print(
            f"the input is a .press file, so 'original bytes' are its reloaded model's; against the model before "
            f"the first stage ({earlier or 'earlier stages'}): {report['first_original_bytes']:,} → "
            f"{report['file_bytes']:,} bytes, {report['overall_ratio']:.2f}×",
            highlight=False,
            soft_wrap=True,
        )
    given = report.get("input_file_bytes")
    pressed = "first_original_bytes" in report  # the input is a .press file
    reduced = not pressed and given is not None and given < 0.75 * report["original_bytes"]  # e.g. weights in bfloat16
    if (pressed or reduced) and given is not None and given < report["file_bytes"]:
        why = (
            "the input's weights were already coded more compactly than this pipeline codes them (e.g. quantized to fewer bits)"
            if pressed
            else "it holds the weights in fewer bits than fp32 (e.g. bfloat16), and the ratio is against fp32"
        )
        err.print(f"warning: the new file is larger than its input ({given:,} bytes): {why}")
    elif reduced:
        err.print(
            f"note: the input takes {given:,} bytes, fewer than the model in fp32 (e.g. weights in bfloat16): against it "
            f"the file is {given / report['file_bytes']:.2f}× smaller",
        )
    if cut := report.get("sentences_cut"):
        err.print(
            f"note: {cut:,} test sentence{'s are' if cut > 1 else ' is'} longer than the model's positions and "
            "measured on the tokens that fit",
        )
    if report["ratio"] < 1:
        err.print(
            f"warning: the file is larger than the model in fp32 ({report['original_bytes']:,} bytes): these settings "
            "store more than the weights hold (e.g. more --levels than a layer has weights, or a scale per few weights)",
        )
    if searched := report.get("searched"):
        ((setting, _),) = searched.items()
        err.print(
            f"note: the {report['budget']['ratio']:g}x ratio was met by searching the {setting}: {_setting(searched)}, "
            f"the {'least' if setting in ('sparsity', 'params') else 'most'} whose file fits",
        )
    if rounded := report.get("survivors_rounded_to_zero"):
        asked = "sparsity" in report["budget"]
        pruned = report["budget"]["sparsity"] if asked else report["searched"]["sparsity"]
        err.print(
            f"note: {rounded:,} weights that pruning kept rounded to zero when quantized (under half a step), so the "
            f"file is {_distinct_percent(report['sparsity'], pruned)} % sparse, above the "
            f"{_distinct_percent(pruned, report['sparsity'])} % {'asked' if asked else 'pruned'}",
        )
    if fit := (report["layers"].get("sws") or [{}])[0].get("fit"):
        pilots = ", ".join(f"τ {p['tau']:.3g}: {p['bytes']:,} B" for p in fit["pilots"])
        shifted = (
            f"; no pilot's file fit, so the snap pruned more than the trained prior (zero-spike shift {fit['zero_shift']:.3g}), "
            "which costs accuracy"
            if fit["zero_shift"]
            else ""
        )
        share = 100 * report["file_bytes"] / fit["target_bytes"]
        err.print(
            f"note: sws kept τ {fit['tau']:.3g} after {len(fit['pilots'])} pilot run(s) of {fit['pilots'][0]['epochs']} "
            f"epoch(s) ({pilots}); the file "
            f"takes {share:.0f} % of the {fit['target_bytes']:,} bytes allowed{shifted}",
        )
    _note_auto_repair(report)
    if kept := report.get("preservation"):
        err.print(f"preservation set ({kept['samples']:,} examples): accuracy {_kept(kept)}")
        _warn_test_overlap(kept)
    if report.get("kept_layers"):
        err.print(f"note: kept uncompressed, by request: {', '.join(report['kept_layers'])}")
    if report["uncompressed_layers"]:
        listed = report["uncompressed_layers"].items()
        layers = ", ".join(f"{name or 'the model itself'} ({v['type']}, {v['params']:,} parameters)" for name, v in listed)
        err.print(f"note: stored uncompressed, no method here codes these layers' weights: {layers}")


@app.command()
@friendly
def compress(
    model: ModelArg,
    method: MethodOpt,
    output: Annotated[Path, typer.Option("-o", "--output", help="the .press file to write")],
    sparsity: Annotated[float | None, typer.Option(help="target fraction of zero weights")] = None,
    ratio: Annotated[float | None, typer.Option(help="target original bytes / file bytes")] = None,
    params: Annotated[float | None, typer.Option(help="target fraction of parameters removed")] = None,
    bits: BitsOpt = None,
    levels: LevelsOpt = None,
    allocation: AllocationOpt = None,
    per_channel: PerChannelOpt = False,
    clip: ClipOpt = "max",
    group_size: GroupSizeOpt = None,
    repair: RepairOpt = None,
    clustering: ClusteringOpt = None,
    prune_fraction: PruneFractionOpt = 0.0,
    iterations: IterationsOpt = None,
    init: InitOpt = None,
    batch_size: BatchSizeOpt = None,
    rounds: RoundsOpt = None,
    transform_steps: TransformStepsOpt = None,
    reconstruction_steps: ReconstructionStepsOpt = None,
    epochs: EpochsOpt = None,
    tau: TauOpt = None,
    gamma: GammaOpt = None,
    steps: StepsOpt = None,
    preserve: PreserveOpt = None,
    preservation_set: PreservationSetOpt = None,
    keep: KeepOpt = None,
    data: DataOpt = None,
    calib: CalibOpt = None,
    seed: SeedOpt = None,
    raw_dtype: RawDtypeOpt = None,
    arch: ArchOpt = None,
    report: Annotated[Path | None, typer.Option(help="write the JSON report here")] = None,
    plot: Annotated[Path | None, typer.Option(help="the per-layer allocation as a plot (.png, .svg or .pdf, by suffix)")] = None,
) -> None:
    """Compress MODEL with a method and write a .press file."""
    check_outputs(output, report, plot, keep=(model,))
    check_press_suffix(output)
    check_suffix(report, (".json",), "the report is JSON")
    check_suffix(plot, PLOT_SUFFIXES, "the plot's format follows its suffix")
    handle = api.load_model(model, arch)
    refuse_searched(method.value, ratio is not None, bits, levels)
    methods = methods_for(locals())
    result = api.press(
        handle,
        methods,
        build_budget(ratio, sparsity, params),
        out=output,
        data=data,
        calib=calib,
        seed=seed_value(seed, methods),
        raw_dtype=raw_dtype,
        keep=_names(keep),
        preservation=preserving(preservation_set, preserve),
    )
    # The files first: printing can fail (a closed pipe), and must not lose them.
    if plot is not None:
        from netpress.report import plot_allocation

        rows = result["layers"][methods[0].name]
        removed = "share of channels removed per group"
        titles = {
            L2.name: "per-layer bits per weight",
            SelfCompression.name: "per-layer bit depth",
            Fold.name: removed,
            ChannelL1.name: removed,
        }
        what = titles.get(methods[0].name, "per-layer sparsity")
        plot_allocation(rows, plot, f"{model}: {methods[0].name} {what}")
    if report is not None:
        codec.write_file(report, (json.dumps(result, indent=2) + "\n").encode())
    _print_report(result)
    _note_raw_dtype(handle, methods, raw_dtype)
    _note_quantized_twice(handle, methods)


# The target lists of ``sweep``: budget kind -> option and an example value for messages.
TARGET_LISTS = {"ratio": ("--ratios", "5,10,20"), "sparsity": ("--sparsities", "0.5,0.8,0.9"), "params": ("--params", "0.1,0.3")}


def _float_list(text: str, option: str, example: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise BudgetError(f"{option} takes comma-separated numbers, e.g. {option} {example}; got {text!r}")
    return values


@app.command()
@friendly
def sweep(
    model: ModelArg,
    method: MethodOpt,
    ratios: Annotated[str | None, typer.Option(help="comma-separated ratio targets, e.g. 5,10,20,40,80")] = None,
    sparsities: Annotated[str | None, typer.Option(help="comma-separated sparsity targets, e.g. 0.5,0.8,0.9")] = None,
    params: Annotated[
        str | None, typer.Option(help="comma-separated fractions of parameters removed, e.g. 0.1,0.3,0.5 (fold, channel-l1)")
    ] = None,
    bits: BitsOpt = None,
    levels: LevelsOpt = None,
    allocation: AllocationOpt = None,
    per_channel: PerChannelOpt = False,
    clip: ClipOpt = "max",
    group_size: GroupSizeOpt = None,
    repair: RepairOpt = None,
    clustering: ClusteringOpt = None,
    prune_fraction: PruneFractionOpt = 0.0,
    iterations: IterationsOpt = None,
    init: InitOpt = None,
    batch_size: BatchSizeOpt = None,
    rounds: RoundsOpt = None,
    transform_steps: TransformStepsOpt = None,
    reconstruction_steps: ReconstructionStepsOpt = None,
    epochs: EpochsOpt = None,
    tau: TauOpt = None,
    gamma: GammaOpt = None,
    steps: StepsOpt = None,
    preserve: PreserveOpt = None,
    preservation_set: PreservationSetOpt = None,
    keep: KeepOpt = None,
    data: DataOpt = None,
    calib: CalibOpt = None,
    seed: SeedOpt = None,
    raw_dtype: RawDtypeOpt = None,
    arch: ArchOpt = None,
    out_dir: Annotated[Path, typer.Option(help="where the .press files go")] = Path("netpress-sweep"),
    plot: Annotated[
        Path | None, typer.Option(help="the accuracy-vs-bytes curve as a plot (.png, .svg or .pdf, by suffix)")
    ] = None,
    report: Annotated[Path | None, typer.Option(help="write the JSON reports here")] = None,
    workers: Annotated[
        int,
        typer.Option(
            help="processes on this machine that share the points; launched by torchrun, its processes share them instead"
        ),
    ] = 1,
) -> None:
    """Compress MODEL at several targets and show accuracy against the written file's bytes."""
    texts = {"ratio": ratios, "sparsity": sparsities, "params": params}
    given = {kind: _float_list(text, *TARGET_LISTS[kind]) for kind, text in texts.items() if text}
    if len(given) != 1:
        raise BudgetError("give one list of targets: --ratios, --sparsities or --params")
    targets = [(kind, value) for kind, values in given.items() for value in values]
    check_outputs(report, plot, keep=(model,), made=out_dir)
    check_suffix(plot, PLOT_SUFFIXES, "the plot's format follows its suffix")
    check_suffix(report, (".json",), "the reports are JSON")
    handle = api.load_model(model, arch)
    if plot is not None and data is None and handle.dataset is None:
        raise DataError("a curve needs a measure: pass --data (fortunes or a .txt file for a Hugging Face model)")
    refuse_searched(method.value, "ratio" in given, bits, levels)
    methods = methods_for(locals())
    budgets = [Budget(**{kind: value}) for kind, value in targets]
    with parallel.launched_group() as lead:
        results = api.sweep(
            handle,
            methods,
            budgets,
            out_dir=out_dir,
            data=data,
            calib=calib,
            seed=seed_value(seed, methods),
            raw_dtype=raw_dtype,
            workers=workers,
            keep=_names(keep),
            preservation=preserving(preservation_set, preserve),
        )
    if not lead:  # rank 0 of the launched group prints and writes what all of them made
        return
    label = "+".join(m.name for m in methods)
    # The files first: printing can fail (a closed pipe), and must not lose them.
    if plot is not None:
        from netpress.report import plot_curve

        if "fidelity" in results[0]:
            points = [(r["file_bytes"], r["fidelity"]["cosine"]) for r in results]
            plot_curve({label: points}, plot, f"{model}: embedding cosine vs file size", "mean cosine to the original (%)")
        elif "perplexity" in results[0]:
            points = [(r["file_bytes"], r["perplexity"]["top1_agreement"]) for r in results]
            ylabel = "tokens whose top next token is the original's (%)"
            plot_curve({label: points}, plot, f"{model}: next-token agreement vs file size", ylabel)
        else:
            points = [(r["file_bytes"], r["accuracy_after"]) for r in results]
            plot_curve({label: points}, plot, f"{model}: accuracy vs file size")
    if report is not None:
        codec.write_file(report, (json.dumps(results, indent=2) + "\n").encode())
    table = Table(title=f"{model}: {label} sweep")
    overall = handle.first_original_bytes is not None  # a .press input: also the ratio against the first stage's input
    searched = any("searched" in r for r in results)
    kept = "preservation" in results[0]
    columns = ("target", *(["searched"] if searched else []), "file bytes", "ratio", *(["overall ratio"] if overall else []))
    for col in (*columns, *_quality_columns(results), *(["your examples"] if kept else []), "seconds"):
        table.add_column(col, justify="right")
    for (kind, value), r in zip(targets, results):
        table.add_row(
            f"{kind} {value:g}",
            *([_setting(r.get("searched", {}))] if searched else []),
            f"{r['file_bytes']:,}",
            f"{r['ratio']:.2f}×",
            *([f"{r['overall_ratio']:.2f}×"] if overall else []),
            *_quality(r),
            *([_kept(r["preservation"])] if kept else []),
            f"{r['seconds']:.1f}",
        )
    out.print(table)
    _note_auto_repair(results[0])  # one model: every point ran the same repair
    _note_raw_dtype(handle, methods, raw_dtype)
    _note_quantized_twice(handle, methods)
    if kept:
        _warn_test_overlap(results[0]["preservation"])


def _note_auto_repair(report: dict) -> None:
    """Which repair fold's ``auto`` ran: it depends on the model, so the command line says it."""
    if any(m["name"] == Fold.name and m["repair"] == "auto" for m in report["methods"]):
        if report["layers"][Fold.name][-1]["repair"] == "ar":
            err.print("note: fold's auto repair ran ar: the data-free correction of the merged channels' BatchNorm scales")
        else:
            err.print("note: fold's auto repair ran none: the model has no BatchNorm statistics to correct")


def _reference_arch(reference: str, arch: str | None) -> str | None:
    """--arch builds the reference too, unless it brings its own architecture: a zoo name, or a .press file made from
    a zoo model or a Hugging Face directory."""
    if arch is None or reference.startswith("zoo:"):
        return None
    if Path(reference).suffix.lower() == ".press" and Path(reference).is_file():
        source = codec.read(reference, lazily=True).source
        return None if isinstance(source.get("zoo"), str) or hf.is_hf_source(source) else arch
    return arch


def _note_raw_dtype(handle: api.ModelHandle, methods: list, raw_dtype: str | None) -> None:
    """A .press input in fp16 keeps its floats in fp16 unless told otherwise: the command line says so."""
    if raw_dtype is None and handle.raw_dtype and not any(getattr(m, "raw_dtype", None) for m in methods):
        err.print(
            f"note: the floats stored as floats (survivors, biases) are in {handle.raw_dtype}, as the input file stores "
            "them; --raw-dtype fp32 keeps them in full"
        )


def _note_quantized_twice(handle: api.ModelHandle, methods: list) -> None:
    """Quantizing a quantized file rounds every weight twice: the command line says what to do instead."""
    earlier = [name for stage in api.earlier_methods(handle) for name in stage]
    quantized = [name for name in earlier if getattr(METHODS.get(name), "quantizes", False)]
    if quantized and getattr(methods[-1], "quantizes", False):
        err.print(
            f"note: the input was already quantized by {quantized[-1]}, and {methods[-1].name} rounds its values again; "
            "compressing the original model instead usually keeps more accuracy at the same size"
        )


def _kept(kept: dict) -> str:
    """Accuracy on your preservation set, before → after."""
    return f"{100 * kept['accuracy_before']:.2f} % → {100 * kept['accuracy_after']:.2f} %"


def _warn_test_overlap(kept: dict) -> None:
    if shared := kept.get("in_test_split"):
        err.print(
            f"warning: {shared:,} of the {kept['samples']:,} preservation examples {'is' if shared == 1 else 'are'} also "
            "in the test split, so their accuracy is not separate from it",
        )


def _setting(searched: dict) -> str:
    """A ratio search's setting as a table shows it: a fraction in %, bits or levels as they are."""
    return "".join(f"{k} {100 * v:.2f} %" if k in ("sparsity", "params") else f"{v} {k}" for k, v in searched.items())


@app.command("eval")
@friendly
def eval_(
    model: str = typer.Argument(..., help=MODEL_HELP),
    data: str | None = typer.Option(
        None,
        help="dataset name or .safetensors data file (default: the zoo model's own); fortunes (the default) or a .txt "
        "file for a Hugging Face model, measured on its test split",
    ),
    arch: str | None = typer.Option(None, help="package.module:factory building the architecture"),
    reference: str | None = typer.Option(
        None,
        help="the uncompressed model, compared with MODEL: a classifier's (any model source, with --arch if it needs one) "
        "by the share of test inputs both classify alike; a Hugging Face model's directory (its tokenizer reads the text)",
    ),
    preservation_set: Path | None = typer.Option(
        None, help=f"your critical examples, measured too: a .safetensors file holding {PRESERVATION_KEYS}"
    ),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Top-1 and per-class accuracy of a classifier on the test split (with --reference, also the original's, and
    how often the two agree); a Hugging Face encoder's fidelity to its original, or a causal language model's
    perplexity next to its original's."""
    handle = api.load_model(model, arch)
    dataset = data if data is not None else handle.dataset
    if hf.is_hf_source(handle.source):
        if preservation_set is not None:
            raise DataError("--preservation-set holds a classifier's labelled inputs; a Hugging Face model reads sentences")
        _eval_encoder(model, handle, dataset or "fortunes", reference, as_json)
        return
    if dataset is None:
        raise DataError("pass --data to name the dataset to evaluate on")
    kept = None
    if preservation_set is not None:
        kept = api.resolve_dataset(load_preservation_set(preservation_set), input_shape=handle.input_shape)
    original = None
    if reference is not None:  # before any work: a wrong reference is refused at once
        if Path(reference).is_dir():
            raise DataError(f"{model} is a classifier; --reference names the classifier it came from, not {reference!r}")
        original = api.load_model(reference, _reference_arch(reference, arch))
        for kind in ("zoo", "arch"):  # a zoo model and a factory are not compared: the factory may build it
            mine, theirs = handle.source.get(kind), original.source.get(kind)
            if mine and theirs and mine != theirs:
                raise DataError(f"{model} was made from {mine} and --reference is {theirs}: compare a file with its original")
    test = api.resolve_dataset(dataset, "test", handle.input_shape)  # the checks compress makes
    measured = api.evaluate(handle.module, test)
    result = measured.to_dict()
    result.update(model=model, dataset=dataset)
    if original is not None:
        before = api.evaluate(original.module, test)
        result.update(reference=reference, reference_accuracy=before.accuracy, agreement=measured.agreement(before))
    if kept is not None:
        shared = set(sample_digests(test))
        result["preservation"] = {
            "samples": len(kept),
            "accuracy": api.evaluate(handle.module, kept).accuracy,
            "in_test_split": sum(digest in shared for digest in sample_digests(kept)),
        }
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{model} on {dataset} (test split)")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    for label, acc in result["per_class"].items():
        table.add_row(label, f"{100 * acc:.2f} %")
    table.add_row(Text("all", style="bold"), Text(f"{100 * result['accuracy']:.2f} %", style="bold"))
    out.print(table)
    out.print(f"{result['params']:,} parameters, {result['samples']:,} samples")
    if reference is not None:
        out.print(
            f"{reference}: {100 * result['reference_accuracy']:.2f} %; the two classify {100 * result['agreement']:.2f} % "
            "of the test inputs alike",
            highlight=False,
            soft_wrap=True,
        )
    if kept is not None:
        out.print(f"your {len(kept):,} preservation examples: {100 * result['preservation']['accuracy']:.2f} %")
        _warn_test_overlap(result["preservation"])


def _eval_encoder(model: str, handle: api.ModelHandle, dataset: str, reference: str | None, as_json: bool) -> None:
    if reference is None and isinstance(handle.encoder, hf.TokenPredictor):  # a causal LM's directory, on its own
        measured = api.perplexity(handle, None, dataset)
        result = {"model": model, "dataset": dataset, "perplexity": measured["after"]}
        result.update(tokens=measured["tokens"], samples=measured["samples"])
        if as_json:
            print(json.dumps(result, indent=2))
            return
        sentences = f"{result['samples']:,} test sentence{'' if result['samples'] == 1 else 's'}"
        said = f"{model} on {sentences} of {dataset}: perplexity {result['perplexity']:.2f}"
        out.print(f"{said} over {result['tokens']:,} tokens", highlight=False, soft_wrap=True)
        return
    if reference is None:
        raise DataError(
            "a Hugging Face model is measured against the model it was compressed from: pass --reference DIR, its "
            "Hugging Face directory"
        )
    base = api.load_model(reference)
    if not hf.is_hf_source(base.source) or Path(reference).suffix.lower() == ".press":
        raise DataError(f"--reference names the uncompressed Hugging Face directory (with its tokenizer), not {reference!r}")
    result = api.compare_text(handle, base, dataset)
    result.update(model=model, reference=reference, dataset=dataset)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if "cosine" in result:
        measured = f"mean cosine {result['cosine']:.4f}, top-10 neighbour agreement {100 * result['top10']:.1f} %"
    else:
        measured = (
            f"perplexity {result['after']:.2f} (the reference: {result['before']:.2f}) over {result['tokens']:,} tokens, "
            f"top next token the reference's at {100 * result['top1_agreement']:.1f} % of them"
        )
    said = f"{model} against {reference} on {result['samples']:,} {dataset} sentences: {measured}"
    out.print(said, highlight=False, soft_wrap=True)


@app.command()
@friendly
def inspect(
    file: Path = typer.Argument(..., help="a .press file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Per-tensor table of a .press file: shape, sparsity, levels, bytes, bits/weight, order-0 entropy."""
    info = api.inspect(file)
    if as_json:
        print(json.dumps(info, indent=2))
        return
    table = Table(title=f"{file} — {info['file_bytes']:,} bytes")
    for col in ("tensor", "shape", "kind", "coding", "sparsity", "levels", "bytes", "bits/w", "order-0 entropy"):
        table.add_column(col, justify="left" if col in ("tensor", "kind", "coding") else "right")
    half = {"float16": "fp16", "bfloat16": "bf16"}  # floats stored in 16 bits: shown beside the kind
    for row in info["tensors"]:
        table.add_row(
            row["name"],
            "×".join(map(str, row["shape"])) or "scalar",
            " ".join([row["kind"], *([half[row["dtype"]]] if row.get("dtype") in half else [])]),
            row["coding"],
            f"{100 * row['sparsity']:.1f} %" if "sparsity" in row else "",
            str(row.get("levels") or ""),
            f"{row['bytes']:,}",
            f"{row['bits_per_weight']:.3f}",
            f"{row['entropy_bound_bytes']:,.0f}" if "entropy_bound_bytes" in row else "",
        )
    out.print(table)
    # The parts add up to the file: a sparse tensor's survivors and a quantized one's level table are
    # neither coded symbols nor raw tensors, and a reader adding the line up should find them.
    values = info["streams_bytes"] - info["payload_bytes"] - info["side_bytes"] - info["raw_bytes"]
    out.print(
        f"coded {info['payload_bytes']:,} B (order-0 entropy {info['entropy_bound_bytes']:,.0f} B) + models "
        f"{info['side_bytes']:,} B + survivor values and level tables {values:,} B + raw {info['raw_bytes']:,} B "
        f"+ header {info['file_bytes'] - info['streams_bytes']:,} B = file {info['file_bytes']:,} B; "
        f"{info['params']:,} stored floats (parameters and buffers); {100 * info['sparsity']:.2f} % of the coded weights are zero"
    )


@app.command()
@friendly
def decompress(
    file: Path = typer.Argument(..., help="a .press file"),
    output: Path = typer.Option(..., "-o", "--output", help="the .safetensors file to write"),
) -> None:
    """Write the exact tensors of a .press file as a plain safetensors state dict, each in the dtype the file
    stores it (an L² file's fp16 biases stay fp16; load_state_dict casts them)."""
    from safetensors.torch import save

    check_outputs(output, keep=(file,))
    check_suffix(output, (".safetensors",), "the output is a safetensors file, recognised by its suffix")
    state, copies = _unshared(codec.read(file).state_dict())
    size = codec.write_file(output, save(state))
    tied = f", {copies} of them copies under a tied name" if copies else ""
    out.print(f"wrote {output} ({size:,} bytes, {len(state)} tensors{tied})")


def _unshared(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """The state dict with a tied weight's later names as copies (safetensors refuses tensors that share memory, and a
    plain state dict has to load into an architecture without the tie), and how many were copied; non-finite values
    are refused."""
    seen: set[int] = set()
    unshared, copies = {}, 0
    for name, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):  # as eval and compress refuse it
            raise FormatError(f"{name} holds NaN or infinite values; the file was not written by a working model")
        value = value.contiguous()
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in seen:
            value, copies = value.clone(), copies + 1
        seen.add(storage)
        unshared[name] = value
    return unshared, copies


@zoo_app.command("list")
@friendly
def zoo_list() -> None:
    """The zoo's models with their recorded test accuracy."""
    manifest = zoo.load_manifest()
    table = Table(title="netpress zoo")
    for col in ("name", "description", "dataset", "test accuracy", "params", "checkpoint"):
        table.add_column(col)
    for name, entry in zoo.ZOO.items():
        rec = manifest.get(name, {})
        table.add_row(
            name,
            entry.description,
            entry.dataset,
            f"{100 * rec['test_accuracy']:.2f} %" if rec else "not trained",
            f"{rec['params']:,}" if rec else "",
            f"{rec['file_bytes']:,} B" if rec else "",
        )
    out.print(table)


@zoo_app.command("train")
@friendly
def zoo_train(
    name: str = typer.Argument(..., help="zoo model name"),
    seed: int = typer.Option(0, help="seed for initialisation, data order and augmentation"),
    epochs: int | None = typer.Option(None, help="override the recipe's epoch count"),
    device: str = typer.Option("cpu", help="torch device to train on (cpu, cuda)"),
    out_dir: Path = typer.Option(
        zoo.registry.TRAIN_DIR, help="where the checkpoint and its manifest go (the shipped ones: netpress/zoo/checkpoints)"
    ),
) -> None:
    """Train a zoo model with its fixed recipe, record it in OUT_DIR's manifest, and say whether it is the
    shipped checkpoint bit for bit."""
    record = zoo.train(name, seed=seed, epochs=epochs, out_dir=out_dir, device=device)
    out.print(f"{name}: test accuracy {100 * record['test_accuracy']:.2f} %, sha256 {record['sha256'][:12]}… in {out_dir}")
    shipped = zoo.load_manifest().get(name, {})
    if out_dir.resolve() == zoo.registry.CHECKPOINT_DIR.resolve() or not shipped:
        return
    if record["sha256"] == shipped["sha256"]:
        out.print("the shipped checkpoint, bit for bit")
    else:
        out.print(
            f"not the shipped checkpoint (sha256 {shipped['sha256'][:12]}…, test accuracy "
            f"{100 * shipped['test_accuracy']:.2f} %, from `{shipped['command']}` on torch {shipped['torch']}): another "
            "recipe, or float kernels that round differently on this CPU or torch build",
            highlight=False,
            soft_wrap=True,
        )


@app.command()
@friendly
def demo(
    output_dir: Path = typer.Option(Path("netpress-demo"), help="where the .press files go"),
) -> None:
    """Compress LeNet-5 in nine settings (quantization, pruning, FCPTS, L², model folding) and show one table of sizes
    and accuracy."""
    from netpress.demo import run_demo

    run_demo(output_dir, out)


def main() -> None:
    """The ``netpress`` command. A usage error (an unknown option, a value that is not a number) is one line too, and
    SIGTERM ends a run as Ctrl-C does, so the hidden file it was writing is removed, not left beside the output."""
    import signal

    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = app(standalone_mode=False)
    except _click_errors("UsageError") as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # `netpress` alone, or a group without its command: the help
            exc.show()
        else:
            command = exc.ctx.command_path if exc.ctx else "netpress"
            err.print(f"[bold red]error:[/] {escape(one_line(exc.format_message()))} (see {command} --help)", markup=True)
        code = 2
    except _click_errors("Abort"):  # Ctrl-C and SIGTERM where typer uses click's own handling (older typer)
        code = 130
    sys.exit(code or 0)  # Ctrl-C and SIGTERM: typer's 130


def _click_errors(name: str) -> tuple[type[Exception], ...]:
    """click's exception ``name``, and its twin in the copy of click that newer typer versions bundle."""
    import importlib

    kinds = []
    for module in ("click.exceptions", "typer._click.exceptions"):
        try:
            kinds.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(kinds)


def _terminated(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
