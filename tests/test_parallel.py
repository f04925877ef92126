"""A sweep's points shared among processes (torch.distributed) give what one process gives."""

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from typer.testing import CliRunner

from netpress import api, parallel
from netpress.budget import Budget
from netpress.cli import app
from netpress.errors import BudgetError, NetpressError
from netpress.methods.baselines import MagnitudePruning
from tests.archs import tiny_mlp

SPARSITIES = (0.3, 0.5, 0.7)
MEASURED = ("file_bytes", "ratio", "accuracy_after", "sparsity", "layers")  # all but the times and the paths


@dataclass
class RefusesHalf(MagnitudePruning):
    """Magnitude pruning that fails while compressing at sparsity 0.5 (after the checks a sweep makes)."""

    def plan(self, weights: dict[str, torch.Tensor], budget: Budget | None) -> list[list[int]]:
        if budget.value == 0.5:
            raise BudgetError(f"refused {budget.value:g} in process {os.getpid()}")
        return super().plan(weights, budget)


def _sweep(out_dir: Path, method=MagnitudePruning(), **kwargs) -> list[dict]:
    torch.manual_seed(0)
    budgets = [Budget(sparsity=s) for s in SPARSITIES]
    return api.sweep(tiny_mlp(), method, budgets, out_dir=out_dir, data="digits", **kwargs)


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> list[dict]:
    return _sweep(tmp_path_factory.mktemp("alone"))


def _same_points(results: list[dict], alone: list[dict]) -> None:
    assert [{k: r[k] for k in MEASURED} for r in results] == [{k: r[k] for k in MEASURED} for r in alone]
    for mine, theirs in zip(results, alone):
        assert Path(mine["file"]).read_bytes() == Path(theirs["file"]).read_bytes()


def test_local_workers_write_the_files_one_process_writes(alone, tmp_path):
    threads = torch.get_num_threads()
    _same_points(_sweep(tmp_path, workers=2), alone)
    assert torch.get_num_threads() == threads and not dist.is_initialized()  # the caller's threads and state restored


def test_an_error_in_a_workers_point_reaches_the_caller(tmp_path):
    with pytest.raises(BudgetError, match="refused 0.5") as raised:
        _sweep(tmp_path, RefusesHalf(), workers=2)
    assert str(os.getpid()) not in str(raised.value)  # the second point is the second process's


def test_in_a_group_its_processes_share_the_points_and_workers_are_refused(alone, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        _same_points(_sweep(tmp_path / "group"), alone)
        with pytest.raises(BudgetError, match="drop workers"):
            _sweep(tmp_path / "again", workers=2)
    finally:
        dist.destroy_process_group()


def _doubled_unless_one(items: list[int]) -> list[int]:
    if 1 in items:
        os._exit(3)  # a worker killed mid-sweep (out of memory, say)
    return [2 * i for i in items]


def test_results_come_back_in_order_and_a_killed_worker_is_an_error_not_a_hang():
    assert parallel.on_local_workers(3, _doubled_unless_one, [0, 2, 3, 4, 5]) == [0, 4, 6, 8, 10]
    with pytest.raises(NetpressError, match="stopped before sharing its results"):
        parallel.on_local_workers(2, _doubled_unless_one, [0, 1, 2, 3])


def test_a_script_without_a_main_guard_gets_an_error_not_a_hang(tmp_path):
    script = tmp_path / "unguarded.py"  # each worker imports it afresh and would start workers again
    script.write_text(
        "from netpress import parallel\nfrom tests.test_parallel import _doubled_unless_one\n"
        "parallel.on_local_workers(2, _doubled_unless_one, [0, 2])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and 'if __name__ == "__main__"' in done.stderr.splitlines()[-1]


def test_workers_must_be_a_positive_whole_number(tmp_path):
    with pytest.raises(BudgetError, match="workers"):
        _sweep(tmp_path, workers=0)


def test_a_sweep_launched_by_torchrun_is_shared_and_printed_once(tmp_path):
    netpress = shutil.which("netpress", path=os.path.dirname(sys.executable))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "NETPRESS_QUIET": "1"}
    torch.save(tiny_mlp().state_dict(), tmp_path / "mlp.pt")
    args = [tmp_path / "mlp.pt", "--arch", "tests.archs:tiny_mlp", "-m", "magnitude", "--data", "digits"]
    args += ["--sparsities", ",".join(map(str, SPARSITIES))]
    alone = CliRunner().invoke(app, [str(a) for a in ["sweep", *args, "--out-dir", tmp_path / "alone"]])
    assert alone.exit_code == 0, alone.output
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--no-python"]
    launch += [netpress, "sweep", *args, "--out-dir", tmp_path / "runs", "--report", tmp_path / "r.json"]
    done = subprocess.run([str(a) for a in launch], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("file bytes") == 1  # one table: rank 0 alone prints
    for report in json.loads((tmp_path / "r.json").read_text()):
        assert Path(report["file"]).read_bytes() == (tmp_path / "alone" / Path(report["file"]).name).read_bytes()


def test_a_torchrun_environment_that_cannot_be_joined_is_one_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(NetpressError, match="cannot join it.*MASTER_ADDR"):
        with parallel.launched_group():
            pass


def test_a_failed_join_leaves_local_workers_working(monkeypatch):
    """torch counts a group name even for a group that did not form; local workers must not inherit that count."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(taken.getsockname()[1])}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(NetpressError, match="cannot join it"):
            with parallel.launched_group():
                pass
    monkeypatch.delenv("WORLD_SIZE")
    assert parallel.on_local_workers(2, _doubled_unless_one, [0, 2]) == [0, 4]


def test_workers_rebuild_an_architecture_found_in_the_current_directory(tmp_path):
    """The netpress script does not put the current directory on sys.path; --arch finds modules there, and so
    must the workers a sweep spawns."""
    (tmp_path / "cwd_arch.py").write_text(
        "import torch\nfrom torch import nn\n\nclass Net(nn.Sequential):  # unpickled only where this module imports\n"
        "    pass\n\ndef build():\n    torch.manual_seed(0)\n"
        "    return Net(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))\n"
    )
    netpress = shutil.which("netpress", path=os.path.dirname(sys.executable))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"NETPRESS_QUIET": "1"}
    code = "import sys; sys.path.append('.'); import cwd_arch, torch; torch.save(cwd_arch.build().state_dict(), 'w.pt')"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=120)
    args = [netpress, "sweep", "w.pt", "--arch", "cwd_arch:build", "-m", "magnitude", "--sparsities", "0.3,0.6"]
    args += ["--data", "digits", "--workers", "2", "--out-dir", "runs"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["magnitude-sparsity0.3.press", "magnitude-sparsity0.6.press"]
