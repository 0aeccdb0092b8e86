"""Plotly figures of a study, each from plain trial data.

Every builder returns a figure, or a string that says why there is none (too few
trials, nothing to compare), so a young study still gives a complete report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import optuna
import plotly.graph_objects as go
from autosearch.search.tuning.outcomes import outcome
from optuna.trial import FrozenTrial

Figure = go.Figure | str  # a figure, or the reason there is none

# Search-space parameters that shape the network; every other parameter is the recipe's.
ARCH_PARAMS = frozenset(
    {"stages", "skip_kernel", "downsamples", "stem_width", "pool", "fill", "width_growth"}
)
ARCH_PREFIXES = ("rel_width_", "width_", "repeats_", "kernel_", "down_at_")
COLOURS = {"complete": "#1f77b4", "pruned": "#ff7f0e", "failed": "#d62728", "running": "#999"}
MAX_AXES = 12  # more parallel-coordinate axes than this cannot be read
MIN_FOR_IMPORTANCE = 3


def is_arch_param(name: str) -> bool:
    return name in ARCH_PARAMS or name.startswith(ARCH_PREFIXES)


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        height=420,
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.18},
    )
    return fig


def _accuracy_axis(fig: go.Figure, values: Sequence[float], axis: str = "y") -> None:
    """Accuracies live in [0, 1]: a little margin around the data, never beyond."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return
    lo, hi = min(finite), max(finite)
    pad = max(0.02, 0.05 * (hi - lo))
    fig.update_layout({f"{axis}axis": {"range": [max(0.0, lo - pad), min(1.0, hi + pad)]}})


def _integer_axis(fig: go.Figure, values: Sequence[int], axis: str = "x") -> None:
    """Trial numbers and epochs are whole: no tick at 2.5 on a short axis."""
    if values and max(values) - min(values) < 15:
        fig.update_layout({f"{axis}axis": {"tick0": 0, "dtick": 1}})


def _hover(t: FrozenTrial) -> str:
    a = t.user_attrs
    params = a.get("params")
    return f"trial {t.number}" + (f"<br>{params:,} params" if params else "")


# ------------------------------------------------------------------------ history


def history(feasible: Sequence[FrozenTrial]) -> Figure:
    """Validation accuracy by trial number, with the best-so-far line."""
    if not feasible:
        return "No complete trial within the budget yet: nothing to plot."
    done = sorted(feasible, key=lambda t: t.number)
    xs = [t.number for t in done]
    ys = [t.value for t in done]
    best, running = [], -math.inf
    for y in ys:
        running = max(running, y)
        best.append(running)
    fig = go.Figure()
    fig.add_scatter(
        x=xs, y=ys, mode="markers", name="trial", text=[_hover(t) for t in done], hoverinfo="text+y"
    )
    fig.add_scatter(x=xs, y=best, mode="lines", name="best so far", line={"shape": "hv"})
    _accuracy_axis(fig, ys)
    _integer_axis(fig, xs)
    return _layout(fig, "Optimization history", "trial", "validation accuracy")


# ------------------------------------------------------------------- learning curves


def learning_curves(trials: Sequence[FrozenTrial]) -> Figure:
    """Validation accuracy per epoch of every trial, coloured by how the trial ended."""
    curves = [t for t in trials if t.intermediate_values]
    if not curves:
        return "No trial has reported an epoch yet: no learning curves."
    fig = go.Figure()
    shown: set[str] = set()
    for t in sorted(curves, key=lambda t: t.number):
        state = outcome(t)
        steps = sorted(t.intermediate_values)
        fig.add_scatter(
            x=steps,
            y=[t.intermediate_values[s] for s in steps],
            mode="lines+markers",
            name=state,
            legendgroup=state,
            showlegend=state not in shown,
            line={"color": COLOURS.get(state, "#999"), "width": 1.5},
            marker={"size": 5},
            opacity=0.85 if state == "complete" else 0.6,
            text=f"trial {t.number} ({state})",
            hoverinfo="text+x+y",
        )
        shown.add(state)
    _accuracy_axis(fig, [v for t in curves for v in t.intermediate_values.values()])
    _integer_axis(fig, [s for t in curves for s in t.intermediate_values])
    return _layout(fig, "Learning curves (validation accuracy per epoch)", "epoch", "accuracy")


# --------------------------------------------------------------- accuracy vs cost


def pareto_front(points: Sequence[tuple[int, float, int]]) -> list[tuple[int, float, int]]:
    """The (params, accuracy, trial) points no other point beats on both counts.

    Fewer parameters and higher accuracy are better; the front is returned by params.
    """
    front: list[tuple[int, float, int]] = []
    for p in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or p[1] > front[-1][1]:
            front.append(p)
    return front


def accuracy_vs_params(
    feasible: Sequence[FrozenTrial], pruned: Sequence[FrozenTrial], max_params: int
) -> Figure:
    """Validation accuracy against parameter count, the budget line and the Pareto front."""
    if not feasible:
        return "No complete trial within the budget yet: no accuracy against size."
    fig = go.Figure()
    stopped = [t for t in pruned if t.user_attrs.get("params") and t.intermediate_values]
    if stopped:
        fig.add_scatter(
            x=[t.user_attrs["params"] for t in stopped],
            y=[t.intermediate_values[max(t.intermediate_values)] for t in stopped],
            mode="markers",
            name="pruned (last epoch)",
            marker={"color": "#bbb", "symbol": "circle-open"},
            text=[_hover(t) for t in stopped],
            hoverinfo="text+y",
        )
    fig.add_scatter(
        x=[t.user_attrs["params"] for t in feasible],
        y=[t.value for t in feasible],
        mode="markers",
        name="complete",
        marker={"color": COLOURS["complete"]},
        text=[_hover(t) for t in feasible],
        hoverinfo="text+y",
    )
    front = pareto_front([(t.user_attrs["params"], t.value, t.number) for t in feasible])
    fig.add_scatter(
        x=[p[0] for p in front],
        y=[p[1] for p in front],
        mode="lines+markers",
        name="Pareto front",
        line={"color": "#d62728", "shape": "hv"},
        marker={"size": 10, "symbol": "diamond"},
        text=[f"trial {p[2]}" for p in front],
        hoverinfo="text+x+y",
    )
    fig.add_vline(
        x=max_params,
        line={"color": "black", "dash": "dash"},
        annotation_text=f"budget {max_params / 1e6:g}M",
        annotation_position="top left",
    )
    _accuracy_axis(fig, [y for trace in fig.data for y in trace.y])
    return _layout(fig, "Accuracy against parameter count", "parameters", "validation accuracy")


def accuracy_vs_time(feasible: Sequence[FrozenTrial]) -> Figure:
    """Validation accuracy against training seconds, coloured by parameter count."""
    timed = [t for t in feasible if t.user_attrs.get("train_seconds") is not None]
    if not timed:
        return "No complete trial with a recorded training time yet."
    fig = go.Figure()
    fig.add_scatter(
        x=[t.user_attrs["train_seconds"] for t in timed],
        y=[t.value for t in timed],
        mode="markers",
        name="complete",
        marker={
            "color": [t.user_attrs.get("params", 0) for t in timed],
            "colorscale": "Viridis",
            "colorbar": {"title": "params"},
            "size": 9,
        },
        text=[_hover(t) for t in timed],
        hoverinfo="text+x+y",
    )
    _accuracy_axis(fig, [t.value for t in timed])
    return _layout(fig, "Accuracy against training time", "training seconds", "validation accuracy")


# ------------------------------------------------------------- parameters' effects


def _filtered_study(trials: Sequence[FrozenTrial]) -> optuna.Study:
    """An in-memory study of just `trials`, for Optuna's own analysis functions."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(level)
    study.add_trials(trials)
    return study


def importances(feasible: Sequence[FrozenTrial], *, arch: bool) -> Figure:
    """Parameter importances (PED-ANOVA) of the architecture or of the recipe parameters.

    PED-ANOVA copes with conditional parameters (a stage's width exists only when the
    trial drew that many stages), which fANOVA would drop.
    """
    what = "architecture" if arch else "recipe"
    if len(feasible) < MIN_FOR_IMPORTANCE:
        return (
            f"Importances of {what} parameters need at least {MIN_FOR_IMPORTANCE} complete "
            f"trials within the budget; this study has {len(feasible)}."
        )
    searched = sorted({p for t in feasible for p in t.params if is_arch_param(p) == arch})
    if not searched:
        return f"No {what} parameter was searched in this study."
    # A parameter every trial drew with the same value explains nothing, however the
    # evaluator happens to rank it.
    fixed = [p for p in searched if len({repr(t.params.get(p)) for t in feasible}) < 2]
    names = [p for p in searched if p not in fixed]
    if not names:
        return (
            f"No {what} parameter varied among the complete trials "
            f"({', '.join(fixed)} took one value each): nothing to rank."
        )
    if len({t.value for t in feasible}) < 2:
        return f"Every complete trial scored the same: no {what} parameter stands out."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = optuna.importance.get_param_importances(
                _filtered_study(feasible),
                evaluator=optuna.importance.PedAnovaImportanceEvaluator(),
                params=names,
            )
    except Exception as e:  # an evaluator that cannot cope is a note, not a failed report
        return f"Importances of {what} parameters could not be computed: {e}"
    order = sorted(scores, key=scores.get)
    fig = go.Figure(go.Bar(x=[scores[n] for n in order], y=order, orientation="h"))
    title = f"Importance of {what} parameters (PED-ANOVA)"
    if fixed:
        title += f"<br><sup>left out, the same in every trial: {', '.join(fixed)}</sup>"
    fig = _layout(fig, title, "importance", "")
    fig.update_layout(height=max(300, 24 * len(order) + 120))
    return fig


def parallel_coordinates(feasible: Sequence[FrozenTrial], ranking: Sequence[str] = ()) -> Figure:
    """Parameters common to the complete trials, most important first, against accuracy."""
    if len(feasible) < 2:
        return "Parallel coordinates need at least 2 complete trials within the budget."
    space = optuna.search_space.intersection_search_space(feasible)
    if not space:
        return "The complete trials share no parameter: nothing to line up."
    # Most important first; unranked architecture parameters before the recipe's.
    rest = sorted((p for p in space if p not in ranking), key=lambda p: (not is_arch_param(p), p))
    ranked = [p for p in ranking if p in space] + rest
    chosen = ranked[:MAX_AXES]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = optuna.visualization.plot_parallel_coordinate(
                _filtered_study(feasible), params=chosen, target_name="val accuracy"
            )
    except Exception as e:
        return f"Parallel coordinates could not be drawn: {e}"
    title = "Parallel coordinates"
    if len(space) > len(chosen):
        title += f" ({len(chosen)} of {len(space)} shared parameters)"
    fig.update_layout(title=title, template="plotly_white", height=460)
    return fig


def importance_ranking(*figures: Figure) -> list[str]:
    """Parameter names of importance bar charts, most important first."""
    scores: dict[str, float] = {}
    for fig in figures:
        if isinstance(fig, go.Figure):
            bar = fig.data[0]
            scores.update(zip(bar.y, bar.x, strict=True))
    return sorted(scores, key=scores.get, reverse=True)
