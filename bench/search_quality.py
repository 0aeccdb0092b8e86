"""Does the search beat random search for the same compute?

    python bench/search_quality.py --proxy [--data-dir DIR]            # 2 CPU cores, <= 45 min
    python bench/search_quality.py --quick [--data-dir DIR]            # a tiny proxy, ~3 min
    python bench/search_quality.py --data-dir DIR --device cuda        # full: zigzag on a GPU
    python bench/search_quality.py --replot bench/results/search_quality_proxy.json
    python bench/search_quality.py --rescore bench/results/search_quality_proxy.json [--times 3]

Each arm is a sampler and a pruner run through the project's own study machinery
(`open_study`, `make_sampler`, `make_pruner`, `reserve_trials`, `run_worker` and
`Objective`), one study per SQLite file in a temporary folder, exactly as `autosearch
start` runs them: random search, TPE, TPE with median pruning, TPE with Hyperband, and
on request (`--arms`) the GP sampler, or TPE with 5 random start-up trials instead of 10
and either pruner (`tpe5+median`, `tpe5+hyperband`); `--add-to JSON` runs such arms with
a saved result's settings and tables them with its arms. Every arm gets the same
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

A study's best is the highest of many noisy scores: on the proxy, one configuration
trained with four seeds scores within about +-0.04. `--rescore JSON` retrains the best
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
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import optuna
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autosearch.models import ArchSpec, build_model, count_params, get_preset
from autosearch.search.space import get_space, with_epochs
from autosearch.search.space.sampling import sample
from autosearch.search.training.data import CifarData, prepare_data
from autosearch.search.training.recipe import get_recipe
from autosearch.search.training.trainer import train
from autosearch.search.tuning.budget import reserve_trials
from autosearch.search.tuning.objective import Objective, RunConfig
from autosearch.search.tuning.outcomes import FINISHED
from autosearch.search.tuning.samplers import TPE_STARTUP
from autosearch.search.tuning.study import make_pruner, make_sampler, open_study
from autosearch.search.tuning.worker import run_worker
from autosearch.storage.optuna_storage import make_storage

from bench.search_quality_report import plot, table, within

RESULTS = Path(__file__).resolve().parent / "results"

# arm -> (sampler, pruner, TPE's random start-up trials); sampler and pruner as
# `autosearch start --sampler ... --pruner ...` names them
ARMS = {
    "random": ("random", "none", TPE_STARTUP),
    "tpe": ("tpe", "none", TPE_STARTUP),
    "tpe+median": ("tpe", "median", TPE_STARTUP),
    "tpe+hyperband": ("tpe", "hyperband", TPE_STARTUP),
    "gp": ("gp", "none", TPE_STARTUP),
    # not run by default: TPE that models the results after 5 start-up trials
    "tpe5+median": ("tpe", "median", 5),
    "tpe5+hyperband": ("tpe", "hyperband", 5),
}


# ---------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    """One way to run the comparison. The budget is in full trials' worth of images."""

    mode: str
    space: str
    max_params: int
    subset: int | None  # stratified sample of CIFAR-10's 50,000 training images
    val_size: int  # of 50,000; a subset keeps the same share for validation
    epochs: int
    budget_trials: float
    reps: int
    lanes: int  # studies run side by side, one process each
    threads: int  # torch threads per process; 0 keeps torch's default
    device: str
    arms: tuple[str, ...]
    seed_space: str  # whose seed configurations the table trains


PROXY = Setting(
    mode="proxy",
    space="zigzag-cpu",
    max_params=50_000,
    subset=5_120,  # 4,096 training and 1,024 validation images, as `make demo`
    val_size=10_000,
    epochs=4,
    budget_trials=25,
    reps=3,
    lanes=2,
    threads=1,
    device="cpu",
    arms=("random", "tpe", "tpe+median", "tpe+hyperband"),
    seed_space="zigzag",
)
MODES = {
    "proxy": PROXY,
    # The proxy's pipeline end to end in a few minutes: it checks the script, not the search.
    "quick": replace(PROXY, mode="quick", subset=640, epochs=3, budget_trials=4, reps=1),
    "full": replace(
        PROXY,
        mode="full",
        space="zigzag",
        max_params=5_000_000,
        subset=None,
        epochs=15,
        budget_trials=60,
        lanes=1,
        threads=0,
        device="cuda",
    ),
}


def images_per_epoch(n_train: int, batch_size: int) -> int:
    """Images one epoch trains: n // B full batches, or one batch of all when n < B."""
    return n_train if n_train < batch_size else n_train // batch_size * batch_size


def budget_images(s: Setting, n_train: int) -> int:
    return round(s.budget_trials * s.epochs * n_train)


# ------------------------------------------------------------------- worker processes

_DATA: CifarData | None = None
_SETTING: Setting | None = None


def _init_worker(setting: Setting, data_dir: str | None) -> None:
    global _DATA, _SETTING
    if setting.threads:
        torch.set_num_threads(setting.threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")
    _SETTING = setting
    _DATA = load_data(setting, data_dir)


def load_data(s: Setting, data_dir: str | None) -> CifarData:
    return prepare_data(data_dir, val_size=s.val_size, subset=s.subset, seed=0, device=s.device)


def _trial_record(t: optuna.trial.FrozenTrial, n_train: int) -> dict[str, Any]:
    stopped = t.user_attrs.get("stopped")
    epochs = int(t.user_attrs.get("epochs_run", 0))  # infeasible trials train none
    batch = (t.user_attrs.get("recipe") or {}).get("batch_size", n_train)
    return {
        "number": t.number,
        "stopped": stopped,
        "value": t.value if stopped == FINISHED else None,
        "epochs": epochs,
        "images": epochs * images_per_epoch(n_train, batch),
        "seconds": float(t.user_attrs.get("wall_seconds", 0.0)),
        "params": t.user_attrs.get("params"),
        "config": t.params,  # rebuilds the trial (`--rescore`)
    }


def run_study(arm: str, rep: int, seed: int, folder: str) -> dict[str, Any]:
    """One study of `arm` until its trials have trained the budget's images."""
    s, data = _SETTING, _DATA
    assert s is not None and data is not None
    sampler, pruner, startup = ARMS[arm]
    space = with_epochs(get_space(s.space), s.epochs)
    storage = make_storage(f"sqlite:///{folder}/{arm}-{rep}.db")
    study = open_study(
        f"{arm.replace('+', '-')}-{rep}",
        storage,
        space,
        sampler=make_sampler(sampler, seed + rep, startup=startup),
        pruner=make_pruner(pruner, s.epochs),
        max_params=s.max_params,
    )
    config = RunConfig(
        space=space,
        max_params=s.max_params,
        device=s.device,
        subset=s.subset,
        val_size=s.val_size,
        seed=seed + rep,
        checkpoint_dir=None,
    )
    objective = Objective(config, data=data)
    n_train = len(data.train_y)
    budget = budget_images(s, n_train)
    trials: list[dict[str, Any]] = []
    used, started, cpu = 0, time.perf_counter(), time.process_time()

    def record(t: optuna.trial.FrozenTrial) -> None:
        trials.append(_trial_record(t, n_train))

    # A guard against a space whose trials all come back infeasible (zero images).
    while used < budget and len(trials) < 50 * s.budget_trials + 10:
        reserve_trials(study, 1)
        if not run_worker(study, objective, max_trials=1, on_trial_end=record):
            break  # nothing to claim: cannot happen with a slot just reserved
        t = trials[-1]
        used += t["images"]
        value = f"{t['value']:.3f}" if t["value"] is not None else "-"
        print(
            f"  {arm} r{rep} trial {t['number']:>3} {t['stopped']:<10} val {value:<5} "
            f"images {used:,}/{budget:,}",
            flush=True,
        )
    return {
        "arm": arm,
        "rep": rep,
        "trials": trials,
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
    }


def fit_widths(spec: ArchSpec, limit: int) -> tuple[ArchSpec, float]:
    """`spec` with every width times one factor, the largest that fits `limit`
    (multiples of 8, at least 8); factor 1.0 when it fits already."""
    if count_params(spec) <= limit:
        return spec, 1.0

    def scaled(f: float) -> ArchSpec:
        stages = tuple(replace(st, width=max(8, round(st.width * f / 8) * 8)) for st in spec.stages)
        return replace(spec, stages=stages, stem_width=max(8, round(spec.stem_width * f / 8) * 8))

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count_params(scaled(mid)) <= limit else (lo, mid)
    return scaled(lo), lo


def train_seed(index: int, seed: int) -> dict[str, Any]:
    """Seed configuration `index` of the setting's seed space, trained once."""
    s, data = _SETTING, _DATA
    assert s is not None and data is not None
    arch_name, recipe_name = get_space(s.seed_space).seeds[index]
    arch, factor = fit_widths(get_preset(arch_name), s.max_params)
    recipe = get_recipe(recipe_name).replace(epochs=s.epochs)
    torch.manual_seed(seed)
    started, cpu = time.perf_counter(), time.process_time()
    result = train(build_model(arch), data, recipe, device=s.device, seed=seed)
    print(f"  seed {arch_name} + {recipe_name}: val {result.final_val_acc:.3f}", flush=True)
    return {
        "index": index,
        "name": f"{arch_name} + {recipe_name}",
        "factor": factor,
        "params": count_params(arch),
        "value": result.final_val_acc,
        "images": result.epochs_run * images_per_epoch(len(data.train_y), recipe.batch_size),
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
    }


RESCORE_SEED = 1_000_000  # retraining k of every study's best trial uses this + k


def retrain(config: dict[str, Any], seed: int) -> float:
    """Final validation accuracy of the trial with parameters `config`, trained afresh
    with training seed `seed` (`sample` rebuilds exactly what the trial trained)."""
    s, data = _SETTING, _DATA
    assert s is not None and data is not None
    space = with_epochs(get_space(s.space), s.epochs)
    drawn = sample(
        optuna.trial.FixedTrial(config),
        space,
        max_params=s.max_params,
        num_classes=data.num_classes,
        input_size=data.image_size,
    )
    torch.manual_seed(seed)
    result = train(build_model(drawn.arch), data, drawn.recipe, device=s.device, seed=seed)
    return result.final_val_acc


def rescore(results: dict[str, Any], data_dir: str | None, times: int) -> list[dict[str, Any]]:
    """Retrain the best trial of every study `times` times with other training seeds.

    A study's best is the highest of many noisy scores, so it flatters the configuration
    it found; the mean of fresh runs says how good that configuration is. Every study's
    best is retrained with the same seeds.
    """
    s = Setting(**{**results["setting"], "arms": tuple(results["setting"]["arms"])})
    picks = []
    for r in results["studies"]:
        done = [t for t in within(r["trials"], results["budget"]) if t["value"] is not None]
        if not done or any("config" not in t for t in done):
            raise SystemExit("--rescore needs a result saved with its trials' parameters")
        best = max(done, key=lambda t: t["value"])  # the first of equals, as `best` picks
        picks.append((r["arm"], r["rep"], best))
    out = []
    ctx = get_context("spawn")
    with ProcessPoolExecutor(
        s.lanes, mp_context=ctx, initializer=_init_worker, initargs=(s, data_dir)
    ) as pool:
        jobs = {
            (arm, rep): [
                pool.submit(retrain, best["config"], RESCORE_SEED + k) for k in range(times)
            ]
            for arm, rep, best in picks
        }
        for arm, rep, best in picks:
            values = [j.result() for j in jobs[arm, rep]]
            print(
                f"  {arm} r{rep} trial {best['number']}: {best['value']:.3f} -> {values}",
                flush=True,
            )
            out.append({"arm": arm, "rep": rep, "number": best["number"], "values": values})
    return out


def run_all(s: Setting, data_dir: str | None, seed: int, *, seeds: bool = True) -> dict[str, Any]:
    """Every study and seed configuration (unless `seeds` is false) of `s`, `s.lanes` at
    a time, with the counts of training and validation images and the budget."""
    counted = load_data(replace(s, device="cpu"), data_dir)  # also fails early on bad data
    n_train, n_val = len(counted.train_y), len(counted.val_y)
    del counted
    n_seeds = len(get_space(s.seed_space).seeds) if seeds else 0
    studies, seeds = [], []
    with tempfile.TemporaryDirectory(prefix="search-quality-") as folder:
        ctx = get_context("spawn")  # a fresh interpreter per lane: no forked torch threads
        with ProcessPoolExecutor(
            s.lanes, mp_context=ctx, initializer=_init_worker, initargs=(s, data_dir)
        ) as pool:
            jobs = [pool.submit(train_seed, i, seed) for i in range(n_seeds)]
            jobs += [
                pool.submit(run_study, arm, rep, seed, folder)
                for rep in range(s.reps)
                for arm in s.arms
            ]
            for job in as_completed(jobs):
                out = job.result()
                if "arm" in out:
                    studies.append(out)
                    name = f"{out['arm']} r{out['rep']}: {len(out['trials'])} trials"
                    print(f"{name}, {out['wall_s']:.0f} s, {out['cpu_s']:.0f} CPU-s", flush=True)
                else:
                    seeds.append(out)
    studies.sort(key=lambda r: (s.arms.index(r["arm"]), r["rep"]))
    seeds.sort(key=lambda r: r["index"])
    return {
        "setting": asdict(s),
        "seed": seed,
        "n_train": n_train,
        "n_val": n_val,
        "budget": budget_images(s, n_train),
        "studies": studies,
        "seeds": seeds,
    }


# -------------------------------------------------------------------------------- main


def _command(argv: list[str]) -> str:
    """The command line, its data folder named DATA_DIR: results are shared, paths not."""
    words = ["DATA_DIR" if i and argv[i - 1] == "--data-dir" else a for i, a in enumerate(argv)]
    words = ["--data-dir=DATA_DIR" if w.startswith("--data-dir=") else w for w in words]
    return " ".join(["python bench/search_quality.py", *words])


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
        results["rescored"] = rescore(results, args.data_dir, args.times)
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
        results["wall_s"] = time.perf_counter() - started
        results["command"] = _command(sys.argv[1:])
        results["revision"] = _revision()
        if base is not None:  # the saved arms first, then the new ones
            results["setting"]["arms"] = [*base["setting"]["arms"], *s.arms]
            results["studies"] = base["studies"] + results["studies"]
            results["seeds"] = base["seeds"]
        stem = out / name
        stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    cpu = sum(r.get("cpu_s", 0.0) for r in results["studies"] + results["seeds"])
    lanes = results["setting"]["lanes"]
    text = (
        f"$ {results['command']}\nrevision {results['revision']}: {results['wall_s'] / 60:.1f} "
        f"min wall, {cpu / 60:.1f} CPU-min in the studies (about {cpu / lanes / 60:.1f} min "
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
