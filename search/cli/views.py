"""How the commands print architectures, trials and studies."""

from __future__ import annotations

import time

import optuna
from autosearch.models import ArchSpec
from autosearch.search.cli.app import console
from autosearch.search.tuning.outcomes import count_outcomes, top_trials, trial_summary
from rich.live import Live
from rich.text import Text


def short_arch(arch: dict | None) -> str:
    if not arch:
        return "-"
    spec = ArchSpec.from_dict(arch)
    return "-".join(str(w) for w in spec.widths) + " x " + ",".join(map(str, spec.repeats))


def print_best(study: optuna.Study) -> None:
    top = top_trials(study, 1)
    if not top:
        console.print("no complete trial yet")
        return
    s = trial_summary(top[0])
    spec = ArchSpec.from_dict(s["arch"])
    r = s["recipe"]
    console.print(f"[bold]best trial #{s['number']}[/]: val acc {s['value']:.4f}", highlight=False)
    console.print(f"  arch    {spec.describe()}", highlight=False)
    console.print(f"  params  {s['params']:,}   FLOPs {s['flops'] / 1e6:,.1f} M", highlight=False)
    console.print(
        f"  recipe  {r['optimizer']} lr {r['lr']:.4g} mom {r['momentum']:.3g} "
        f"wd {r['weight_decay']:.2g} batch {r['batch_size']} {r['schedule']} "
        f"{r['epochs']} epochs, ls {r['label_smoothing']:.2f}, "
        f"aug {'+'.join(a['name'] for a in r['augment']) or 'none'}",
        highlight=False,
    )


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class TrialLines:
    """What a run in this process says while it works.

    After each epoch, a live line for the running trial (epoch, validation accuracy,
    images/s) and the study's ETA; on a terminal the line is redrawn in place, in a pipe
    or a log file it is printed whole, one per epoch. After each trial, a permanent line:
    outcome, counts, best so far, elapsed time and ETA.

    Args:
        trials: The trials this run will do, for the ETA; None when unknown.
        deadline: `time.time()` after which no trial starts (--timeout), or None.
    """

    def __init__(self, trials: int | None = None, deadline: float | None = None) -> None:
        self.started = time.time()
        self.trials = trials
        self.deadline = deadline
        self.finished = 0
        self.live: Live | None = None
        self.trial_number: int | None = None
        self.trial_started = self.started

    def _eta(self, current_left: float = 0.0, current_so_far: float = 0.0) -> str:
        """Time left for the study: the trial budget at the average pace so far, capped
        by the deadline. Empty when neither is known."""
        now = time.time()
        left = None
        if self.trials is not None:
            if self.finished:
                per_trial = (now - self.started - current_so_far) / self.finished
            else:
                per_trial = current_so_far + current_left
            waiting = max(0, self.trials - self.finished - (self.trial_number is not None))
            left = waiting * per_trial + current_left
        if self.deadline is not None:
            left = min(left, self.deadline - now) if left is not None else self.deadline - now
        return "" if left is None else f" | eta {_clock(left)}"

    def on_epoch(self, trial: optuna.Trial, report) -> None:
        now = time.time()
        if trial.number != self.trial_number:
            self.trial_number = trial.number
            self.trial_started = now - report.seconds
        epochs = trial.user_attrs.get("recipe", {}).get("epochs", report.epoch)
        so_far = now - self.trial_started
        # Epochs inherited from a resumed checkpoint took no time here: pace by this run's.
        first = trial.user_attrs.get("first_epoch", 1)
        pace = so_far / max(1, report.epoch - first + 1)
        text = (
            f"trial {trial.number:>4} epoch {report.epoch}/{epochs} val {report.val_acc:.4f} "
            f"train loss {report.train_loss:.3f} {report.images_per_s:,.0f} img/s"
            + self._eta(pace * (epochs - report.epoch), so_far)
        )
        if not console.is_terminal:
            console.print(text, highlight=False, markup=False, soft_wrap=True)
            return
        if self.live is None:
            self.live = Live(console=console, transient=True, auto_refresh=False)
            self.live.start()
        self.live.update(Text(text), refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.close()
        self.finished += 1
        self.trial_number = None
        s = trial_summary(trial)
        counts = count_outcomes(study)
        top = top_trials(study, 1)
        best = (
            f"best {top[0].value:.4f} (#{top[0].number}, {top[0].user_attrs['params'] / 1e6:.2f}M)"
            if top
            else "best -"
        )
        acc = f"{trial.value:.4f}" if s["state"] == "complete" else "-"
        params = f"{s['params'] / 1e6:.2f}M" if s["params"] else "-"
        elapsed = _clock(time.time() - self.started)
        done = sum(counts[k] for k in ("complete", "pruned", "infeasible", "failed"))
        console.print(
            f"trial {trial.number:>4} {s['state']:<10} val {acc:<6} {params:>6} "
            f"{short_arch(s['arch']):<32} | done {done} pruned {counts['pruned']} "
            f"infeasible {counts['infeasible']} failed {counts['failed']} "
            f"| {best} | {elapsed}{self._eta()}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
