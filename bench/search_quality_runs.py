"""How `search_quality.py` runs: its settings, and the studies, the seed configurations
and the retrainings, each in a worker process of its own (`spawn`: no forked torch
threads), `Setting.lanes` at a time."""

from __future__ import annotations

import tempfile
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from typing import Any

import optuna
import torch
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

from bench.search_quality_report import within

# arm -> (sampler, pruner, TPE's random start-up trials); sampler and pruner as
# `autosearch start --sampler ... --pruner ...` names them
ARMS = {
    "random": ("random", "none", TPE_STARTUP),
    # TPE as `autosearch start` runs it: 5 random start-up trials (TPE_STARTUP)
    "tpe5": ("tpe", "none", 5),
    "tpe5+median": ("tpe", "median", 5),
    "tpe5+hyperband": ("tpe", "hyperband", 5),
    "tpe5+quartile": ("tpe", "quartile", 5),
    # TPE after Optuna's default of 10 start-up trials (the project's default before
    # this comparison)
    "tpe": ("tpe", "none", 10),
    "tpe+median": ("tpe", "median", 10),
    "tpe+hyperband": ("tpe", "hyperband", 10),
    "tpe+quartile": ("tpe", "quartile", 10),
    "gp": ("gp", "none", TPE_STARTUP),
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
    arms=("random", "tpe5", "tpe5+median", "tpe5+hyperband"),
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
