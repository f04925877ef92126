"""One place that builds rich progress bars, so every long loop looks and behaves the same."""

from __future__ import annotations

import os
import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def progress_bar(shown: bool = True) -> Progress:
    """A transient progress bar on stderr; silent when stderr is not a terminal, NETPRESS_QUIET is set, or
    ``shown`` is False (a loop that is sometimes the user's wait and sometimes a step of a search)."""
    quiet = bool(os.environ.get("NETPRESS_QUIET")) or not sys.stderr.isatty() or not shown
    from rich.console import Console

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=quiet,
    )
