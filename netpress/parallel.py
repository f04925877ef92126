"""Independent pieces of work shared among processes with torch.distributed (DESIGN §8: an existing engine, not a
home-made scheduler). A sweep's points are independent: each process of a group takes every world-th one, and the
results are gathered to every process in the items' order.

Two ways to get a group: launch the processes with ``torchrun`` (on one machine or several), which sets the
rendezvous in the environment; or ask for ``workers`` local processes, which this module starts and joins over a
file rendezvous, the calling process being rank 0.
"""

from __future__ import annotations

import os
import pickle
import queue
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed import distributed_c10d

from netpress.errors import NetpressError, NetpressWarning, one_line

Item = TypeVar("Item")
RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "RANK")  # what torchrun sets beside WORLD_SIZE
JOIN_SECONDS = 60  # how long a finished sweep waits for its worker processes to exit before stopping them

_PYTHON_SHOWWARNING = warnings.showwarning  # a worker shows other warnings as Python does


def in_group() -> bool:
    """Whether this process belongs to an initialised torch.distributed group (torchrun, or the caller's own)."""
    return dist.is_available() and dist.is_initialized()


@contextmanager
def launched_group() -> Iterator[bool]:
    """Within it, this process is in the group ``torchrun`` launched it in (gloo: CPUs are enough), if it was
    launched with more than one process; yields whether this process is the one that prints and writes the shared
    results (rank 0, or a process outside any group). The others show no progress."""
    world = os.environ.get("WORLD_SIZE", "1")
    joining = not in_group() and world.isdigit() and int(world) > 1
    if joining:
        refused = f"WORLD_SIZE={world} says this process is one of a torchrun group, but it cannot join it"
        if missing := [name for name in RENDEZVOUS_VARIABLES if name not in os.environ]:
            raise NetpressError(f"{refused}: {', '.join(missing)} not set (launch it with torchrun, or unset WORLD_SIZE)")
        named = distributed_c10d._world.group_count
        try:
            dist.init_process_group("gloo")
        except (ValueError, RuntimeError) as exc:  # a peer unreachable, a port taken
            # torch counted a name for the group that did not form; fresh workers asked for later in this process
            # start their count at 0 and would wait at the rendezvous for keys under another name, for ever.
            distributed_c10d._world.group_count = named
            raise NetpressError(f"{refused}: {one_line(exc)}") from exc
    lead = not in_group() or dist.get_rank() == 0
    if not lead:
        os.environ["NETPRESS_QUIET"] = "1"
    try:
        yield lead
    finally:
        if joining:
            dist.destroy_process_group()


def shared(task: Callable[[list[Item]], list], items: Sequence[Item]) -> list:
    """``task`` on this rank's share of ``items`` (every world-th, from its rank), every rank's results gathered
    in the items' order. An error in any rank is raised in every rank, after all have finished their share."""
    rank, world = dist.get_rank(), dist.get_world_size()
    share = list(items[rank::world])
    try:
        outcome: list | BaseException = task(share) if share else []
    except Exception as exc:  # sent to the others, so that every rank raises it instead of waiting for this one
        outcome = exc if _picklable(exc) else NetpressError(f"{type(exc).__name__}: {exc}")
    gathered: list = [None] * world
    try:
        dist.all_gather_object(gathered, outcome)
    except RuntimeError as exc:  # gloo: a peer's connection closed
        raise NetpressError(
            f"a process of the group stopped before sharing its results (killed, or out of memory?): {one_line(exc)}"
        ) from exc
    for failure in gathered:
        if isinstance(failure, BaseException):
            raise failure
    results: list = [None] * len(items)
    for r, part in enumerate(gathered):
        results[r::world] = part
    return results


def on_local_workers(workers: int, task: Callable[[list[Item]], list], items: Sequence[Item]) -> list:
    """``shared`` over ``workers`` processes on this machine: this one and ``workers - 1`` it starts, each with
    an equal part of this process's torch threads (at least one)."""
    threads = max(1, torch.get_num_threads() // workers)
    context = mp.get_context("spawn")  # a fork would copy torch's thread pools and locks mid-use
    before = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="netpress-group-") as folder:
        rendezvous = f"file://{os.path.join(folder, 'rendezvous')}"
        started = context.Queue()
        processes = [
            context.Process(target=_worker, args=(rendezvous, rank, workers, threads, task, items, started), daemon=True)
            for rank in range(1, workers)
        ]
        for process in processes:
            process.start()
        torch.set_num_threads(threads)
        try:
            _await_start(processes, started)
            dist.init_process_group("gloo", init_method=rendezvous, rank=0, world_size=workers)
            try:
                return shared(task, items)
            finally:
                dist.destroy_process_group()
        except BaseException:  # the workers may be waiting at the rendezvous or in a collective: stop them now
            for process in processes:
                process.terminate()
            raise
        finally:
            torch.set_num_threads(before)
            for process in processes:
                process.join(JOIN_SECONDS)
                if process.is_alive():
                    process.terminate()


def _await_start(processes: list, started) -> None:
    """Return once every worker runs. One that exits first would leave the rendezvous waiting for ever; the
    usual cause: a worker imports the caller's main module afresh, and a script without a ``__main__`` guard
    starts workers again from there, which multiprocessing refuses."""
    waiting = len(processes)
    while waiting:
        try:
            started.get(timeout=0.5)
            waiting -= 1
        except queue.Empty:
            if exited := [p.exitcode for p in processes if p.exitcode is not None]:
                raise NetpressError(
                    f"a worker process exited before it started (exit code {exited[0]}; its error is printed above). "
                    "Usually the script that asks for workers does not run its work under "
                    'if __name__ == "__main__": (each worker imports it afresh)'
                ) from None


def _worker(rendezvous: str, rank: int, world: int, threads: int, task: Callable, items: Sequence, started) -> None:
    started.put(rank)
    os.environ["NETPRESS_QUIET"] = "1"  # one progress display: the calling process's
    warnings.showwarning = _show_warning
    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world)
    try:
        shared(task, items)
    except Exception:  # rank 0 raises the same error for the caller
        pass
    finally:
        dist.destroy_process_group()


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A worker's NetpressWarning as the command line shows the caller's: one "warning:" line."""
    if issubclass(category, NetpressWarning):
        print(f"warning: {one_line(message)}", file=sys.stderr)
    else:
        _PYTHON_SHOWWARNING(message, category, filename, lineno, file, line)


def _picklable(value: object) -> bool:
    try:
        pickle.loads(pickle.dumps(value))
    except Exception:
        return False
    return True
