"""deploy/slurm/: the worker array script and the queue script.

The scripts are run with bash and a stand-in autosearch command that records its
arguments, as on an array task: what they would run must parse with this CLI and
carry no storage URL. bench/slurm_check.py runs the array on a real local Slurm; the
slow test here runs it where Slurm is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from autosearch.search.cli import app

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "deploy" / "slurm" / "worker.sbatch"
QUEUE = ROOT / "deploy" / "slurm" / "queue.sh"
SECRET = "s3cret-pw"
PG = os.environ.get("AUTOSEARCH_TEST_PG")


def run_script(
    script: Path, tmp_path: Path, args: list[str] = (), **env: str
) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run `script` with a stand-in AUTOSEARCH_BIN; the result and the arguments it got."""
    record = tmp_path / "argv"
    record.unlink(missing_ok=True)
    fake = tmp_path / "autosearch"
    fake.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {record}\n')
    fake.chmod(0o755)
    base = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "AUTOSEARCH_BIN": str(fake)}
    done = subprocess.run(
        ["bash", str(script), *args],
        env={**base, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    argv = record.read_text().splitlines() if record.exists() else []
    return done, argv


def url_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "storage-url"
    path.write_text(f"postgresql+psycopg://bob:{SECRET}@db/autosearch\n")
    path.chmod(mode)
    return path


def parses(argv: list[str]) -> dict:
    """The parameters the CLI gets from `argv`; raises as the job would fail."""
    import typer

    command = typer.main.get_command(app).commands[argv[0]]
    return command.make_context(argv[0], argv[1:], resilient_parsing=False).params


def test_header_asks_for_an_array_of_gpu_tasks_that_requeue() -> None:
    header = re.findall(r"^#SBATCH (\S+)", SBATCH.read_text(), re.M)
    assert "--requeue" in header and "--ntasks=1" in header
    assert "--gpus-per-task=1" in header
    assert any(h.startswith("--array=") for h in header)
    assert "--open-mode=append" in header  # a requeued task adds to its output file


def test_gpu_task_runs_the_launcher_on_its_gpus_from_its_own_index(tmp_path: Path) -> None:
    done, argv = run_script(
        SBATCH,
        tmp_path,
        AUTOSEARCH_STUDY="zigzag",
        AUTOSEARCH_STORAGE_FILE=str(url_file(tmp_path)),
        AUTOSEARCH_WORKERS_PER_GPU="2",
        AUTOSEARCH_CHECKPOINT_DIR="/shared/ck",
        SLURM_ARRAY_TASK_ID="3",
        SLURM_GPUS_PER_TASK="a100:1",
        SLURM_CPUS_PER_TASK="8",
        SLURM_SUBMIT_DIR="/home/me/run",
    )
    assert done.returncode == 0, done.stderr
    params = parses(argv)
    assert params["study"] == "zigzag"
    assert (params["gpus"], params["workers_per_gpu"]) == ("all", "2")
    assert params["worker_index"] == 6  # task 3 x 2 workers
    assert params["checkpoint_dir"] == "/shared/ck"
    assert params["log_dir"] == "/home/me/run/logs"
    assert params["storage"] is None and not any(SECRET in a for a in argv)
    assert "warning" not in done.stderr


def test_cpu_workers_instead_of_gpus(tmp_path: Path) -> None:
    done, argv = run_script(
        SBATCH,
        tmp_path,
        AUTOSEARCH_STUDY="zigzag",
        AUTOSEARCH_STORAGE=f"postgresql+psycopg://bob:{SECRET}@db/autosearch",
        AUTOSEARCH_CPU_WORKERS="3",
        SLURM_ARRAY_TASK_ID="1",
    )
    assert done.returncode == 0, done.stderr
    params = parses(argv)
    assert (params["workers"], params["device"], params["gpus"]) == (3, "cpu", None)
    assert params["worker_index"] == 3
    assert params["checkpoint_dir"] == f"{tmp_path}/checkpoints"
    assert not any(SECRET in a for a in argv)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "AUTOSEARCH_STORAGE_FILE"),
        ({"AUTOSEARCH_STORAGE_FILE": "/nowhere/url"}, "cannot read AUTOSEARCH_STORAGE_FILE"),
        ({"AUTOSEARCH_STORAGE": "x", "AUTOSEARCH_CPU_WORKERS": "two"}, "must be a number"),
        ({"AUTOSEARCH_STORAGE": "x", "AUTOSEARCH_WORKERS_PER_GPU": "0"}, "number or auto"),
    ],
)
def test_missing_or_bad_settings_stop_the_task(
    env: dict[str, str], message: str, tmp_path: Path
) -> None:
    done, argv = run_script(SBATCH, tmp_path, AUTOSEARCH_STUDY="zigzag", **env)
    assert done.returncode != 0 and message in done.stderr
    assert argv == []


def test_a_url_file_others_can_read_is_warned_about(tmp_path: Path) -> None:
    loose = url_file(tmp_path, mode=0o644)
    done, _ = run_script(
        SBATCH, tmp_path, AUTOSEARCH_STUDY="zigzag", AUTOSEARCH_STORAGE_FILE=str(loose)
    )
    assert done.returncode == 0 and "chmod 600" in done.stderr


def test_queue_script_enqueues_and_refuses_a_url_on_the_command_line(tmp_path: Path) -> None:
    file_env = {"AUTOSEARCH_STORAGE_FILE": str(url_file(tmp_path))}
    args = ["--study", "zigzag", "--trials", "400", "--epochs", "15"]
    done, argv = run_script(QUEUE, tmp_path, args, **file_env)
    assert done.returncode == 0, done.stderr
    params = parses(argv)
    assert params["enqueue_only"] and params["trials"] == 400 and params["epochs"] == 15
    for bad in (["--storage", "postgresql://bob:pw@db/x"], ["--storage=postgresql://x"]):
        done, argv = run_script(QUEUE, tmp_path, [*args, *bad], **file_env)
        assert done.returncode == 2 and "AUTOSEARCH_STORAGE_FILE" in done.stderr
    done, argv = run_script(QUEUE, tmp_path, args)  # no storage at all: not a local file
    assert done.returncode == 2 and argv == []


def _slurm_runnable() -> str | None:
    """Why the real-Slurm check cannot run here, or None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    missing = [
        c for c in ("sbatch", "slurmctld", "slurmd", "munged") if not shutil.which(c, path=path)
    ]
    if missing:
        return f"Slurm is not installed ({', '.join(missing)} missing)"
    if os.geteuid() != 0:
        return "starting slurmctld, slurmd and munged needs root"
    if not PG:
        return "AUTOSEARCH_TEST_PG is not set"
    return None


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.skipif(_slurm_runnable() is not None, reason=str(_slurm_runnable()))
def test_the_array_completes_a_study_on_a_local_slurm() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "slurm_check.py"), "--pg", PG],
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "slurm check: 2 array tasks x 2 CPU workers completed 8/8 trials" in done.stdout
