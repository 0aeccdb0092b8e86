"""Run several worker processes of one study on this machine, and watch over them.

Each worker is a separate process (``python -m autosearch worker``) pinned to one GPU with
``CUDA_VISIBLE_DEVICES``, or a CPU worker. Workers share nothing but the study storage:
they claim the study's WAITING trials one at a time, so the trial budget is counted
across all of them and across machines. The launcher polls the study for combined
progress, fails trials whose heartbeat stopped (their retries are then queued),
restarts a worker that crashed up to a limit, and on Ctrl-C or SIGTERM passes the
signal on and waits for the workers to mark their trials and stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from autosearch.search.tuning.budget import queued_trials
from autosearch.search.tuning.outcomes import count_outcomes, top_trials
from autosearch.search.tuning.slots import Slot
from autosearch.search.tuning.worker import LAUNCHER_ENV, fail_stale
from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

EXIT_BAD_INPUT = 2  # the CLI's code for a bad flag or setting: a restart fails the same way
EXIT_RUNTIME = 4  # the CLI's code for a runtime error (the data, the database): restarted
STOP_WAIT_S = 60.0  # after Ctrl-C, how long workers get to fail their trial and exit
LOG_TAIL_LINES = 5  # lines of a crashed worker's log shown with the report


@dataclass
class _Proc:
    slot: Slot
    process: subprocess.Popen
    log_path: Path
    restarts: int = 0
    done: bool = False  # exited cleanly, or gave up after too many restarts
    exit_codes: list[int] = field(default_factory=list)


def _tail(path: Path, n: int) -> str:
    try:
        with open(path, errors="replace") as f:
            return "".join(deque(f, maxlen=n)).rstrip()
    except OSError:
        return "(no log)"


class Launcher:
    """Start one worker process per slot and supervise them until they are all done.

    Args:
        study: The study (opened on a storage with heartbeats, so that stale trials
            are failed and retried from here too).
        slots: The worker processes to run.
        worker_args: Arguments after ``python -m autosearch`` common to every worker; each
            gets ``--worker-index`` and ``--device`` added.
        storage_url: Passed to workers in the environment, never on the command line,
            where any user of the machine could read its password.
        log_dir: One log file per worker, appended to across restarts.
        max_restarts: Restarts of one worker after a crash before it is given up.
        poll_s: Seconds between progress updates and stale-trial checks.
        console: Where progress and events go.
    """

    def __init__(
        self,
        study: optuna.Study,
        slots: list[Slot],
        worker_args: list[str],
        *,
        storage_url: str,
        log_dir: Path,
        max_restarts: int = 3,
        poll_s: float = 2.0,
        console: Console | None = None,
    ) -> None:
        self.study = study
        self.slots = slots
        self.worker_args = worker_args
        self.storage_url = storage_url
        self.log_dir = Path(log_dir)
        self.max_restarts = max_restarts
        self.poll_s = poll_s
        self.console = console or Console()
        self.procs: list[_Proc] = []
        self.stopping = False
        self.stop_signal_at = 0.0
        self.restarts = 0
        self.crashes = 0
        self.given_up: list[Slot] = []

    # ------------------------------------------------------------------ processes

    def _env(self, slot: Slot) -> dict[str, str]:
        env = dict(os.environ)
        env["AUTOSEARCH_STORAGE"] = self.storage_url
        env[LAUNCHER_ENV] = str(os.getpid())  # workers end when this process dies
        env["PYTHONUNBUFFERED"] = "1"  # log lines reach the file as they happen
        # Share the host cores: N workers each with every core thrash one another.
        threads = str(max(1, (os.cpu_count() or 1) // len(self.slots)))
        env.setdefault("OMP_NUM_THREADS", threads)
        env.setdefault("MKL_NUM_THREADS", threads)
        if slot.gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.gpu
        return env

    def _spawn(self, slot: Slot) -> tuple[subprocess.Popen, Path]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"worker-{slot.index}.log"
        args = [*self.worker_args, "--worker-index", str(slot.index)]
        if slot.gpu is not None:
            args += ["--device", "cuda"]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "autosearch", "worker", *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(slot),
                # Own process group: a terminal's Ctrl-C reaches the launcher only, which
                # passes it on once, instead of every worker getting it twice.
                start_new_session=True,
            )
        return process, log_path

    def _check_children(self, say) -> None:
        for p in self.procs:
            if p.done or p.process.poll() is None:
                continue
            code = p.process.returncode
            p.exit_codes.append(code)
            if code == 0 or self.stopping:
                p.done = True
                continue
            self.crashes += 1
            tail = _tail(p.log_path, LOG_TAIL_LINES)
            if p.restarts >= self.max_restarts or code == EXIT_BAD_INPUT:
                p.done = True
                self.given_up.append(p.slot)
                why = "bad input" if code == EXIT_BAD_INPUT else f"{p.restarts} restart(s)"
                say(
                    f"[red]{p.slot.label} exited with code {code}[/] and is given up ({why}); "
                    f"log {p.log_path}:\n{tail}"
                )
                continue
            p.restarts += 1
            self.restarts += 1
            say(
                f"[yellow]{p.slot.label} exited with code {code}[/]; restarting "
                f"({p.restarts}/{self.max_restarts}); log {p.log_path}:\n{tail}"
            )
            p.process, p.log_path = self._spawn(p.slot)

    def _signal_children(self, sig: int) -> None:
        for p in self.procs:
            if p.process.poll() is None:
                try:
                    p.process.send_signal(sig)
                except ProcessLookupError:
                    pass

    # ------------------------------------------------------------------- progress

    def _remaining(self) -> int:
        """Trials of this run not yet done: queued (parked ones are for a later run) or
        running."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return len(queued_trials(self.study)) + len(running)

    def _describe(self) -> str:
        counts = count_outcomes(self.study)
        top = top_trials(self.study, 1)
        best = f"best {top[0].value:.4f} (#{top[0].number})" if top else "best -"
        alive = sum(p.process.poll() is None for p in self.procs)
        return (
            f"workers {alive}/{len(self.procs)} | running {counts['running']} "
            f"complete {counts['complete']} pruned {counts['pruned']} "
            f"infeasible {counts['infeasible']} failed {counts['failed']} | {best}"
        )

    # ------------------------------------------------------------------------ run

    def run(self) -> int:
        """Run the workers to the end; returns the trials still WAITING or RUNNING."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._run()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum: int, _frame) -> None:
        if self.stopping:
            return  # already passed on; the wait below is bounded
        self.stopping = True
        self.stop_signal_at = time.monotonic()
        # As received: a worker fails its trial on SIGINT, and also queues it again on
        # SIGTERM (a preemption), to resume elsewhere.
        self._signal_children(signum)

    def _run(self) -> int:
        total = self._remaining()
        for slot in self.slots:
            process, log_path = self._spawn(slot)
            self.procs.append(_Proc(slot, process, log_path))
        # A bar on a terminal; in a pipe or a log file, one plain line per change.
        show = _Bar if self.console.is_terminal else _Lines
        with show(self.console, self.study.study_name, total) as display:
            while True:
                self._check_children(display.say)
                if all(p.done for p in self.procs):
                    break
                if self.stopping and time.monotonic() - self.stop_signal_at > STOP_WAIT_S:
                    display.say("workers did not stop in time; killing them")
                    self._signal_children(signal.SIGKILL)
                try:
                    # The launcher checks for dead workers' trials too, so that a retry is
                    # queued within one poll of the grace period ending.
                    fail_stale(self.study)
                    display.update(max(0, total - self._remaining()), self._describe())
                except Exception as e:  # a database blip must not stop the supervision
                    why = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                    display.say(f"progress check failed: {why}")
                time.sleep(self.poll_s)
            remaining = self._remaining()
            display.update(max(0, total - remaining), self._describe())
        return remaining


class _Bar:
    """Combined progress as a rich bar, for a terminal."""

    def __init__(self, console: Console, name: str, total: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(name, total=total, info="starting")

    def __enter__(self) -> _Bar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def say(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, soft_wrap=True)

    def update(self, done: int, info: str) -> None:
        self.progress.update(self.task, completed=done, info=info)


class _Lines:
    """Combined progress as whole plain lines, one each time it changes: a pipe or a log
    file keeps every line, never a redrawn, cut-off one."""

    def __init__(self, console: Console, name: str, total: int) -> None:
        self.console, self.name, self.total = console, name, total
        self.started = time.monotonic()
        self.last: tuple[int, str] | None = None

    def __enter__(self) -> _Lines:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def update(self, done: int, info: str) -> None:
        if (done, info) == self.last:
            return
        self.last = (done, info)
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.monotonic() - self.started))
        self.console.print(
            f"{self.name}: {done}/{self.total} | {info} | {elapsed}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
