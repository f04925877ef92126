"""The errors netpress raises. Every user-facing failure is a ``NetpressError``.

The CLI turns any of them into one line on stderr and a non-zero exit code,
so each message must say what went wrong and, where possible, what to do.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable
from pathlib import Path


def one_line(exc: BaseException) -> str:
    """An exception's text on one line: torch's messages (a load_state_dict report) span several."""
    return " ".join(str(exc).split())


def file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be read as a file (missing, a directory, a pipe or device, no permission), or None."""
    if os.path.isdir(path):
        return f"{path}: is a directory, not a file"
    if not os.path.exists(path):
        return f"{path}: no such file"
    if not os.path.isfile(path):
        return f"{path}: not a regular file (a pipe or a device?)"
    if not os.access(path, os.R_OK):
        return f"{path}: no permission to read it"
    return None


def output_target(path: str | os.PathLike) -> Path:
    """The file an output path names: a symbolic link's target (written through, the link stays), else the path."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)


def output_mode(path: Path) -> int:
    """The permissions a file written at ``path`` gets: those of the file it replaces (a private model stays private),
    else the usual ones for a new file."""
    if path.is_file():
        return stat.S_IMODE(path.stat().st_mode)
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def check_writable(
    path: str | os.PathLike, *, keep: tuple[str | os.PathLike, ...] = (), made: str | os.PathLike | None = None
) -> None:
    """Refuse an output path before any work is done: a directory, a missing parent directory, or one of
    the user's inputs in ``keep`` (writing there would destroy it). ``made`` is a directory the command
    creates, with its parents, before it writes (sweep's ``--out-dir``), so a file directly in one of them
    need not have its directory yet; a file where one of those directories would go is refused. A symbolic link is
    checked at its target, where the file will be written."""
    path = output_target(path)
    if os.path.isdir(path):
        raise OutputError(f"{path}: is a directory; give a file name")
    name_max = _name_max(os.path.dirname(os.path.abspath(path)))
    if len(os.fsencode(os.path.basename(path))) > name_max:
        raise OutputError(f"{path}: the file name is longer than the {name_max} bytes the file system allows; give a shorter one")
    # Not normalised: ``missing/../x`` names a folder the file system cannot open, though ``abspath`` would drop it.
    parent = os.path.dirname(os.path.join(os.getcwd(), os.fspath(path)))
    if not os.path.isdir(parent):
        # a missing directory is fine if it is ``made`` or one of the parents made with it
        if made is None or os.path.commonpath([parent, os.path.join(os.getcwd(), os.fspath(made))]) != parent:
            raise OutputError(f"{path}: the directory {parent} does not exist")
        while not os.path.isdir(parent):  # the nearest existing folder is where the new ones are made
            if os.path.exists(parent):
                raise OutputError(f"{path}: {parent} is a file, not a folder; give another output directory")
            parent = os.path.dirname(parent)
    if not os.access(parent, os.W_OK):  # the file itself is replaced through a new file in this directory
        raise OutputError(f"{path}: no permission to write in {parent}; give a path you can write to")
    for source in keep:
        if os.path.exists(path) and os.path.exists(source) and os.path.samefile(path, source):
            raise OutputError(f"{path} is the input file; writing there would destroy it, so give another output path")


def _name_max(folder: str) -> int:
    """The longest file name the file system holding ``folder`` (or its nearest existing parent) takes."""
    while folder and not os.path.isdir(folder):
        folder = os.path.dirname(folder)
    try:
        return os.pathconf(folder or ".", "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows), or no answer: the common limit
        return 255


def check_suffix(path: str | os.PathLike | None, suffixes: tuple[str, ...], why: str) -> None:
    """Refuse an output name whose suffix would mislead: netpress and other tools go by it."""
    if path is not None and not isinstance(path, str | os.PathLike):
        raise OutputError(f"an output is named by its path (a str or pathlib.Path), got {type(path).__name__}")
    if path is not None and os.path.splitext(path)[1].lower() not in suffixes:
        raise OutputError(f"{path}: {why}; give it a name ending in {' or '.join(suffixes)}")


def check_press_suffix(path: str | os.PathLike) -> None:
    """A .press file must be named so: ``load_model`` and the CLI recognise it by the suffix alone."""
    if path is None:
        raise OutputError("name the .press file to write (a str or pathlib.Path ending in .press)")
    check_suffix(path, (".press",), "netpress recognises its files by the .press suffix")


def make_output_dir(path: str | os.PathLike) -> None:
    """Create an output directory (and its parents) before any work, or say why it cannot be one."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot use {path} as the output directory: {exc.strerror or exc}") from exc


class NetpressError(Exception):
    """Base class: a problem the user can act on (bad input, damaged file, impossible target)."""


class NetpressWarning(UserWarning):
    """A result the user should look at before shipping it (the CLI prints it as one "warning:" line)."""


class DataError(NetpressError):
    """A dataset is missing, empty or has the wrong shape."""


class ModelSourceError(NetpressError):
    """A model could not be loaded from what the user named."""


class UnsupportedModelError(NetpressError):
    """The model contains something a method cannot handle (named in the message)."""


class BudgetError(NetpressError):
    """A target that is malformed or cannot be met."""


class FormatError(NetpressError):
    """A .press file is damaged, truncated, of another version, or not a .press file."""


class OutputError(NetpressError):
    """An output file cannot be written where the user asked."""


SEED_LIMIT = 2**32  # the widest range every seeded library here takes (scikit-learn's k-means is the narrowest)


def check_seed(seed: int) -> None:
    """Refuse a seed some library would reject mid-run, before any work."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise BudgetError(f"seed must be an integer in [0, 2**32), got {seed!r}")


def check_whole(name: str, value: object, minimum: int, maximum: int | None = None, why: str = "") -> None:
    """A method setting that counts something (steps, samples, restarts, bits): a whole number ≥ ``minimum``, and at
    most ``maximum`` if given; ``why`` says what the range is."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum or (maximum is not None and value > maximum):
        span = f"≥ {minimum}" if maximum is None else f"from {minimum} to {maximum}"
        raise BudgetError(f"{name} must be a whole number {span}{why}, got {value!r}")


def check_choice(name: str, value: object, choices: Iterable[str]) -> None:
    """A method setting that names one of a few options."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise BudgetError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def check_flag(name: str, value: object) -> None:
    """A method setting that is on or off: a bool, not a truthy string."""
    if not isinstance(value, bool):
        raise BudgetError(f"{name} must be True or False, got {value!r}")


def check_real(
    name: str, value: object, minimum: float, *, inclusive: bool = True, maximum: float | None = None, why: str = ""
) -> None:
    """A method setting that is a finite real number ≥ ``minimum`` (> it unless ``inclusive``) and at most ``maximum``;
    ``why`` says what the maximum is."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BudgetError(f"{name} must be a finite number, got {value!r}")
    if value < minimum or (value == minimum and not inclusive):
        raise BudgetError(f"{name} must be {'≥' if inclusive else '>'} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise BudgetError(f"{name} must be at most {maximum:g}{why}, got {value!r}")
