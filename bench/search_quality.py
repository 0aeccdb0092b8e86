"""Does the search beat random search for the same compute?

    python bench/search_quality.py --proxy [--data-dir DIR]            # 2 CPU cores, <= 45 min
    python bench/search_quality.py --quick [--data-dir DIR]            # a tiny proxy, ~3 min
    python bench/search_quality.py --data-dir DIR --device cuda        # full: zigzag on a GPU
    python bench/search_quality.py --replot bench/results/search_quality_proxy.json
    python bench/search_quality.py --rescore bench/results/search_quality_proxy.json [--times 3]

Each arm is a sampler and a pruner run through the project's own study machinery
(`open_study`, `make_sampler`, `make_pruner`, `reserve_trials`, `run_worker` and
`Objective`), one study per SQLite file in a temporary folder, exactly as `autosearch
start` runs them: random search, and TPE after the project's 5 random start-up trials
alone, with median pruning and with Hyperband (`tpe5`, `tpe5+median`, `tpe5+hyperband`).
On request (`--arms`): the quartile pruner (`tpe5+quartile`), the same four TPE arms
after Optuna's 10 start-up trials (`tpe`, `tpe+median`, `tpe+hyperband`,
`tpe+quartile`), or the GP sampler; `--add-to JSON` runs such arms with a saved result's
settings and tables them with its arms. Every arm gets the same
compute, counted in trained images: a study stops at the first trial that ends at or
past the budget, and a pruned trial counts the epochs it trained. The budget is given in
full trials (every epoch of the whole training split). Repetition r of every arm uses
sampler seed `--seed + r` and the same training seeds, so TPE's random start-up trials
are random search's first trials: the arms differ only in what they learn.

The best-so-far of a study after x images is the best final validation accuracy of the
trials that finished training by then (pruned, failed and infeasible trials have none),
which is what `autosearch best` reports. The table gives its median (min-max) over the
repetitions at 25%, 50% and 100% of the budget, the share of trained images that went
to trials later pruned, and the accuracy of the seed configurations trained once with
the same data and epochs (their widths scaled by one factor when they exceed the
budget). The target: TPE with pruning reaches random search's final median best in 60%
of the budget or less and ends above it. A PNG plots the best-so-far against images
trained: the median line of each arm with its min-max band (matplotlib, from the
project's `bench` extra).

A study's best is the highest of many noisy scores: on the proxy, three trainings of one
configuration with different seeds spread over up to 5 points. `--rescore JSON` retrains the best
trial of every study of a saved result `--times` times with new training seeds, all
studies with the same seeds, and adds to the table the mean of those runs: how good the
configuration each arm picked is, apart from the luck that made it the best.

`--proxy` searches `zigzag-cpu` under 50,000 parameters on 4,096 training and 1,024
validation images for 4 epochs (pruning can act after epochs 2 and 3), 25 full trials
per study, two studies at a time with one thread each. The full mode searches `zigzag`
under 5,000,000 parameters on the whole split for 15 epochs, 60 full trials per study,
one study at a time on the GPU: 720 full 15-epoch trials' worth of training at the
default 3 repetitions of 4 arms, so time one trial first and start with `--reps 1` or
a smaller `--budget-trials`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.search_quality_report import plot, table
from bench.search_quality_runs import ARMS, MODES, Setting, rescore, run_all

RESULTS = Path(__file__).resolve().parent / "results"


# Options whose value is a local path, and the word a saved command line shows instead:
# results are shared, paths not.
_PATHS = {"--data-dir": "DATA_DIR", "--out": "DIR", "--add-to": "JSON", "--rescore": "JSON"}


def _command(argv: list[str]) -> str:
    """The command line with each path named by its kind (`_PATHS`)."""
    words = []
    for i, word in enumerate(argv):
        option, equals, _ = word.partition("=")
        if equals and option in _PATHS:
            word = f"{option}={_PATHS[option]}"
        elif i and argv[i - 1] in _PATHS:
            word = _PATHS[argv[i - 1]]
        words.append(word)
    return " ".join(["python bench/search_quality.py", *words])


def _run_of(results: dict[str, Any], command: str, revision: str, wall_s: float) -> None:
    """Add one run's command line, revision and wall time to a saved result's."""
    results["command"] = f"{results['command']}\n$ {command}" if "command" in results else command
    known = results.get("revision")
    results["revision"] = revision if known in (None, revision) else f"{known}, then {revision}"
    results["wall_s"] = results.get("wall_s", 0.0) + wall_s


def _revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _setting(args: argparse.Namespace) -> Setting:
    mode = "proxy" if args.proxy else "quick" if args.quick else "full"
    s = MODES[mode]
    changes: dict[str, Any] = {
        k: v
        for k, v in {
            "reps": args.reps,
            "budget_trials": args.budget_trials,
            "subset": args.subset,
            "epochs": args.epochs,
            "max_params": args.max_params,
            "lanes": args.lanes,
            "threads": args.threads,
            "device": args.device,
        }.items()
        if v is not None
    }
    if args.arms is not None:
        arms = tuple(a.strip() for a in args.arms.split(","))
        unknown = [a for a in arms if a not in ARMS]
        if unknown:
            raise SystemExit(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
        changes["arms"] = arms
    s = replace(s, **changes)
    if s.reps < 1 or s.budget_trials <= 0 or s.lanes < 1:
        raise SystemExit(f"--reps and --lanes must be >= 1 and the budget > 0, got {s}")
    return s


def _added(path: str, s: Setting) -> tuple[dict[str, Any], Setting]:
    """A saved result, and its setting with the arms of `s` that it lacks."""
    base = json.loads(Path(path).read_text())
    saved = Setting(**{**base["setting"], "arms": tuple(base["setting"]["arms"])})
    new = tuple(a for a in s.arms if a not in saved.arms)
    if not new:
        raise SystemExit(f"{path} holds every arm of {', '.join(s.arms)} already")
    return base, replace(saved, arms=new, lanes=s.lanes, threads=s.threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--proxy", action="store_true", help="the CPU-sized comparison")
    which.add_argument("--quick", action="store_true", help="a tiny proxy that checks the script")
    which.add_argument("--replot", metavar="JSON", help="table and figure of a saved result")
    which.add_argument(
        "--rescore", metavar="JSON", help="retrain each study's best of a saved result, add it"
    )
    parser.add_argument("--times", type=int, default=3, help="retrainings per best (--rescore)")
    parser.add_argument("--data-dir", default=os.environ.get("AUTOSEARCH_DATA"))
    parser.add_argument("--reps", type=int, help="repetitions per arm")
    parser.add_argument("--budget-trials", type=float, help="budget per study, in full trials")
    parser.add_argument("--arms", help=f"comma-separated, from {', '.join(ARMS)}")
    parser.add_argument("--subset", type=int, help="images sampled, a fifth for validation")
    parser.add_argument("--epochs", type=int, help="epochs per trial")
    parser.add_argument("--max-params", type=int, help="parameter budget")
    parser.add_argument("--lanes", type=int, help="studies run at once")
    parser.add_argument("--threads", type=int, help="torch threads per study; 0: default")
    parser.add_argument("--device")
    parser.add_argument("--seed", type=int, default=0, help="repetition r uses seed + r")
    parser.add_argument("--out", help="folder for the .txt, .png and .json (default: results)")
    parser.add_argument(
        "--add-to", metavar="JSON", help="run --arms with a saved result's settings, add them"
    )
    args = parser.parse_args()

    if args.replot:
        results = json.loads(Path(args.replot).read_text())
        stem = Path(args.replot).with_suffix("")
    elif args.rescore:
        if args.times < 1:
            raise SystemExit(f"--times must be >= 1, got {args.times}")
        path = Path(args.rescore)
        results = json.loads(path.read_text())
        started = time.perf_counter()
        results["rescored"] = rescore(results, args.data_dir, args.times)
        _run_of(results, _command(sys.argv[1:]), _revision(), time.perf_counter() - started)
        path.write_text(json.dumps(results, indent=1) + "\n")
        stem = path.with_suffix("")
    else:
        s = _setting(args)
        out = Path(args.out) if args.out else (
            RESULTS if s.mode != "quick" else Path(tempfile.mkdtemp(prefix="search-quality-"))
        )  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        base, name = None, f"search_quality_{s.mode}"
        if args.add_to:
            base, s = _added(args.add_to, s)
            name += "_" + "_".join(a.replace("+", "-") for a in s.arms)
        started = time.perf_counter()
        results = run_all(s, args.data_dir, args.seed, seeds=base is None)
        if base is not None:  # the saved arms first, then the new ones
            results["setting"]["arms"] = [*base["setting"]["arms"], *s.arms]
            results["studies"] = base["studies"] + results["studies"]
            results["seeds"] = base["seeds"]
            for key in ("command", "revision", "wall_s", "rescored"):
                if key in base:
                    results[key] = base[key]
        _run_of(results, _command(sys.argv[1:]), _revision(), time.perf_counter() - started)
        stem = out / name
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    cpu = sum(r.get("cpu_s", 0.0) for r in results["studies"] + results["seeds"])
    lanes = results["setting"]["lanes"]
    text = (
        f"$ {results['command']}\nrevision {results['revision']}: {results['wall_s'] / 60:.1f} "
        f"min wall in all, {cpu / 60:.1f} CPU-min in the studies (about {cpu / lanes / 60:.1f} min "
        f"with {lanes} idle core(s))\n\n{table(results)}"
    )
    print("\n" + text)
    stem.with_suffix(".txt").write_text(text + "\n")
    try:
        drawn = plot(results, stem.with_suffix(".png"))
        print(f"\nwrote {stem}.txt, .json and .png ({drawn})")
    except RuntimeError as e:
        print(f"\nwrote {stem}.txt and .json; no figure: {e}")


if __name__ == "__main__":
    main()
