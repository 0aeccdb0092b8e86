"""Scale-out: worker processes on one PostgreSQL study, deaths, restarts and SQLite.

Each test runs one scenario of bench/reliability.py with real processes: CPU workers,
a tiny model, the server named by AUTOSEARCH_TEST_PG. The bench script repeats the
200-trial scenario three times; here it runs once.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import optuna
import pytest
from autosearch.search.cli import app
from autosearch.search.tuning.launcher import Launcher, _Proc
from autosearch.search.tuning.requests import Placement
from autosearch.search.tuning.running import interrupt_on_sigterm, plan
from autosearch.search.tuning.slots import (
    LaunchError,
    Slot,
    auto_workers_per_gpu,
    parse_gpus,
    plan_slots,
)
from autosearch.search.tuning.worker import Terminated
from typer.testing import CliRunner

from bench import reliability

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.mark.postgres
def test_eight_workers_run_exactly_the_budget(postgres_test_url: str) -> None:
    # 80 trials keep the suite short; `bench/reliability.py` runs the 200-trial version.
    print(reliability.concurrency(postgres_test_url, workers=8, trials=80, epochs=1))


@pytest.mark.postgres
def test_killed_worker_trial_is_retried_from_its_last_checkpoint(
    postgres_test_url: str,
) -> None:
    print(reliability.kill(postgres_test_url))


@pytest.mark.postgres
def test_corrupt_checkpoint_is_refused_and_the_previous_one_used(
    postgres_test_url: str,
) -> None:
    print(reliability.corrupt(postgres_test_url))


@pytest.mark.postgres
@pytest.mark.skipif(
    shutil.which("pg_ctlcluster") is None or not Path("/etc/postgresql").is_dir(),
    reason="needs a local PostgreSQL cluster managed by pg_ctlcluster",
)
def test_workers_survive_a_database_restart(postgres_test_url: str) -> None:
    print(reliability.db_restart(postgres_test_url))


def test_four_workers_share_one_sqlite_file() -> None:
    print(reliability.sqlite(workers=4, trials=40))


# ----------------------------------------------------------------- planning, quick


def test_gpu_lists_and_worker_plans() -> None:
    visible = ["0", "1", "2", "3"]
    assert parse_gpus("all", visible) == visible
    assert parse_gpus("0,1,3", visible) == ["0", "1", "3"]
    assert parse_gpus("1", ["5", "7"]) == ["7"]  # index into an inherited CUDA_VISIBLE_DEVICES
    for bad, word in (("4", "'4'"), ("x", "'x'"), ("0,-1", "'-1'")):
        with pytest.raises(LaunchError, match=word):
            parse_gpus(bad, visible)
    with pytest.raises(LaunchError, match="no CUDA GPU"):
        parse_gpus("all", [])
    slots = plan_slots(["0", "1"], "2", 1)
    assert [s.gpu for s in slots] == ["0", "1", "0", "1"]
    assert [s.index for s in slots] == [0, 1, 2, 3]
    assert [s.gpu for s in plan_slots(None, "1", 3)] == [None, None, None]
    with pytest.raises(LaunchError, match="'many'"):
        plan_slots(["0"], "many", 1)


def test_a_launcher_numbers_its_workers_from_the_index_it_is_given() -> None:
    # One launcher per Slurm array task: seeds and log names must not collide.
    assert [s.index for s in plan(Placement(workers=2), first_index=4)] == [4, 5]
    assert [s.index for s in plan(Placement(workers=2))] == [0, 1]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_launcher_passes_on_the_signal_it_got(sig: int, tmp_path: Path) -> None:
    class Child:
        def __init__(self) -> None:
            self.got: list[int] = []

        def poll(self) -> None:
            return None

        def send_signal(self, s: int) -> None:
            self.got.append(s)

    launcher = Launcher(optuna.create_study(), [], [], storage_url="", log_dir=tmp_path)
    children = [Child(), Child()]
    launcher.procs = [_Proc(Slot(i, None), c, tmp_path / "w.log") for i, c in enumerate(children)]
    launcher._on_signal(sig, None)
    launcher._on_signal(sig, None)  # passed on once
    assert [c.got for c in children] == [[sig], [sig]]


def test_the_first_sigterm_stops_a_worker_and_later_ones_are_ignored() -> None:
    previous = signal.getsignal(signal.SIGTERM)
    try:
        interrupt_on_sigterm()
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here, long before this ends
        # Slurm signals every process of a job and the launcher passes its own on.
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_auto_workers_per_gpu_rule() -> None:
    assert auto_workers_per_gpu(80, 16, 1) == 3  # an H100 with 16 cores
    assert auto_workers_per_gpu(80, 16, 8) == 1  # 8 GPUs share 16 cores
    assert auto_workers_per_gpu(24, 32, 1) == 3
    assert auto_workers_per_gpu(8, 32, 1) == 1  # memory-bound
    assert auto_workers_per_gpu(12, 8, 1) == 1


def test_launch_options_fail_with_one_line(tmp_path: Path, cifar_dir: Path) -> None:
    common = ["--study", "zigzag", "--storage", f"sqlite:///{tmp_path}/x.db"]
    result = runner.invoke(app, ["start", *common, "--gpus", "0", "--workers", "2"])
    assert result.exit_code == 2 and "not both" in result.stderr
    assert not (tmp_path / "x.db").exists()
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path}/x.db")
    result = runner.invoke(
        app,
        [
            "worker",
            "--study",
            "nope",
            "--storage",
            f"{tmp_path}/x.db",
            "--data-dir",
            str(cifar_dir),
        ],
    )
    assert result.exit_code == 2 and "no study named 'nope'" in result.stderr
