"""A study run by the Slurm worker array of deploy/slurm/, on a real one-node Slurm.

When no cluster of ours is up, this sets one up on this machine (root needed): it
installs Debian's slurmctld, slurmd and munge if they are missing, starts munged, and
starts a private controller and node on 127.0.0.1, with their configuration, state and
logs in --state-dir and ports apart from Slurm's defaults. The node offers two
stand-in GPUs (a gres backed by null devices), so that the script's --gpus-per-task
request is scheduled as on a GPU cluster while the workers train on the CPU.

Then it makes a throw-away PostgreSQL database, queues a study of tiny 3-epoch trials
on synthetic data with deploy/slurm/queue.sh, submits deploy/slurm/worker.sbatch as a
2-task array with 2 CPU workers per task (AUTOSEARCH_CPU_WORKERS), requeues one task in
the middle of a trial as a preemption would, waits, and checks:

- the study reaches its trial count, nothing left waiting or running;
- both array tasks ran trials, and no two trials drew the same parameters;
- the preempted trial was failed and queued again, the requeued task came back, and
  the retry resumed after the trial's last checkpoint with every epoch reported once.

Usage:
    python bench/slurm_check.py --pg postgresql+psycopg://postgres@127.0.0.1:5432/postgres

tests/test_slurm.py runs it where Slurm is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
from autosearch.storage.databases import temporary_database
from autosearch.storage.urls import mask_url
from optuna.trial import TrialState
from reliability import SLOW_SPACE, write_dataset

REPO = Path(__file__).resolve().parents[1]
SBATCH = REPO / "deploy" / "slurm" / "worker.sbatch"
QUEUE = REPO / "deploy" / "slurm" / "queue.sh"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
DAEMONS = ["slurmctld", "slurmd", "munged"]
CLIENTS = ["sbatch", "squeue", "scontrol", "sinfo", "munge", "unmunge"]
SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
# Apart from Slurm's 6817/6818, so that a cluster already on this machine is left alone.
CTLD_PORT, SLURMD_PORT = 16817, 16818
FAKE_GPUS = 2
EPOCHS = 3


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def run(args: list[str], *, env: dict | None = None, check: bool = True) -> str:
    done = subprocess.run(args, env=env, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{done.stderr.strip()}")
    return done.stdout


def which(name: str) -> str | None:
    return shutil.which(name, path=SBIN)


# ------------------------------------------------------------------------------ slurm


def slurm_installed() -> bool:
    return all(which(c) for c in DAEMONS + CLIENTS)


def install() -> None:
    """apt-get the Slurm and munge packages when any of their commands is missing."""
    if slurm_installed():
        return
    if os.geteuid() != 0 or not which("apt-get"):
        raise SystemExit(f"Slurm is not installed; install {' '.join(PACKAGES)} as root")
    log(f"installing {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install_cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    if subprocess.run(install_cmd, env=env, capture_output=True).returncode != 0:
        run(["apt-get", "update", "-q"], env=env)
        run(install_cmd, env=env)


def munge_works() -> bool:
    credential = subprocess.run(["munge", "-n"], capture_output=True)
    if credential.returncode != 0:
        return False
    return subprocess.run(["unmunge"], input=credential.stdout, capture_output=True).returncode == 0


def start_munge() -> int | None:
    """Start munged when credentials do not work yet; its pid if this call started it."""
    if munge_works():
        return None
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        run(["runuser", "-u", "munge", "--", which("mungekey") or "mungekey", "--create"])
    # /run is often a fresh tmpfs in containers: the package's folder is gone.
    Path("/run/munge").mkdir(mode=0o755, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    run(["runuser", "-u", "munge", "--", which("munged")])
    for _ in range(50):
        if munge_works():
            return int(Path("/run/munge/munged.pid").read_text())
        time.sleep(0.1)
    raise RuntimeError("munged started but credentials do not work")


@dataclass
class LocalSlurm:
    """A controller and one node on 127.0.0.1, all of whose files are under `root`."""

    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": SBIN}

    def cmd(self, *args: str, check: bool = True) -> str:
        return run(list(args), env=self.env, check=check)

    def node_state(self) -> str:
        if not self.conf.exists():
            return ""
        return self.cmd("sinfo", "-h", "-N", "-o", "%T", check=False).strip()

    def is_up(self) -> bool:
        return self.node_state().rstrip("*") in ("idle", "mixed", "allocated")

    def write_config(self) -> str:
        """slurm.conf and gres.conf for this host; returns the node's name."""
        # `slurmd -C` prints this host's NodeName line: CPUs, sockets, cores, memory.
        node = run([which("slurmd"), "-C"]).splitlines()[0].strip()
        name = node.split()[0].split("=", 1)[1]
        devices = self.root / "dev"
        devices.mkdir(exist_ok=True)
        for i in range(FAKE_GPUS):
            path = devices / f"gpu{i}"
            if not path.exists():
                # Character devices, as Slurm insists, with /dev/null's numbers: harmless.
                os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        r = self.root
        self.conf.write_text(
            f"""\
ClusterName=autosearch-check
SlurmctldHost={name}(127.0.0.1)
SlurmctldPort={CTLD_PORT}
SlurmdPort={SLURMD_PORT}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/slurmctld.log
SlurmdLogFile={r}/slurmd.log
# No cgroups, which containers and CI machines often do not offer.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
GresTypes=gpu
{node} NodeAddr=127.0.0.1 Gres=gpu:{FAKE_GPUS} State=UNKNOWN
PartitionName=check Nodes={name} Default=YES MaxTime=INFINITE State=UP
"""
        )
        (self.root / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={name} Name=gpu File={devices}/gpu[0-{FAKE_GPUS - 1}]\n"
        )
        return name

    def pids(self) -> list[int]:
        found = []
        for name in ("slurmd.pid", "slurmctld.pid"):
            try:
                pid = int((self.root / name).read_text())
                os.kill(pid, 0)
                found.append(pid)
            except (OSError, ValueError):
                pass
        return found

    def start(self) -> None:
        for pid in self.pids():  # a cluster of an earlier run that is not healthy
            os.kill(pid, 15)
        time.sleep(1 if self.pids() else 0)
        # Fresh state: a node drained in an earlier run would stay drained.
        shutil.rmtree(self.root / "state", ignore_errors=True)
        for folder in ("state", "spool"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        name = self.write_config()
        self.cmd(which("slurmctld"))
        self.cmd(which("slurmd"))
        for _ in range(60):
            if self.is_up():
                log(f"Slurm up: node {name}, {FAKE_GPUS} stand-in GPUs, config {self.conf}")
                return
            time.sleep(0.5)
        tails = "\n".join(
            f"--- {p.name}\n" + "\n".join(p.read_text().splitlines()[-10:])
            for p in sorted(self.root.glob("*.log"))
        )
        raise RuntimeError(f"Slurm node not up (state {self.node_state()!r}):\n{tails}")

    def stop(self) -> None:
        for pid in self.pids():
            os.kill(pid, 15)


# ------------------------------------------------------------------------------ study


@dataclass
class Run:
    """One check: its workspace, study and Slurm job."""

    ws: Path
    study: str
    url: str
    trials: int
    tasks: int
    per_task: int
    job: str = ""

    @property
    def checkpoints(self) -> Path:
        return self.ws / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.ws / "logs"

    def env(self, cluster: LocalSlurm) -> dict[str, str]:
        url_file = self.ws / "storage-url"
        url_file.write_text(self.url + "\n")
        url_file.chmod(0o600)
        env = cluster.env
        env.pop("AUTOSEARCH_STORAGE", None)  # the URL travels in the file only
        env.update(
            AUTOSEARCH_STUDY=self.study,
            AUTOSEARCH_STORAGE_FILE=str(url_file),
            AUTOSEARCH_CPU_WORKERS=str(self.per_task),
            AUTOSEARCH_CHECKPOINT_DIR=str(self.checkpoints),
            AUTOSEARCH_LOG_DIR=str(self.logs),
            AUTOSEARCH_DATA=str(self.ws / "data"),
            AUTOSEARCH_BIN=str(autosearch_command()),
        )
        return env


def autosearch_command() -> Path:
    here = Path(sys.executable).parent / "autosearch"
    return here if here.exists() else Path(shutil.which("autosearch") or "autosearch")


def queue_study(run_: Run, env: dict[str, str]) -> None:
    space = run_.ws / "space.toml"
    space.write_text(SLOW_SPACE.format(epochs=EPOCHS))
    args = [
        str(QUEUE),
        "--study", run_.study,
        "--space", str(space),
        "--trials", str(run_.trials),
        "--epochs", str(EPOCHS),
        # An epoch of a second or two: time to requeue a task in the middle of a trial.
        "--subset", "400",
        "--val-size", "100",
        "--max-params", "100000",
        "--sampler", "random",
        "--pruner", "none",
        "--heartbeat", "2",
        "--grace", "10",
    ]  # fmt: skip
    done = subprocess.run(args, env=env, cwd=run_.ws, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"queue.sh exited {done.returncode}:\n{done.stdout}{done.stderr}")
    log("queue.sh: " + done.stdout.strip().splitlines()[-1])


def submit(run_: Run, cluster: LocalSlurm, env: dict[str, str]) -> str:
    args = [
        "sbatch", "--parsable",
        f"--array=0-{run_.tasks - 1}",
        # This node has 2 cores: the script's 8 cores and 32 GB per task would not fit.
        "--cpus-per-task=1", "--mem=1G",
        f"--output={run_.ws}/slurm-%A_%a.out",
        str(SBATCH),
    ]  # fmt: skip
    done = subprocess.run(args, env=env, cwd=run_.ws, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sbatch exited {done.returncode}: {done.stderr.strip()}")
    job = done.stdout.strip().split(";")[0]
    log(f"submitted job array {job}: {' '.join(args[1:-1])} deploy/slurm/worker.sbatch")
    return job


def tasks_of(cluster: LocalSlurm, job: str) -> dict[str, dict[str, str]]:
    """Each array task's fields from `scontrol show job`, by task id."""
    found = {}
    for line in cluster.cmd("scontrol", "-o", "show", "job", job, check=False).splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "ArrayTaskId" in fields:
            found[fields["ArrayTaskId"]] = fields
    return found


def task_of_pid(pid: int) -> tuple[str, str] | None:
    """(array task id, job id) of a process, from its environment."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env = dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)
    if "SLURM_JOB_ID" not in env:
        return None
    return env.get("SLURM_ARRAY_TASK_ID", "?"), env["SLURM_JOB_ID"]


def preempt_one(run_: Run, cluster: LocalSlurm, storage, deadline: float) -> dict:
    """Requeue the task that runs a trial past its first checkpoint (so in its second
    epoch, or about to report its first), then let the task start again at once."""
    while time.time() < deadline:
        study = optuna.load_study(study_name=run_.study, storage=storage)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # The study's folder is named after the study and its identity: <study>.<uuid>.
            folder = next(run_.checkpoints.glob(f"{run_.study}.*/trial-{t.number:05d}"), None)
            if folder is None or "worker" not in t.user_attrs:
                continue
            if not (folder / "epoch-0001.pt").exists():
                continue
            if (folder / "epoch-0002.pt").exists():
                continue  # too late: it might end before the signal lands
            found = task_of_pid(int(t.user_attrs["worker"].rsplit(":", 1)[1]))
            if found is None:
                continue
            task, job_id = found
            # The array's own id names every task of it: name the one task.
            target = f"{run_.job}_{task}"
            cluster.cmd("scontrol", "requeue", target)
            log(f"preempting: scontrol requeue {target} (job {job_id}) after the first "
                f"checkpoint of trial {t.number}")  # fmt: skip
            # Slurm holds a requeued job back for about two minutes; now will do.
            for _ in range(100):
                state = tasks_of(cluster, run_.job).get(task, {})
                if state.get("JobState") == "PENDING":
                    cluster.cmd("scontrol", "update", f"JobId={target}", "StartTime=now")
                    break
                time.sleep(0.2)
            return {"trial": t.number, "task": task, "job_id": job_id}
        time.sleep(0.1)
    raise AssertionError("no trial got past its first checkpoint to preempt")


def wait_for_job(run_: Run, cluster: LocalSlurm, deadline: float) -> None:
    last = ""
    while time.time() < deadline:
        now = cluster.cmd("squeue", "-h", "-r", "-j", run_.job, "-o", "%i %T %R", check=False)
        now = " | ".join(sorted(now.split("\n"))).strip(" |")
        if now != last:
            log(f"squeue: {now or 'empty'}")
            last = now
        if not now:
            return
        time.sleep(1)
    raise AssertionError(f"job {run_.job} still queued or running at the deadline")


def trials_by_task(run_: Run) -> dict[int, int]:
    """Trial number -> array task that worked on it, from the workers' logs: one line per
    finished trial, and a warning for each trial stopped by SIGTERM."""
    ran = {}
    for path in (run_.logs / run_.study).glob("worker-*.log"):
        task = int(path.stem.split("-")[1]) // run_.per_task
        text = path.read_text()
        for m in re.finditer(r"^trial\s+(\d+) |trial (\d+) stopped by SIGTERM", text, re.M):
            ran[int(m.group(1) or m.group(2))] = task
    return ran


def check(run_: Run, cluster: LocalSlurm, preempted: dict | None) -> str:
    study = optuna.load_study(study_name=run_.study, storage=run_.url)
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    ran = trials_by_task(run_)
    log(f"study {run_.study}: {dict(states)}")
    print(f"  {'trial':>5} {'state':<8} {'val':>6} {'epochs':<7} task  note")
    for t in trials:
        epochs = sorted(t.intermediate_values)
        span = f"{epochs[0]}-{epochs[-1]}" if epochs else "-"
        value = f"{t.value:.3f}" if t.value is not None else "-"
        note = ""
        if "failed_trial" in t.system_attrs:
            note = f"retry of #{t.system_attrs['failed_trial']}"
            if "resumed_from_epoch" in t.user_attrs:
                note += f", resumed after epoch {t.user_attrs['resumed_from_epoch']}"
        elif t.state == TrialState.FAIL:
            note = t.user_attrs.get("fail_reason", "")
        task = ran.get(t.number, "?")
        print(f"  {t.number:>5} {t.state.name:<8} {value:>6} {span:<7} {task:>4}  {note}")
    info = tasks_of(cluster, run_.job)
    for task, fields in sorted(info.items()):
        log(f"array task {task}: {fields.get('JobState')}, exit {fields.get('ExitCode')}, "
            f"restarts {fields.get('Restarts')}")  # fmt: skip

    assert states["WAITING"] == 0 and states["RUNNING"] == 0, dict(states)
    assert states["COMPLETE"] == run_.trials, f"{states['COMPLETE']} of {run_.trials} complete"
    firsts = [t for t in trials if "failed_trial" not in t.system_attrs]
    drawn = {json.dumps(t.params, sort_keys=True) for t in firsts}
    assert len(drawn) == len(firsts), "two trials drew the same parameters"
    by_task = Counter(ran.values())
    assert len(by_task) == run_.tasks, f"trials per array task: {dict(by_task)}"
    assert all(f.get("ExitCode") == "0:0" for f in info.values()), info
    summary = (
        f"{run_.tasks} array tasks x {run_.per_task} CPU workers completed {run_.trials}/"
        f"{run_.trials} trials; trials worked on, by task: {dict(sorted(by_task.items()))}; "
        "all parameters distinct"
    )
    if preempted is None:
        return summary
    # Every trial the requeue stopped is queued again once, with its parameters.
    stopped = [t for t in trials if "SIGTERM" in t.user_attrs.get("fail_reason", "")]
    assert stopped and all(t.state == TrialState.FAIL for t in stopped), stopped
    for t in stopped:
        retries = [r for r in trials if r.system_attrs.get("failed_trial") == t.number]
        assert len(retries) == 1, f"{len(retries)} retries of trial {t.number}"
        assert retries[0].state == TrialState.COMPLETE and retries[0].params == t.params
    # The one caught past its first checkpoint resumes after it.
    picked = trials[preempted["trial"]]
    assert picked in stopped, f"trial {picked.number} was not stopped: {picked.state}"
    retry = next(r for r in trials if r.system_attrs.get("failed_trial") == picked.number)
    k = retry.user_attrs.get("resumed_from_epoch")
    assert k is not None and k >= 1, retry.user_attrs
    assert retry.user_attrs["first_epoch"] == k + 1, retry.user_attrs
    assert sorted(retry.intermediate_values) == list(range(1, EPOCHS + 1))
    assert info[preempted["task"]]["Restarts"] == "1", info[preempted["task"]]
    return summary + (
        f"; task {preempted['task']} requeued after epoch 1 of trial {picked.number}, came "
        f"back (restarts 1); {len(stopped)} stopped trial(s) each queued again once; retry "
        f"#{retry.number} (same params, task {ran.get(retry.number, '?')}) resumed after epoch "
        f"{k}, epochs 1-{EPOCHS} reported once"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg", default=os.environ.get("AUTOSEARCH_TEST_PG"), help="admin URL")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--tasks", type=int, default=2, help="array tasks")
    parser.add_argument("--workers", type=int, default=2, help="CPU workers per task")
    parser.add_argument("--no-preempt", action="store_true", help="requeue no task")
    parser.add_argument("--timeout", type=float, default=600, help="s for the whole run")
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/autosearch-slurm"))
    parser.add_argument("--keep-cluster", action="store_true", help="leave Slurm running")
    parser.add_argument("--keep-files", action="store_true", help="keep the workspace")
    args = parser.parse_args()
    if not args.pg:
        parser.error("give --pg URL (or set AUTOSEARCH_TEST_PG): a user who may CREATE DATABASE")
    deadline = time.time() + args.timeout

    install()
    munged = start_munge()
    cluster = LocalSlurm(args.state_dir)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    ours = not cluster.is_up()
    if ours:
        cluster.start()
    log("sinfo: " + cluster.cmd("sinfo", "-h", "-o", "%P %a %D %T %N gres=%G cpus=%c").strip())
    ws = Path(tempfile.mkdtemp(prefix="autosearch-slurm-check-"))
    job = None
    try:
        with temporary_database(args.pg, prefix="autosearch_slurm") as url:
            log(f"database {mask_url(url)}")
            write_dataset(ws / "data")
            run_ = Run(ws, "slurm-check", url, args.trials, args.tasks, args.workers)
            env = run_.env(cluster)
            queue_study(run_, env)
            run_.job = job = submit(run_, cluster, env)
            storage = optuna.storages.RDBStorage(url)
            preempted = None if args.no_preempt else preempt_one(run_, cluster, storage, deadline)
            wait_for_job(run_, cluster, deadline)
            storage.engine.dispose()
            for out in sorted(ws.glob("slurm-*.out")):
                print(f"--- {out.name}\n{out.read_text().rstrip()}")
            print("slurm check: " + check(run_, cluster, preempted))
    finally:
        if job is not None:
            cluster.cmd("scancel", job, check=False)
        if args.keep_files:
            log(f"workspace kept: {ws}")
        else:
            shutil.rmtree(ws, ignore_errors=True)
        if ours and not args.keep_cluster:
            cluster.stop()
            if munged is not None:
                os.kill(munged, 15)


if __name__ == "__main__":
    main()
