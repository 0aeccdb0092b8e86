"""How the commands print architectures, trials and studies."""

from __future__ import annotations

import time

import optuna
from autosearch.models import ArchSpec
from autosearch.search.cli.app import console
from autosearch.search.tuning.outcomes import count_outcomes, top_trials, trial_summary


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


class TrialLines:
    """One line per finished trial: outcome, counts, best so far and elapsed time."""

    def __init__(self) -> None:
        self.started = time.time()

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
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
        elapsed = time.strftime("%H:%M:%S", time.gmtime(time.time() - self.started))
        done = sum(counts[k] for k in ("complete", "pruned", "infeasible", "failed"))
        console.print(
            f"trial {trial.number:>4} {s['state']:<10} val {acc:<6} {params:>6} "
            f"{short_arch(s['arch']):<32} | done {done} pruned {counts['pruned']} "
            f"infeasible {counts['infeasible']} failed {counts['failed']} "
            f"| {best} | {elapsed}",
            highlight=False,
            soft_wrap=True,
        )
