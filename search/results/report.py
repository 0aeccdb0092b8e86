"""A study as one self-contained HTML page: counts, plots and the top trials.

The plotly library is embedded in the page, so it opens from a file or an e-mail with no
network. Every section is always present; a study too young for a plot gets a sentence
saying so in its place.

Example:
    >>> study = optuna.load_study(study_name="zigzag", storage="sqlite:///a.db")  # doctest: +SKIP
    >>> write_report(study, "report.html")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import html
from collections.abc import Sequence
from pathlib import Path

import optuna
import plotly.offline
from autosearch.models import DEFAULT_MAX_PARAMS, ArchSpec
from autosearch.search.results import figures
from autosearch.search.tuning.outcomes import PRUNED, count_outcomes, outcome, top_trials
from autosearch.search.tuning.study import MAX_PARAMS_ATTR, SPACE_ATTR
from optuna.trial import FrozenTrial

# Section ids, in page order; a renderer check looks for each of them.
SECTIONS = (
    "summary",
    "history",
    "importance",
    "parallel",
    "curves",
    "accuracy-params",
    "accuracy-time",
    "top-trials",
)
COUNTED = ("complete", "pruned", "infeasible", "failed")

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; margin-top: 0; }
section { margin: 2.5em 0; } .note { color: #8a6d3b; background: #fcf8e3; padding: 0.6em 1em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border-bottom: 1px solid #ddd; padding: 4px 10px; text-align: right; }
td.text, th.text { text-align: left; } .counts td { font-size: 1.4em; text-align: center; }
"""


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _figure_html(fig: figures.Figure, div_id: str) -> str:
    if isinstance(fig, str):
        return _note(fig)
    return fig.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=div_id,
        config={"displaylogo": False, "responsive": True},
    )


def schedule_svg(spec: ArchSpec, widest: int) -> str:
    """The channel schedule as a small inline bar chart.

    One bar per stage: height is the stage's width (on the table's common scale), bar
    width its number of blocks; a stage that downsamples has a tick under it.
    """
    height, unit, gap = 40, 6, 2
    x, parts = 0, []
    for i, s in enumerate(spec.stages):
        h = max(2.0, height * s.width / max(widest, 1))
        w = unit * s.repeats
        tip = f"stage {i}: {s.width} channels x {s.repeats} block(s), stride {s.stride}"
        parts.append(
            f'<rect x="{x}" y="{height - h:.1f}" width="{w}" height="{h:.1f}" fill="#1f77b4">'
            f"<title>{tip}</title></rect>"
        )
        if s.stride > 1:
            parts.append(f'<rect x="{x}" y="{height + 2}" width="{w}" height="2" fill="#d62728"/>')
        x += w + gap
    return (
        f'<svg class="schedule" width="{max(x - gap, 1)}" height="{height + 4}" '
        f'role="img" aria-label="widths {"-".join(map(str, spec.widths))}">'
        + "".join(parts)
        + "</svg>"
    )


def _counts_html(study: optuna.Study) -> str:
    counts = count_outcomes(study)
    shown = list(COUNTED) + [k for k in ("running", "waiting") if counts[k]]
    head = "".join(f"<th>{k}</th>" for k in shown) + "<th>total</th>"
    cells = "".join(f"<td>{counts[k]}</td>" for k in shown) + f"<td>{sum(counts.values())}</td>"
    return f'<table class="counts"><tr>{head}</tr><tr>{cells}</tr></table>'


def _top_html(top: Sequence[FrozenTrial]) -> str:
    if not top:
        return _note("No complete trial within the budget yet: no top trials to list.")
    specs = [ArchSpec.from_dict(t.user_attrs["arch"]) for t in top]
    widest = max(max(s.widths) for s in specs)
    head = (
        "<tr><th>rank</th><th>trial</th><th>val acc</th><th>params</th><th>FLOPs (M)</th>"
        "<th>epochs</th><th>train s</th><th class='text'>channel schedule</th>"
        "<th class='text'>architecture</th><th class='text'>recipe</th></tr>"
    )
    rows = []
    for rank, (t, spec) in enumerate(zip(top, specs, strict=True), 1):
        a, r = t.user_attrs, t.user_attrs.get("recipe", {})
        seconds = a.get("train_seconds")
        recipe = f"{r.get('optimizer', '?')} lr {r.get('lr', 0):.3g} batch {r.get('batch_size')}"
        rows.append(
            f"<tr><td>{rank}</td><td>{t.number}</td><td>{t.value:.4f}</td>"
            f"<td>{a['params']:,}</td><td>{a.get('flops', 0) / 1e6:,.1f}</td>"
            f"<td>{a.get('epochs_run', '-')}</td>"
            f"<td>{'-' if seconds is None else f'{seconds:.1f}'}</td>"
            f"<td class='text'>{schedule_svg(spec, widest)}</td>"
            f"<td class='text'>{html.escape(spec.describe())}</td>"
            f"<td class='text'>{html.escape(recipe)}</td></tr>"
        )
    return f'<table class="top">{head}{"".join(rows)}</table>'


def build_report(study: optuna.Study, *, top: int = 10) -> str:
    """The report of `study` as one HTML document (a string), plotly embedded."""
    trials = study.get_trials(deepcopy=False)
    feasible = [t for t in trials if outcome(t) == "complete" and t.value is not None]
    pruned = [t for t in trials if outcome(t) == PRUNED]
    max_params = int(study.user_attrs.get(MAX_PARAMS_ATTR, DEFAULT_MAX_PARAMS))
    arch_imp = figures.importances(feasible, arch=True)
    recipe_imp = figures.importances(feasible, arch=False)
    ranking = figures.importance_ranking(arch_imp, recipe_imp)
    bodies = {
        "summary": ("Trials", _counts_html(study)),
        "history": ("Optimization history", _figure_html(figures.history(feasible), "fig-h")),
        "importance": (
            "Parameter importances",
            _figure_html(arch_imp, "fig-imp-arch") + _figure_html(recipe_imp, "fig-imp-recipe"),
        ),
        "parallel": (
            "Parallel coordinates",
            _figure_html(figures.parallel_coordinates(feasible, ranking), "fig-par"),
        ),
        "curves": ("Learning curves", _figure_html(figures.learning_curves(trials), "fig-lc")),
        "accuracy-params": (
            "Accuracy against size",
            _figure_html(figures.accuracy_vs_params(feasible, pruned, max_params), "fig-ap"),
        ),
        "accuracy-time": (
            "Accuracy against training time",
            _figure_html(figures.accuracy_vs_time(feasible), "fig-at"),
        ),
        "top-trials": (f"Top {top} trials", _top_html(top_trials(study, top))),
    }
    sections = "\n".join(
        f'<section id="{sid}"><h2>{title}</h2>{body}</section>'
        for sid, (title, body) in ((s, bodies[s]) for s in SECTIONS)
    )
    space = study.user_attrs.get(SPACE_ATTR, {}).get("name", "unknown")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    name = html.escape(study.study_name)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>autosearch report: {name}</title><style>{STYLE}</style>"
        # The whole plotly library, inline, so the page needs no network.
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script></head>'
        f"<body><h1>Study {name}</h1>"
        f'<p class="meta">space {html.escape(str(space))}, budget {max_params:,} parameters, '
        f"{len(trials)} trials, generated {when}</p>\n{sections}\n</body></html>\n"
    )


def write_report(study: optuna.Study, path: str | Path, *, top: int = 10) -> Path:
    """Write the report of `study` to `path` (folders created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(build_report(study, top=top), encoding="utf-8")
    return out


__all__ = ["SECTIONS", "build_report", "schedule_svg", "write_report"]
