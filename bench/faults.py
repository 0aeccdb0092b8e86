"""Fault scenarios beyond the anchors of bench/reliability.py, with real processes.

- cuts: 4 workers and 40 trials on PostgreSQL through `pgproxy.PgProxy`, which cuts
  connections mid-claim, after the server commits but before the reply, mid-heartbeat
  and mid-tell; exactly 40 trials complete, numbered 0-39, none running, none twice,
  every epoch's value present;
- orphans: the launcher is killed with SIGKILL mid-trial; its workers end within a
  second or two, their trials are failed with the reason and queued again at once, and
  the next `start` resumes them from their checkpoints;
- restarts: a worker that fails at run time exits 4 and the launcher restarts it up to
  --max-restarts before giving it up (a bad flag, exit 2, is given up at once).

`python bench/reliability.py --only cuts orphans restarts` prints one line each; the
tests in tests/search/test_faults.py run each scenario once.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.pgproxy import CLAIM_SQL, HEARTBEAT_SQL, TELL_SQL, VALUE_SQL, Cut, PgProxy
from bench.reliability import (
    SLOW_SPACE,
    TINY_SPACE,
    children,
    finish,
    launch,
    load,
    start_args,
    wait_for,
    workspace,
)

# The four moments of the issue; each is cut every third time it comes, six times.
CUT_KINDS = {
    "mid-claim": ("before", CLAIM_SQL),
    "after-commit": ("after_commit", re.compile(f"{CLAIM_SQL.pattern}|{TELL_SQL.pattern}")),
    "mid-heartbeat": ("before", HEARTBEAT_SQL),
    "mid-tell": ("before", VALUE_SQL),
}


def cuts(
    url: str, *, workers: int = 4, trials: int = 40, kinds: tuple[str, ...] = tuple(CUT_KINDS)
) -> str:
    """Workers on a proxied PostgreSQL whose connections are cut at the given moments."""
    study = f"cuts-{uuid.uuid4().hex[:8]}"
    plan = [Cut(k, *CUT_KINDS[k], every=3, limit=6) for k in kinds]
    with workspace() as ws, PgProxy(plan) as proxy:
        space = ws.space("tiny", TINY_SPACE, 1)
        # Grace 30 s: a cut costs a reconnect and a retry, never a trial's life.
        args = start_args(
            ws, study, proxy.url(url), space=space, trials=trials, workers=workers,
            subset=100, heartbeat=1, grace=30,
        )  # fmt: skip
        started = time.monotonic()
        log = ws.root / "launcher.log"
        output = finish(launch(args, log), log, timeout=600)
        seconds = time.monotonic() - started
        logs = "\n".join(p.read_text() for p in sorted((ws.root / "logs").rglob("*.log")))
    done = load(url, study).get_trials(deepcopy=False)
    numbers = sorted(t.number for t in done)
    states = {s.name: sum(t.state == s for t in done) for s in TrialState}
    curves = sum(sorted(t.intermediate_values) == [1] for t in done)
    assert numbers == list(range(trials)), f"trial numbers {numbers}"
    assert states["COMPLETE"] == trials and states["RUNNING"] == states["WAITING"] == 0, states
    assert curves == trials, f"{trials - curves} trial(s) miss their epoch value"
    assert "0 crash(es)" in output, output
    for k in kinds:
        assert proxy.done[k] > 0, f"no {k} cut happened ({dict(proxy.seen)})"
    found = logs.count("found its first attempt done")
    made = ", ".join(f"{k} {proxy.done[k]}" for k in kinds)
    return (
        f"cuts: {workers} workers, {states['COMPLETE']}/{trials} complete, numbers "
        f"{numbers[0]}-{numbers[-1]}, running {states['RUNNING']}, waiting "
        f"{states['WAITING']}, epoch values {curves}/{trials}; cuts made: {made}; "
        f"{found} repeated write(s) found their first attempt done, 0 crashes, {seconds:.0f} s"
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def orphans(url: str, *, rerun: bool = True) -> str:
    """SIGKILL the launcher mid-trial: its workers end, their trials are queued again;
    with `rerun`, the next `start` runs the retries, which resume from checkpoints."""
    study = f"orphans-{uuid.uuid4().hex[:8]}"
    with workspace() as ws:
        space = ws.space("slow", SLOW_SPACE, 4)
        args = start_args(
            ws, study, url, space=space, trials=2, workers=2, subset=200, heartbeat=1,
            grace=60,
        )  # fmt: skip
        log = ws.root / "launcher.log"
        storage = optuna.storages.RDBStorage(url)
        launcher = launch(args, log)
        # A trial wrote an epoch checkpoint: it is mid-run, and its retry can resume.
        wait_for(lambda: any(ws.checkpoints.rglob("epoch-*.pt")), 180, "an epoch checkpoint")
        workers = children(launcher.pid)
        os.kill(launcher.pid, signal.SIGKILL)
        killed = time.monotonic()
        launcher.wait()
        wait_for(lambda: not any(_alive(p) for p in workers), 30, "the workers to end")
        gone_after = time.monotonic() - killed
        trials = load(storage, study).get_trials(deepcopy=False)
        states = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
        cut_off = [t for t in trials if t.state == TrialState.FAIL]
        retries = [t for t in trials if "failed_trial" in t.system_attrs]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        assert len(workers) == 2 and cut_off, states
        assert all(
            t.user_attrs["fail_reason"] == "the launcher of its worker died" for t in cut_off
        )
        assert len(retries) == len(cut_off) and all(t in waiting for t in retries), states
        assert not any(t.state == TrialState.RUNNING for t in trials), states
        if not rerun:
            return (
                f"orphans: SIGKILL of the launcher mid-epoch; its 2 workers ended "
                f"{gone_after:.1f} s later; {len(cut_off)} running trial(s) failed and queued "
                "at once; 0 running"
            )
        # The next run takes the retries first; they resume from their checkpoints.
        again = start_args(
            ws, study, url, space=space, trials=len(waiting), workers=2, subset=200,
            heartbeat=1, grace=60,
        )  # fmt: skip
        finish(launch(again, log), log, timeout=300)
    final = load(url, study).get_trials(deepcopy=False)
    redone = [t for t in final if "failed_trial" in t.system_attrs]
    assert all(t.state == TrialState.COMPLETE for t in final if t not in cut_off), final
    resumed = [t.user_attrs.get("resumed_from_epoch") for t in redone]
    assert any(r is not None for r in resumed), resumed
    assert all(sorted(t.intermediate_values) == [1, 2, 3, 4] for t in redone)
    return (
        f"orphans: SIGKILL of the launcher mid-epoch; its 2 workers ended "
        f"{gone_after:.1f} s later; {len(cut_off)} running trial(s) failed ('the launcher "
        f"of its worker died') and queued at once; the next start (--trials "
        f"{len(waiting)}) ran them, resumed after epochs {resumed}; 0 running"
    )


def restarts(*, max_restarts: int = 2) -> str:
    """A worker that fails at run time exits 4 and is restarted, then given up."""
    study = f"restarts-{uuid.uuid4().hex[:8]}"
    with workspace() as ws:
        url = f"sqlite:///{ws.root / 'studies.db'}"
        space = ws.space("tiny", TINY_SPACE, 1)
        # The data file is found where it should be, and breaks only when read.
        (ws.data / "cifar10.npz").write_bytes(b"PK\x03\x04 not really a zip")
        args = start_args(
            ws, study, url, space=space, trials=8, workers=2, subset=100, heartbeat=2,
            grace=20,
        )  # fmt: skip
        args += ["--max-restarts", str(max_restarts)]
        log = ws.root / "launcher.log"
        process = launch(args, log)
        process.wait(timeout=300)
        output = log.read_text()
    codes = re.findall(r"exited with code (\d+)", output)
    assert process.returncode == 1, (process.returncode, output)
    assert codes == ["4"] * 2 * (max_restarts + 1), output  # each of 2 workers
    assert f"restarting ({max_restarts}/{max_restarts})" in output, output
    assert f"given up ({max_restarts} restart(s))" in output, output
    return (
        f"restarts: 2 workers failing at run time exited {len(codes)} times with code 4; "
        f"each restarted {max_restarts}/{max_restarts} times, then given up; launcher "
        f"exit {process.returncode}"
    )
