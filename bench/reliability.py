"""Reliability scenarios of the multi-worker search, with real processes and databases.

Each scenario launches `autosearch start --workers N` (worker processes on the CPU, a
tiny model on a tiny synthetic dataset), does something unkind to it, then checks the
study and returns a summary line:

- concurrency: 8 workers, 200 trials on PostgreSQL; exactly 200 complete, numbered
  0-199, none left running, every epoch's value present, connections bounded;
- kill: SIGKILL the worker mid-epoch; the trial is failed within grace + interval,
  retried once with the same parameters, and the retry resumes after the last
  checkpoint;
- db_restart: PostgreSQL is stopped and started mid-study; no worker dies and every
  trial completes;
- corrupt: the worker is killed and its newest checkpoint altered; the retry refuses
  it and resumes from the one before;
- sqlite: 4 workers on one SQLite file; no "database is locked" failure;
- cuts, orphans, restarts: the faults of bench/faults.py (connections cut at chosen
  moments through a proxy, the launcher killed with SIGKILL, runtime errors restarted).

Usage:
    python bench/reliability.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        --repeat 3

The tests in tests/search/test_scaleout.py and test_faults.py run each scenario once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parents[1]

# 1-2 stages of 8-16 channels: tens of milliseconds a step on one CPU core.
TINY_SPACE = """
name = "tiny"
[arch]
stages = [1, 2]
widths = [8, 16]
repeats = [1, 1]
kernels = [3]
skip_kernels = [1]
downsamples = [0, 1]
stem_widths = [8]
pools = [0]
[recipe]
optimizers = ["sgd"]
batch_sizes = [64]
epochs = [{epochs}, {epochs}]
schedules = ["cosine"]
augments = ["flip"]
tta = false
"""

# Wider and on every image, so that an epoch lasts about a second: long enough to
# kill a worker in the middle of one.
SLOW_SPACE = TINY_SPACE.replace("stages = [1, 2]", "stages = [2, 2]").replace(
    "widths = [8, 16]", "widths = [16, 16]"
)


@dataclass
class Workspace:
    """A scratch folder with a dataset, space files, checkpoints and logs."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def checkpoints(self) -> Path:
        return self.root / "ck"

    def space(self, name: str, template: str, epochs: int) -> Path:
        path = self.root / f"{name}.toml"
        path.write_text(template.format(epochs=epochs))
        return path


@contextmanager
def workspace() -> Iterator[Workspace]:
    root = Path(tempfile.mkdtemp(prefix="autosearch-reliability-"))
    try:
        ws = Workspace(root)
        write_dataset(ws.data)
        yield ws
    finally:
        shutil.rmtree(root, ignore_errors=True)


def write_dataset(folder: Path, n_train: int = 600, n_test: int = 200) -> None:
    """Colour-coded classes in the `cifar10.npz` layout: learnable in one epoch."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    palette = rng.integers(30, 225, size=(10, 3))

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % 10
        rng.shuffle(y)
        x = palette[y][:, None, None, :] + rng.normal(0, 20, size=(n, 32, 32, 3))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)

    (xa, ya), (xb, yb) = images(n_train), images(n_test)
    np.savez(folder / "cifar10.npz", x_train=xa, y_train=ya, x_test=xb, y_test=yb)


# --------------------------------------------------------------------------- running


def start_args(
    ws: Workspace,
    study: str,
    url: str,
    *,
    space: Path,
    trials: int,
    workers: int,
    subset: int,
    heartbeat: int,
    grace: int,
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autosearch",
        "start",
        "--study",
        study,
        "--space",
        str(space),
        "--trials",
        str(trials),
        "--workers",
        str(workers),
        "--subset",
        str(subset),
        "--val-size",
        "100",
        "--device",
        "cpu",
        "--data-dir",
        str(ws.data),
        "--storage",
        url,
        "--checkpoint-dir",
        str(ws.checkpoints),
        "--log-dir",
        str(ws.root / "logs"),
        "--heartbeat",
        str(heartbeat),
        "--grace",
        str(grace),
        "--sampler",
        "random",
        "--pruner",
        "none",
    ]


def launch(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path, timeout: float) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=90)
        raise AssertionError(
            f"launcher did not finish in {timeout} s:\n{log.read_text()}"
        ) from None
    output = log.read_text()
    assert process.returncode == 0, f"launcher exited {process.returncode}:\n{output}"
    return output


def children(pid: int) -> list[int]:
    """Process ids whose parent is `pid` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces; fields after its closing bracket are fixed.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def wait_for(predicate, timeout: float, what: str, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def load(url: str | optuna.storages.BaseStorage, study: str) -> optuna.Study:
    return optuna.load_study(study_name=study, storage=url)


def _trial_worker(storage: optuna.storages.BaseStorage, study: str) -> int | None:
    """The pid of the process running the study's first trial, once it has one."""
    try:
        trials = load(storage, study).get_trials(deepcopy=False)
    except KeyError:  # the launcher has not created the study yet
        return None
    if not trials or "worker" not in trials[0].user_attrs:
        return None
    return int(trials[0].user_attrs["worker"].rsplit(":", 1)[1])


class ConnectionWatch:
    """Samples the number of server connections to one database in the background."""

    def __init__(self, url: str):
        self.database = make_url(url).database
        self.engine = create_engine(make_url(url).set(database="postgres"), poolclass=NullPool)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db")
        while not self._stop.wait(0.5):
            try:
                with self.engine.connect() as conn:
                    n = conn.execute(query, {"db": self.database}).scalar_one()
                self.peak = max(self.peak, int(n))
            except Exception:
                pass  # the server may be restarting

    def __enter__(self) -> ConnectionWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()


# ------------------------------------------------------------------------- scenarios


def concurrency(url: str, *, workers: int = 8, trials: int = 200, epochs: int = 2) -> str:
    """N workers run exactly the budget: numbers 0..N-1, all complete, all epochs."""
    study = f"conc-{uuid.uuid4().hex[:8]}"
    with workspace() as ws:
        space = ws.space("tiny", TINY_SPACE, epochs)
        # Heartbeat 2 s, grace 20 s: eight training processes on two cores starve a
        # heartbeat thread for seconds at times; this scenario is not about deaths.
        args = start_args(
            ws, study, url, space=space, trials=trials, workers=workers, subset=100,
            heartbeat=2, grace=20,
        )  # fmt: skip
        started = time.monotonic()
        watch = ConnectionWatch(url) if url.startswith("postgresql") else None
        log = ws.root / "launcher.log"
        if watch:
            with watch:
                finish(launch(args, log), log, timeout=900)
        else:
            finish(launch(args, log), log, timeout=900)
        seconds = time.monotonic() - started
        done = load(url, study).get_trials(deepcopy=False)
        numbers = sorted(t.number for t in done)
        states = {s.name: sum(t.state == s for t in done) for s in TrialState}
        values = sum(len(t.intermediate_values) for t in done)
        full = all(sorted(t.intermediate_values) == list(range(1, epochs + 1)) for t in done)
        assert numbers == list(range(trials)), f"trial numbers {numbers[:5]}..{numbers[-5:]}"
        assert states["COMPLETE"] == trials, states
        assert full, "a trial misses an epoch's value"
    limit = 3 * workers + 3
    peak = f", peak {watch.peak} connections (bound {limit})" if watch else ""
    if watch:
        assert watch.peak <= limit, f"{watch.peak} connections > {limit}"
    return (
        f"concurrency: {workers} workers, {states['COMPLETE']}/{trials} complete, numbers "
        f"{numbers[0]}-{numbers[-1]}, running {states['RUNNING']}, waiting "
        f"{states['WAITING']}, epoch values {values}/{trials * epochs}{peak}, {seconds:.0f} s"
    )


def _kill_mid_epoch(ws: Workspace, study: str, url: str, *, after_epoch: int, corrupt: bool):
    """Run one 4-epoch trial with two workers; SIGKILL the one running it during epoch
    `after_epoch` + 1; optionally flip a byte of the newest checkpoint. The other
    worker waits meanwhile, and takes the retry."""
    heartbeat, grace, epochs = 1, 3, 4
    space = ws.space("slow", SLOW_SPACE, epochs)
    args = start_args(
        ws, study, url, space=space, trials=1, workers=2, subset=200,
        heartbeat=heartbeat, grace=grace,
    )  # fmt: skip
    log = ws.root / "launcher.log"
    # Opened before the launch: opening a storage while two workers train takes seconds.
    storage = optuna.storages.RDBStorage(url)
    process = launch(args, log)
    marker = f"epoch-{after_epoch:04d}.pt"
    # The objective records "host:pid" of the process that runs the trial; read it
    # before the checkpoint shows up, since a read can take longer than an epoch.
    worker = wait_for(lambda: _trial_worker(storage, study), 120, "the first trial's worker")
    assert worker in children(process.pid), "the trial's worker is not the launcher's child"
    # The study's folder is named after the study and its identity: <study>.<uuid>.
    found = wait_for(
        lambda: next(ws.checkpoints.glob(f"{study}.*/trial-00000/{marker}"), None),
        120,
        f"{marker} of the first trial",
        poll=0.01,
    )
    # Frozen at once, then killed: on a fast machine the remaining epochs take less
    # than a poll, and a finished trial leaves nothing to retry.
    os.kill(worker, signal.SIGSTOP)
    folder = found.parent
    on_disk = sorted(int(p.stem.split("-")[1]) for p in folder.glob("epoch-*.pt"))
    os.kill(worker, signal.SIGKILL)
    killed_at = time.time()
    assert on_disk, f"trial 0 finished before its worker could be stopped: {marker} is gone"
    latest = on_disk[-1]
    into_epoch = killed_at - (folder / f"epoch-{latest:04d}.pt").stat().st_mtime
    flipped = None
    if corrupt:
        path = folder / f"epoch-{latest:04d}.pt"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        flipped = path.name
    output = finish(process, log, timeout=300)
    trials = load(url, study).get_trials(deepcopy=False)
    return {
        "trials": trials,
        "killed_at": killed_at,
        "into_epoch_s": into_epoch,
        "latest": latest,
        "on_disk": on_disk,
        "flipped": flipped,
        "heartbeat": heartbeat,
        "grace": grace,
        "epochs": epochs,
        "output": output,
        "logs": "\n".join(p.read_text() for p in sorted((ws.root / "logs").rglob("*.log"))),
    }


def _check_retry(run: dict) -> tuple[optuna.trial.FrozenTrial, optuna.trial.FrozenTrial, float]:
    dead, *rest = run["trials"]
    assert dead.state == TrialState.FAIL, dead.state
    assert len(rest) == 1, f"{len(rest)} retries"
    retry = rest[0]
    assert retry.state == TrialState.COMPLETE, retry.state
    assert retry.system_attrs.get("failed_trial") == dead.number
    assert retry.params == dead.params
    epochs = run["epochs"]
    assert sorted(retry.intermediate_values) == list(range(1, epochs + 1))
    failed_after = dead.datetime_complete.timestamp() - run["killed_at"]
    return dead, retry, failed_after


def kill(url: str) -> str:
    """A worker dies mid-epoch: fail within grace + interval, retry resumes after it."""
    study = f"kill-{uuid.uuid4().hex[:8]}"
    with workspace() as ws:
        run = _kill_mid_epoch(ws, study, url, after_epoch=1, corrupt=False)
    dead, retry, failed_after = _check_retry(run)
    bound = run["grace"] + run["heartbeat"]
    k = run["latest"]
    assert failed_after <= bound + 1.0, f"failed {failed_after:.1f} s after the kill"
    assert retry.user_attrs["resumed_from_epoch"] == k, retry.user_attrs
    assert retry.user_attrs["first_epoch"] == k + 1, retry.user_attrs
    # Stopped just after checkpoint k was written, the trial may not have reported
    # epoch k yet; the retry carries it either way (checked above).
    assert sorted(dead.intermediate_values) in (list(range(1, k)), list(range(1, k + 1)))
    return (
        f"kill: SIGKILL {run['into_epoch_s']:.1f} s into epoch {k + 1}; trial {dead.number} "
        f"failed {failed_after:.1f} s later (grace + interval = {bound} s); 1 retry "
        f"(#{retry.number}, same params) resumed after epoch "
        f"{retry.user_attrs['resumed_from_epoch']}, first reported epoch "
        f"{retry.user_attrs['first_epoch']}; epochs 1-{run['epochs']} reported once each"
    )


def corrupt(url: str) -> str:
    """The newest checkpoint is altered: refused by its checksum, the previous is used."""
    study = f"corrupt-{uuid.uuid4().hex[:8]}"
    with workspace() as ws:
        run = _kill_mid_epoch(ws, study, url, after_epoch=2, corrupt=True)
    dead, retry, failed_after = _check_retry(run)
    k = run["latest"]
    skipped = retry.user_attrs.get("skipped_checkpoints", [])
    assert any(run["flipped"] in s and "checksum" in s for s in skipped), skipped
    assert retry.user_attrs["resumed_from_epoch"] == k - 1, retry.user_attrs
    assert "checksum mismatch" in run["logs"]
    return (
        f"corrupt: flipped a byte of {run['flipped']} (checkpoints on disk {run['on_disk']}); "
        f"retry #{retry.number} refused it ({skipped[0].rsplit(': ', 1)[1]}), resumed "
        f"after epoch {retry.user_attrs['resumed_from_epoch']}, retrained from epoch "
        f"{retry.user_attrs['first_epoch']}; epochs 1-{run['epochs']} present, none twice"
    )


def pg_cluster() -> list[str]:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def db_restart(url: str, *, workers: int = 2, trials: int = 16) -> str:
    """PostgreSQL stops and starts mid-study; workers ride it out."""
    study = f"restart-{uuid.uuid4().hex[:8]}"
    with workspace() as ws:
        space = ws.space("tiny", TINY_SPACE, 2)
        # Grace 30 s: the outage is a few seconds and must not make live trials stale.
        args = start_args(
            ws, study, url, space=space, trials=trials, workers=workers, subset=200,
            heartbeat=1, grace=30,
        )  # fmt: skip
        log = ws.root / "launcher.log"
        process = launch(args, log)
        wait_for(
            lambda: len(list(ws.checkpoints.glob(f"{study}.*/*/*.pt"))) >= 2, 120, "a checkpoint"
        )
        stopped = time.monotonic()
        subprocess.run([*pg_cluster(), "stop"], check=True, capture_output=True)
        time.sleep(2.0)
        subprocess.run([*pg_cluster(), "start"], check=True, capture_output=True)
        down = time.monotonic() - stopped
        output = finish(process, log, timeout=600)
        logs = "\n".join(p.read_text() for p in sorted((ws.root / "logs").rglob("*.log")))
    done = load(url, study).get_trials(deepcopy=False)
    states = {s.name: sum(t.state == s for t in done) for s in TrialState}
    retried = sum("failed_trial" in t.system_attrs for t in done)
    assert "0 crash(es)" in output, output
    assert states["RUNNING"] == 0 and states["WAITING"] == 0, states
    assert states["COMPLETE"] == trials, states
    recovered = logs.count("succeeded after")
    return (
        f"db_restart: PostgreSQL down {down:.1f} s mid-study; {workers} workers, 0 crashes, "
        f"{states['COMPLETE']}/{trials} complete, {states['FAIL']} failed, {retried} "
        f"retried; {recovered} storage call(s) recovered by retrying"
    )


def sqlite(*, workers: int = 4, trials: int = 40) -> str:
    """Several local workers on one SQLite file: WAL, busy timeout, immediate locks."""
    study = f"sqlite-{uuid.uuid4().hex[:8]}"
    with workspace() as ws:
        url = f"sqlite:///{ws.root / 'studies.db'}"
        space = ws.space("tiny", TINY_SPACE, 1)
        args = start_args(
            ws, study, url, space=space, trials=trials, workers=workers, subset=100,
            heartbeat=2, grace=20,
        )  # fmt: skip
        started = time.monotonic()
        log = ws.root / "launcher.log"
        output = finish(launch(args, log), log, timeout=600)
        seconds = time.monotonic() - started
        logs = "\n".join(p.read_text() for p in sorted((ws.root / "logs").rglob("*.log")))
        done = load(url, study).get_trials(deepcopy=False)
    numbers = sorted(t.number for t in done)
    complete = sum(t.state == TrialState.COMPLETE for t in done)
    locked = (logs + output).count("database is locked")
    assert numbers == list(range(trials)) and complete == trials, (numbers, complete)
    assert "0 crash(es)" in output, output
    return (
        f"sqlite: {workers} workers, {complete}/{trials} complete, numbers "
        f"{numbers[0]}-{numbers[-1]}, {locked} lock wait(s) retried, 0 crashes, "
        f"{seconds:.0f} s"
    )


SCENARIOS = (
    "concurrency",
    "kill",
    "db_restart",
    "corrupt",
    "sqlite",
    "cuts",
    "orphans",
    "restarts",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--pg",
        default=os.environ.get("AUTOSEARCH_TEST_PG"),
        help="admin URL of a PostgreSQL server whose user may CREATE DATABASE",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of the concurrency and cuts scenarios"
    )
    parser.add_argument("--only", nargs="*", default=None, help=" ".join(SCENARIOS))
    args = parser.parse_args()
    if not args.pg:
        parser.error("--pg or AUTOSEARCH_TEST_PG is required")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = args.only or list(SCENARIOS)
    from autosearch.storage.databases import temporary_database

    from bench import faults

    with temporary_database(args.pg, prefix=f"autosearch_bench_{os.getpid()}") as url:
        for name in chosen:
            # The concurrency and cut scenarios are the ones that must hold every time.
            runs = args.repeat if name in ("concurrency", "cuts") else 1
            for i in range(runs):
                if name in ("sqlite", "restarts"):  # SQLite: no server needed
                    line = sqlite() if name == "sqlite" else faults.restarts()
                else:
                    line = (getattr(faults, name, None) or globals()[name])(url)
                suffix = f" [run {i + 1}/{runs}]" if runs > 1 else ""
                print(line + suffix, flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
