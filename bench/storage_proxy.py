"""Database connections and storage time per trial: workers on PostgreSQL, direct or
through the gRPC storage proxy (`autosearch proxy`).

Each run makes a throw-away database, queues 4 trials per worker, and starts W stand-in
workers: real worker loops (`tuning.worker.run_worker`: claim, heartbeat, stale-trial
check, tell) around a stand-in trial that samples the `zigzag` space as a real trial
does, records the same user attributes, and reports a few epochs to the median pruner,
sleeping instead of training. The workers import no torch, so 32 of them fit on two
cores. They connect first, then all start together, so their start-up is not measured.

- peak connections: the most server connections to the run's database, sampled from
  pg_stat_activity every 0.2 s (the proxy's, or all the workers');
- storage s/trial: the seconds a worker's trial loop spends inside storage calls,
  divided by the trials it ran (the heartbeat thread's calls are not counted: they do
  not hold the trial up); the median over workers;
- each figure is the median over `--repeat` runs. `ok` says every trial ended
  (complete or pruned), none was left waiting or running, and the numbers have no gaps.

Usage:
    python bench/storage_proxy.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres \\
        --workers 8 32 --repeat 3 --out bench/results/storage_proxy.md
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TRIALS_PER_WORKER = 4
HEARTBEAT_S, GRACE_S = 2, 20
TARGET_CONNECTIONS, TARGET_RATIO = 5, 1.5  # at 32 workers, per the issue


def _light_storage_package() -> None:
    """Register `autosearch.storage` without running its `__init__`, which re-exports
    the checkpoint code and with it torch (5 s and 600 MB a process here). The storage
    modules the workers use are the real ones; only the package's re-exports are
    skipped."""
    spec = importlib.util.find_spec("autosearch.storage")
    package = types.ModuleType("autosearch.storage")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["autosearch.storage"] = package


# ------------------------------------------------------------------- one worker process


class StorageClock:
    """Wraps every storage method of one storage object and adds up the seconds the
    main thread spends inside them (outermost calls only)."""

    def __init__(self, storage) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._main = threading.main_thread()
        self._inside = False
        names = [n for n in dir(storage) if not n.startswith("__")]
        for name in names:
            method = getattr(storage, name)
            if callable(method) and hasattr(method, "__self__"):
                setattr(storage, name, self._timed(method))

    def _timed(self, method):
        def call(*args, **kwargs):
            if self._inside or threading.current_thread() is not self._main:
                return method(*args, **kwargs)
            self._inside = True
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
                self.calls += 1
                self._inside = False

        return call


def stand_in_objective(space, epochs: int, epoch_s: float, seed: int):
    """The storage traffic of a real trial, with a sleep where training would be."""
    import random

    import optuna
    from autosearch.models import count_flops, count_params
    from autosearch.search.space import sample

    rng = random.Random(seed)

    def objective(trial: optuna.Trial) -> float:
        s = sample(trial, space, max_params=5_000_000)
        params = count_params(s.arch)
        for key, value in (
            ("arch", s.arch.to_dict()),
            ("recipe", s.recipe.to_dict()),
            ("params", params),
            ("flops", count_flops(s.arch)),
            ("widths", list(s.arch.widths)),
            ("width_scale", s.scale),
            ("device", "cpu"),
            ("worker", f"{socket.gethostname()}:{os.getpid()}"),
        ):
            trial.set_user_attr(key, value)
        acc = rng.uniform(0.3, 0.6)
        for epoch in range(1, epochs + 1):
            time.sleep(epoch_s)
            acc += rng.uniform(0.0, 0.1)
            if epoch == 1:
                trial.set_user_attr("first_epoch", epoch)
            trial.report(acc, epoch)
            trial.set_user_attr("epochs_run", epoch)
            if trial.should_prune():
                trial.set_user_attr("stopped", "pruned")
                raise optuna.TrialPruned()
        for key in ("best_val_acc", "final_val_acc", "train_seconds", "wall_seconds"):
            trial.set_user_attr(key, acc)
        trial.set_user_attr("images_per_s", 1000.0)
        trial.set_user_attr("stopped", "finished")
        return acc

    return objective


def worker_main(args: argparse.Namespace) -> None:
    _light_storage_package()
    import optuna
    from autosearch.search.space import get_space
    from autosearch.search.tuning.study import make_pruner
    from autosearch.search.tuning.worker import run_worker
    from autosearch.storage.optuna_storage import make_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = get_space("zigzag")
    storage = make_storage(None, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    study = optuna.load_study(
        study_name=args.study,
        storage=storage,
        sampler=optuna.samplers.RandomSampler(seed=args.index),
        pruner=make_pruner("median", args.epochs),
    )
    clock = StorageClock(study._storage)
    ready = Path(args.go)
    (ready.parent / f"ready-{args.index}").touch()
    while not ready.exists():
        time.sleep(0.02)
    objective = stand_in_objective(space, args.epochs, args.epoch_s, args.index)
    trials = run_worker(study, objective)
    result = {"trials": trials, "seconds": clock.seconds, "calls": clock.calls}
    Path(args.result).write_text(json.dumps(result))


# -------------------------------------------------------------------------- one run


class ConnectionPeak:
    """Samples the server connections to one database every 0.2 s in the background."""

    def __init__(self, url: str) -> None:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url
        from sqlalchemy.pool import NullPool

        self.database = make_url(url).database
        self.engine = create_engine(make_url(url).set(database="postgres"), poolclass=NullPool)
        self.query = text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db")
        self.peak = 0
        self.missed = 0  # samples that failed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            try:
                # A connection of its own each time, to another database: not counted.
                with self.engine.connect() as conn:
                    n = conn.execute(self.query, {"db": self.database}).scalar_one()
                self.peak = max(self.peak, int(n))
            except Exception:
                self.missed += 1  # the server restarting; the run says so

    def __enter__(self) -> ConnectionPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.engine.dispose()


@dataclass
class RunResult:
    peak: int
    seconds_per_trial: float  # median over workers
    calls_per_trial: float
    wall_s: float
    ok: bool
    note: str = ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_proxy(url: str, folder: Path) -> tuple[subprocess.Popen, str]:
    """`autosearch proxy` on a free port, its storage URL given in the environment."""
    port = _free_port()
    log = folder / "proxy.log"
    env = {**os.environ, "AUTOSEARCH_STORAGE": url}
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "autosearch", "proxy", "--port", str(port)]
            + ["--heartbeat", str(HEARTBEAT_S), "--grace", str(GRACE_S)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 120
    while "workers: --storage" not in log.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the proxy did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return process, f"grpc://127.0.0.1:{port}"


def _queue(url: str, study: str, trials: int) -> None:
    _light_storage_package()
    import optuna
    from autosearch.search.tuning.budget import reserve_trials
    from autosearch.storage.optuna_storage import close_storage, make_storage

    storage = make_storage(url, heartbeat_interval=None, max_retry=None)
    created = optuna.create_study(study_name=study, storage=storage, direction="maximize")
    reserve_trials(created, trials)
    close_storage(storage)


def _check(url: str, study: str, trials: int) -> tuple[bool, str]:
    import optuna
    from autosearch.storage.optuna_storage import close_storage, make_storage

    storage = make_storage(url, heartbeat_interval=None, max_retry=None)
    found = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    close_storage(storage)
    states = Counter(t.state.name for t in found)
    ended = states["COMPLETE"] + states["PRUNED"]
    numbers = sorted(t.number for t in found)
    ok = ended == trials == len(found) and numbers == list(range(trials))
    return ok, " ".join(f"{k.lower()} {v}" for k, v in sorted(states.items()))


def run_once(pg: str, workers: int, proxied: bool, epochs: int, epoch_s: float) -> RunResult:
    from autosearch.storage.databases import temporary_database

    trials = TRIALS_PER_WORKER * workers
    with (
        temporary_database(pg, prefix="autosearch_bench_proxy") as url,
        tempfile.TemporaryDirectory() as tmp,
    ):
        folder = Path(tmp)
        _queue(url, "bench", trials)
        proxy, worker_url = _start_proxy(url, folder) if proxied else (None, url)
        try:
            with ConnectionPeak(url) as peak:
                started, procs = _start_workers(folder, worker_url, workers, epochs, epoch_s)
                codes = [p.wait(timeout=900) for p in procs]
                wall = time.monotonic() - started
        finally:
            if proxy is not None:
                proxy.send_signal(signal.SIGTERM)
                proxy.wait(timeout=60)
        results = [json.loads(f.read_text()) for f in sorted(folder.glob("result-*.json"))]
        ok, states = _check(url, "bench", trials)
    done = [r for r in results if r["trials"]]
    per_trial = [r["seconds"] / r["trials"] for r in done]
    calls = [r["calls"] / r["trials"] for r in done]
    failed = sum(1 for c in codes if c)
    note = states + (f"; {failed} worker(s) exited non-zero" if failed else "")
    if peak.missed:
        note += f"; {peak.missed} connection samples failed (database restarted?)"
    return RunResult(
        peak=peak.peak,
        seconds_per_trial=statistics.median(per_trial) if per_trial else float("nan"),
        calls_per_trial=statistics.median(calls) if calls else float("nan"),
        wall_s=wall,
        ok=ok and not failed and not peak.missed,
        note=note,
    )


def _start_workers(
    folder: Path, url: str, workers: int, epochs: int, epoch_s: float
) -> tuple[float, list[subprocess.Popen]]:
    """Start the workers, wait until all are connected, then let them go together."""
    go = folder / "go"
    env = {**os.environ, "AUTOSEARCH_STORAGE": url}
    procs = []
    for i in range(workers):
        args = [sys.executable, __file__, "--worker", "--study", "bench", "--index", str(i)]
        args += ["--epochs", str(epochs), "--epoch-s", str(epoch_s), "--go", str(go)]
        args += ["--result", str(folder / f"result-{i:03d}.json")]
        log = open(folder / f"worker-{i}.log", "wb")  # noqa: SIM115 - closed with the process
        procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 600
    while len(list(folder.glob("ready-*"))) < workers:
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            logs = "\n".join(f.read_text()[-2000:] for f in folder.glob("worker-*.log"))
            raise RuntimeError(f"a worker did not start:\n{logs}")
        time.sleep(0.1)
    go.touch()
    return time.monotonic(), procs


# ----------------------------------------------------------------------------- table


def _median(runs: list[RunResult], field: str) -> float:
    return statistics.median(getattr(r, field) for r in runs)


def table(results: dict[tuple[int, str], list[RunResult]]) -> list[str]:
    lines = [
        "| workers | storage | peak connections | storage s/trial | calls/trial | wall s | ok |",
        "|---:|---|---:|---:|---:|---:|---|",
    ]
    for (workers, mode), runs in results.items():
        ok = all(r.ok for r in runs)
        notes = "; ".join(sorted({r.note for r in runs if not r.ok}))
        lines.append(
            f"| {workers} | {mode} | {_median(runs, 'peak'):.0f} "
            f"| {_median(runs, 'seconds_per_trial'):.4f} | {_median(runs, 'calls_per_trial'):.0f} "
            f"| {_median(runs, 'wall_s'):.1f} | {'yes' if ok else 'NO: ' + notes} |"
        )
    return lines


def verdict(results: dict[tuple[int, str], list[RunResult]], workers: int) -> list[str]:
    direct, proxy = results.get((workers, "direct")), results.get((workers, "proxy"))
    if not direct or not proxy:
        return []
    ratio = _median(proxy, "seconds_per_trial") / _median(direct, "seconds_per_trial")
    peak = _median(proxy, "peak")
    met = peak <= TARGET_CONNECTIONS and ratio <= TARGET_RATIO
    return [
        f"{workers} workers: proxy peak {peak:.0f} connections (direct "
        f"{_median(direct, 'peak'):.0f}); proxy storage time per trial = {ratio:.2f} x "
        f"direct. Target (<= {TARGET_CONNECTIONS} connections, <= {TARGET_RATIO} x): "
        f"{'met' if met else 'NOT met'}."
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pg", default=os.environ.get("AUTOSEARCH_TEST_PG"))
    parser.add_argument("--workers", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--epoch-s", type=float, default=0.5, help="sleep per stand-in epoch")
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--go", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker_main(args)
        return
    if not args.pg:
        parser.error("give --pg URL (a PostgreSQL server where the user may CREATE DATABASE)")
    _light_storage_package()
    results: dict[tuple[int, str], list[RunResult]] = {}
    for workers in args.workers:
        for r in range(args.repeat):
            # Alternate the modes within each repeat, so that a busy spell on the shared
            # machine does not fall on one of them only.
            for mode in ("direct", "proxy") if r % 2 == 0 else ("proxy", "direct"):
                run = run_once(args.pg, workers, mode == "proxy", args.epochs, args.epoch_s)
                results.setdefault((workers, mode), []).append(run)
                print(
                    f"  {workers:>3} workers {mode:<6} run {r + 1}: peak {run.peak}, "
                    f"{run.seconds_per_trial:.4f} s/trial, {run.wall_s:.1f} s, {run.note}",
                    flush=True,
                )
    results = dict(sorted(results.items()))
    lines = table(results)
    for workers in args.workers:
        lines += [""] + verdict(results, workers)
    print("\n".join(lines))
    if args.out:
        header = [
            "# Storage proxy: database connections and storage time per trial",
            "",
            f"`python bench/storage_proxy.py --workers {' '.join(map(str, args.workers))} "
            f"--repeat {args.repeat} --epochs {args.epochs} --epoch-s {args.epoch_s}` on "
            f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"PostgreSQL on the same machine, {time.strftime('%Y-%m-%d')}. "
            f"{TRIALS_PER_WORKER} trials per worker; heartbeat {HEARTBEAT_S} s. "
            "Medians over the runs.",
            "",
        ]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(header + lines) + "\n")


if __name__ == "__main__":
    main()
