"""bench/search_quality.py (its runs and its report): equal compute per arm, the table's
arithmetic, and retraining a study's best."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
from autosearch.search.training import trainer

from bench import search_quality as cli
from bench import search_quality_report as report
from bench import search_quality_runs as sq
from tests.conftest import tiny_data


def _trial(images: int, value: float | None, stopped: str = "finished") -> dict:
    return {"images": images, "value": value, "stopped": stopped}


def _results(arms: dict[str, list[list[dict]]], budget: int) -> dict:
    """A saved result holding `arms`: arm -> one list of trials per repetition."""
    names = tuple(arms)
    setting = replace(sq.PROXY, arms=names, reps=len(next(iter(arms.values()))))
    studies = [
        {"arm": arm, "rep": r, "trials": trials, "wall_s": 1.0, "cpu_s": 1.0}
        for arm, reps in arms.items()
        for r, trials in enumerate(reps)
    ]
    seeds = [{"name": "zigzag + seed", "factor": 0.1, "params": 40_000, "value": 0.2}]
    return {
        "setting": sq.asdict(setting),
        "budget": budget,
        "n_train": 100,
        "n_val": 20,
        "studies": studies,
        "seeds": seeds,
    }


@pytest.mark.parametrize(("n", "batch"), [(2048, 64), (2048, 256), (1000, 384), (40, 64)])
def test_images_per_epoch_is_what_the_trainer_trains(n, batch):
    steps, per_step = trainer._steps_per_epoch(n, batch)
    assert sq.images_per_epoch(n, batch) == steps * per_step


def test_best_so_far_counts_only_trials_finished_within_the_images():
    trials = [_trial(100, 0.3), _trial(50, None, "pruned"), _trial(100, 0.5), _trial(100, 0.4)]
    assert math.isnan(report.best_at(trials, 99))
    assert report.best_at(trials, 249) == 0.3  # the third trial ends at 250
    assert report.best_at(trials, 250) == 0.5
    assert len(report.within(trials, 349)) == 3


def test_pruned_share_is_of_images_within_the_budget():
    trials = [_trial(100, 0.3), _trial(50, None, "pruned"), _trial(50, None, "pruned")]
    results = _results({"tpe+median": [trials + [_trial(100, 0.9)]]}, budget=200)
    assert report.pruned_share(results, "tpe+median") == pytest.approx(100 / 200)


def test_target_is_met_only_when_reached_by_60_percent_and_above_at_the_end():
    random = [[_trial(100, v) for v in (0.30, 0.32, 0.35, 0.40, 0.42)] for _ in range(3)]
    early = [[_trial(100, v) for v in (0.30, 0.43, 0.44, 0.44, 0.45)] for _ in range(3)]
    late = [[_trial(100, v) for v in (0.30, 0.31, 0.32, 0.33, 0.45)] for _ in range(3)]
    level = [[_trial(100, v) for v in (0.30, 0.42, 0.42, 0.42, 0.42)] for _ in range(3)]
    results = _results({"random": random, "tpe+median": early, "tpe+hyperband": late}, budget=500)
    (arm1, share1, end1, base, met1), (_, share2, _, _, met2) = report.target(results)
    assert (arm1, base, end1) == ("tpe+median", 0.42, 0.45)
    assert share1 == pytest.approx(0.4) and met1
    assert share2 == pytest.approx(1.0) and not met2
    tied = report.target(_results({"random": random, "tpe+median": level}, budget=500))
    assert tied[0][1] == pytest.approx(0.4) and not tied[0][4]  # reached, but not above
    lines = report.table(results).splitlines()
    verdicts = {line.split(":")[0]: line.split("): ")[-1] for line in lines if "target," in line}
    assert verdicts["target, tpe+median"].startswith("MET")
    assert verdicts["target, tpe+hyperband"].startswith("NOT MET")


def test_plot_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    results = _results({"random": [[_trial(100, 0.3), _trial(100, 0.4)]]}, budget=200)
    path = tmp_path / "curves.png"
    report.plot(results, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def in_this_process(monkeypatch, epochs: int) -> sq.Setting:
    """Set up this process as a study lane: the quick setting with `epochs` and a budget
    of 3 trials, on 64 tiny training images."""
    setting = replace(sq.MODES["quick"], epochs=epochs, budget_trials=3, threads=0)
    monkeypatch.setattr(sq, "_SETTING", setting)
    monkeypatch.setattr(sq, "_DATA", tiny_data(n_train=64, n_val=32, size=32))
    return setting


def test_a_study_trains_up_to_its_budget_through_the_project_machinery(tmp_path, monkeypatch):
    setting = in_this_process(monkeypatch, epochs=2)
    out = sq.run_study("tpe+median", 0, 0, str(tmp_path))
    budget = sq.budget_images(setting, 64)
    images = [t["images"] for t in out["trials"]]
    assert sum(images[:-1]) < budget <= sum(images)
    assert (tmp_path / "tpe+median-0.db").exists()
    for t in out["trials"]:
        assert t["images"] % 64 == 0 and t["images"] <= 2 * 64
        assert (t["value"] is not None) == (t["stopped"] == "finished")


def test_rescore_retrains_exactly_what_the_best_trial_trained(tmp_path, monkeypatch):
    setting = in_this_process(monkeypatch, epochs=1)
    out = sq.run_study("random", 0, 0, str(tmp_path))
    finished = [t for t in out["trials"] if t["value"] is not None]
    assert finished
    for t in finished:
        # The objective trains trial n of repetition 0 with seed 0 + n.
        assert sq.retrain(t["config"], t["number"]) == t["value"]
    saved = _results({"random": [out["trials"]]}, budget=sq.budget_images(setting, 64))
    saved["studies"][0]["trials"][0].pop("config")
    with pytest.raises(SystemExit, match="parameters"):
        sq.rescore(saved, None, 1)


def test_a_saved_command_names_no_local_path_and_keeps_every_run():
    argv = [
        "--proxy",
        "--add-to",
        "/home/me/r.json",
        "--out=/tmp/o",
        "--data-dir",
        "/d",
        "--arms",
        "tpe5",
    ]
    line = cli._command(argv)
    assert line.endswith("--proxy --add-to JSON --out=DIR --data-dir DATA_DIR --arms tpe5")
    saved: dict = {}
    cli._run_of(saved, "first", "abc", 60.0)
    cli._run_of(saved, "second", "abc", 30.0)
    cli._run_of(saved, "third", "def", 10.0)
    assert saved == {
        "command": "first\n$ second\n$ third",
        "revision": "abc, then def",
        "wall_s": 100.0,
    }
