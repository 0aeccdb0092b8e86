from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from autosearch.search.cli import app
from autosearch.search.results.figures import (
    history,
    importances,
    learning_curves,
    pareto_front,
)
from autosearch.search.results.report import SECTIONS, build_report, schedule_svg
from autosearch.search.space import get_space, with_epochs
from autosearch.search.training.trainer import EpochReport, TrainResult
from autosearch.search.tuning.objective import Objective, RunConfig, catchable
from autosearch.search.tuning.outcomes import count_outcomes
from autosearch.search.tuning.study import open_study
from typer.testing import CliRunner

from tests.conftest import tiny_data

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
BUDGET = 400_000


def fake_train(model, data, recipe, *, device, seed, callback, on_checkpoint, resume):
    """Learning curves that depend on the trial, without any training.

    Every seventh call diverges, so the study also holds failed trials.
    """
    fake_train.calls += 1
    if fake_train.calls % 7 == 0:
        return TrainResult([], "diverged", "nan loss", math.nan, math.nan, 0, 0.0, 0.0, "cpu")
    params = sum(p.numel() for p in model.parameters())
    top = 0.3 + 0.5 * params / BUDGET * (0.5 + 0.5 * math.sin(seed))
    history, status = [], "finished"
    for epoch in range(1, recipe.epochs + 1):
        acc = top * epoch / recipe.epochs
        r = EpochReport(epoch, 2.0 / epoch, acc, 2.0 / epoch, acc, recipe.lr, 0.1, 1000.0)
        history.append(r)
        if callback(r):
            status = "stopped"
            break
    return TrainResult(
        history, status, "", max(h.val_acc for h in history), history[-1].val_acc,
        len(history), 0.1 * len(history), 1000.0, "cpu",
    )  # fmt: skip


fake_train.calls = 0


@pytest.fixture(scope="module")
def study_url(tmp_path_factory) -> str:
    """A SQLite study of 24 trials of every kind: complete, pruned, infeasible and failed."""
    url = f"sqlite:///{tmp_path_factory.mktemp('report')}/r.db"
    zigzag = with_epochs(get_space("zigzag"), 3)
    # 24 channels or more per stage: some shapes are over the budget even at their smallest
    space = dataclasses.replace(zigzag, arch=dataclasses.replace(zigzag.arch, widths=(24, 512)))
    memory = optuna.storages.InMemoryStorage()  # a commit per attribute is slow in SQLite
    study = open_study(
        "zz",
        memory,
        space,
        sampler=optuna.samplers.RandomSampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        max_params=BUDGET,
    )
    config = RunConfig(space=space, max_params=BUDGET, device="cpu", checkpoint_dir=None)
    objective = Objective(config, trainer=fake_train, data=tiny_data())
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=24, catch=catchable())
    optuna.copy_study(from_study_name="zz", from_storage=memory, to_storage=url)
    return url


def test_the_study_has_every_outcome(study_url):
    counts = count_outcomes(optuna.load_study(study_name="zz", storage=study_url))
    assert all(counts[k] > 0 for k in ("complete", "pruned", "infeasible", "failed")), counts


def test_report_command_writes_one_self_contained_page(study_url, tmp_path):
    out = tmp_path / "sub" / "report.html"
    result = runner.invoke(app, ["report", "--study", "zz", "--storage", study_url, "--out", out])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    # plotly is inline: no script is fetched from anywhere
    assert not re.search(r"<script[^>]+src=", page)
    assert "plotly.js v" in page or "Plotly" in page
    for div in ("fig-h", "fig-imp-arch", "fig-imp-recipe", "fig-par", "fig-lc", "fig-ap"):
        assert f'id="{div}"' in page, div
    assert "fig-at" in page and "Pareto front" in page and "budget 0.4M" in page
    counts = count_outcomes(optuna.load_study(study_name="zz", storage=study_url))
    cells = re.search(r'<table class="counts">.*?</table>', page).group(0)
    for k in ("complete", "pruned", "infeasible", "failed"):
        assert f"<th>{k}</th>" in cells
    assert f"<td>{counts['pruned']}</td>" in cells
    top = re.search(r'<table class="top">.*?</table>', page).group(0)
    rows = top.count("<tr>") - 1
    assert rows == min(10, counts["complete"]) and top.count('<svg class="schedule"') == rows


def test_learning_curves_colour_pruned_trials_apart(study_url):
    trials = optuna.load_study(study_name="zz", storage=study_url).trials
    fig = learning_curves(trials)
    names = {t.name for t in fig.data}
    assert {"complete", "pruned"} <= names
    assert sum(t.showlegend for t in fig.data) == len(names)  # one legend entry each


def test_importances_split_architecture_from_recipe(study_url):
    study = optuna.load_study(study_name="zz", storage=study_url)
    feasible = [t for t in study.trials if t.user_attrs.get("stopped") == "finished"]
    arch = importances(feasible, arch=True)
    recipe = importances(feasible, arch=False)
    assert not isinstance(arch, str) and not isinstance(recipe, str), (arch, recipe)
    assert "stages" in arch.data[0].y and "optimizer" not in arch.data[0].y
    assert "optimizer" in recipe.data[0].y and "stages" not in recipe.data[0].y


def test_importances_leave_out_parameters_that_did_not_vary(study_url):
    study = optuna.load_study(study_name="zz", storage=study_url)
    feasible = [t for t in study.trials if t.user_attrs.get("stopped") == "finished"]
    assert {t.params["pool"] for t in feasible} == {0}  # zigzag has one pooling choice
    arch = importances(feasible, arch=True)
    assert "pool" not in arch.data[0].y
    assert "left out, the same in every trial: pool" in arch.layout.title.text


def test_accuracy_axes_stay_in_0_1_and_short_integer_axes_have_whole_ticks(study_url):
    trials = optuna.load_study(study_name="zz", storage=study_url).trials
    feasible = [t for t in trials if t.user_attrs.get("stopped") == "finished"]
    curves = learning_curves(trials)
    low, high = curves.layout.yaxis.range
    assert 0 <= low < high <= 1
    assert curves.layout.xaxis.dtick == 1  # 3 epochs: ticks 1, 2, 3, never 2.5
    hist = history(feasible)
    assert 0 <= hist.layout.yaxis.range[0] < hist.layout.yaxis.range[1] <= 1


def test_young_studies_get_notes_not_errors(tmp_path):
    url = f"sqlite:///{tmp_path}/y.db"
    empty = optuna.create_study(study_name="empty", storage=url)
    page = build_report(empty)
    assert page.count('class="note"') >= 7
    assert all(f'id="{sid}"' in page for sid in SECTIONS)
    one = optuna.create_study(study_name="one", storage=url, direction="maximize")
    arch = {"stages": [{"width": 16}, {"width": 32, "stride": 2}], "stem_width": 16}
    one.add_trial(
        optuna.trial.create_trial(
            value=0.5,
            user_attrs={"arch": arch, "params": 30_000, "stopped": "finished"},
            intermediate_values={1: 0.3, 2: 0.5},
        )
    )
    page = build_report(one)
    assert 'id="fig-h"' in page and "need at least 3 complete" in page
    assert "need at least 2 complete" in page  # parallel coordinates


def test_pareto_front_keeps_only_undominated_points():
    points = [(100, 0.5, 0), (200, 0.4, 1), (300, 0.7, 2), (300, 0.6, 3), (50, 0.2, 4)]
    assert pareto_front(points) == [(50, 0.2, 4), (100, 0.5, 0), (300, 0.7, 2)]


def test_schedule_svg_draws_one_bar_per_stage():
    from autosearch.models import make_spec

    svg = schedule_svg(make_spec([64, 16, 128], [2, 1, 3]), 128)
    assert svg.count("<title>") == 3 and "128 channels x 3 block(s)" in svg


def test_unknown_study_fails_with_one_line(study_url):
    result = runner.invoke(app, ["report", "--study", "nope", "--storage", study_url])
    assert result.exit_code == 2 and "no study named 'nope'" in result.stderr


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium")
def test_report_renders_in_headless_chromium(study_url, tmp_path):
    page = tmp_path / "report.html"
    assert runner.invoke(app, ["report", "--study", "zz", "--storage", study_url, "--out", page])
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "render_report.py"), "--html", str(page)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok: 8 sections, 7 figures drawn" in done.stdout
