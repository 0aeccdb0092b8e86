"""The table and the figure of `search_quality.py`, from its saved results.

A result is a dict: `setting` (the run's settings), `budget` (trained images per
study), `n_train`, `n_val`, `studies` (one per arm and repetition, each with its trials
in the order they ran: `images` trained, `stopped`, final `value` when finished) and
`seeds` (the seed configurations, trained once).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

PRUNED = "pruned"  # the `stopped` of a pruned trial (tuning.outcomes.PRUNED)
BASELINE = "random"
# the target is about these
PRUNING_ARMS = (
    "tpe+median",
    "tpe+hyperband",
    "tpe+quartile",
    "tpe5+median",
    "tpe5+hyperband",
    "tpe5+quartile",
)
TARGET_SHARE = 0.6  # of the budget, by which TPE with pruning must reach random's best
CHECKPOINTS = (0.25, 0.5, 1.0)  # budget shares the table reports


# ------------------------------------------------------------------------- the curves


def within(trials: list[dict[str, Any]], budget: float) -> list[dict[str, Any]]:
    """The trials that ended within `budget` trained images, in the order they ran."""
    out, used = [], 0
    for t in trials:
        used += t["images"]
        if used > budget:
            break
        out.append(t)
    return out


def best_at(trials: list[dict[str, Any]], images: float) -> float:
    """Best final validation accuracy of the trials finished within `images` (NaN: none)."""
    values = [t["value"] for t in within(trials, images) if t["value"] is not None]
    return max(values) if values else math.nan


def median0(values) -> float:
    """The median, counting a study with no finished trial yet as 0."""
    return statistics.median(0.0 if math.isnan(v) else v for v in values)


def studies_of(results: dict[str, Any], arm: str) -> list[dict[str, Any]]:
    return [r for r in results["studies"] if r["arm"] == arm]


def curves(results: dict[str, Any], arm: str, points: int = 201) -> list[list[float]]:
    """Best-so-far of each repetition of `arm` at `points` evenly spaced budget shares."""
    grid = [results["budget"] * i / (points - 1) for i in range(points)]
    return [[best_at(r["trials"], x) for x in grid] for r in studies_of(results, arm)]


def median_curve(results: dict[str, Any], arm: str) -> list[float]:
    return [median0(col) for col in zip(*curves(results, arm), strict=True)]


def reach_share(curve: list[float], level: float) -> float | None:
    """The first budget share at which `curve` reaches `level`, or None."""
    for i, v in enumerate(curve):
        if v >= level:
            return i / (len(curve) - 1)
    return None


def trial_median(results: dict[str, Any], arm: str) -> float:
    """Median final validation accuracy of `arm`'s finished trials within the budget,
    over all repetitions: how good a typical trial is, where the best is one lucky draw."""
    values = [
        t["value"]
        for r in studies_of(results, arm)
        for t in within(r["trials"], results["budget"])
        if t["value"] is not None
    ]
    return statistics.median(values) if values else math.nan


def pruned_share(results: dict[str, Any], arm: str) -> float:
    """Share of the images trained within the budget that went to pruned trials."""
    done = [t for r in studies_of(results, arm) for t in within(r["trials"], results["budget"])]
    total = sum(t["images"] for t in done)
    return sum(t["images"] for t in done if t["stopped"] == PRUNED) / total if total else 0.0


# -------------------------------------------------------------------------- the table


def _spread(values: list[float]) -> str:
    vals = [0.0 if math.isnan(v) else v for v in values]
    return f"{statistics.median(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})"


def target(results: dict[str, Any]) -> list[tuple[str, float | None, float, float, bool]]:
    """Per pruning arm: (arm, share of the budget at which its median best-so-far
    reaches random search's final median best, its final median, that best, met)."""
    arms = results["setting"]["arms"]
    if BASELINE not in arms:
        return []
    base = median0(c[-1] for c in curves(results, BASELINE))
    out = []
    for arm in (a for a in PRUNING_ARMS if a in arms):
        med = median_curve(results, arm)
        share = reach_share(med, base)
        met = share is not None and share <= TARGET_SHARE and med[-1] > base
        out.append((arm, share, med[-1], base, met))
    return out


def table(results: dict[str, Any]) -> str:
    s, budget = results["setting"], results["budget"]
    out = [
        f"space {s['space']}, max {s['max_params']:,} params, {results['n_train']:,} training / "
        f"{results['n_val']:,} validation images, {s['epochs']} epochs per trial, "
        f"{s['reps']} repetition(s) per arm",
        f"budget per study: {budget:,} trained images ({s['budget_trials']:g} full trials); "
        f"device {s['device']}, {s['lanes']} study(ies) at a time",
        "",
        "best validation accuracy so far: median (min-max) over the repetitions",
        f"{'arm':<14} {'trials':>6} {'pruned':>7} {'typical':>7}   "
        + "".join(f"{f'at {c:.0%} of budget':<22}" for c in CHECKPOINTS)
        + "s/study (CPU-s)",
    ]
    for arm in s["arms"]:
        studies = studies_of(results, arm)
        row = [[best_at(r["trials"], budget * c) for r in studies] for c in CHECKPOINTS]
        n = statistics.median(len(within(r["trials"], budget)) for r in studies)
        wall = statistics.median(r["wall_s"] for r in studies)
        cpu = statistics.median(r.get("cpu_s", math.nan) for r in studies)
        out.append(
            f"{arm:<14} {n:>6g} {pruned_share(results, arm):>7.0%} "
            f"{trial_median(results, arm):>7.3f}   "
            + "".join(f"{_spread(v):<22}" for v in row)
            + f"{wall:.0f} ({cpu:.0f})"
        )
    out.append("(trials: median count ended within the budget; pruned: share of its images")
    out.append(" spent on trials later pruned; typical: median accuracy of its finished trials)")
    out += ["", f"seed configurations of `{s['seed_space']}`, trained once, {s['epochs']} epochs:"]
    for seed in results["seeds"]:
        scaled = f"widths x{seed['factor']:.3f}" if seed["factor"] < 1 else "as is"
        out.append(
            f"  {seed['name']:<24} {seed['params']:>10,} params ({scaled}): val {seed['value']:.3f}"
        )
    out += rescored_lines(results)
    out.append("")
    verdicts = target(results)
    if not verdicts:
        out.append("target: not judged (needs the random arm and a pruning arm)")
    for arm, share, end, base, met in verdicts:
        when = f"at {share:.0%} of the budget" if share is not None else "never"
        out.append(
            f"target, {arm}: reaches random's final median best {base:.3f} {when}, ends at "
            f"{end:.3f} ({end - base:+.3f}): {'MET' if met else 'NOT MET'} "
            f"(needs <= {TARGET_SHARE:.0%} of the budget and above it at the end)"
        )
    return "\n".join(out)


def rescored_lines(results: dict[str, Any]) -> list[str]:
    """The table's section on the studies' best trials retrained (`--rescore`), if any."""
    rescored = results.get("rescored")
    if not rescored:
        return []
    times = len(rescored[0]["values"])
    out = [
        "",
        f"each study's best trial retrained {times} times with other training seeds: its "
        "score, then the mean of the retrainings",
        "(median (min-max) over the repetitions; the best score is the luckiest of many)",
    ]
    for arm in results["setting"]["arms"]:
        mine = [r for r in rescored if r["arm"] == arm]
        if not mine:
            continue
        bests = {
            r["rep"]: best_at(r["trials"], results["budget"]) for r in studies_of(results, arm)
        }
        scores = [bests[r["rep"]] for r in mine]
        means = [statistics.fmean(r["values"]) for r in mine]
        out.append(f"  {arm:<14} best {_spread(scores):<22} retrained {_spread(means)}")
    return out


# ------------------------------------------------------------------------- the figure


def _scale(budget: float) -> tuple[float, str]:
    return (1e6, "millions") if budget >= 5e6 else (1e3, "thousands")


def plot(results: dict[str, Any], path: Path) -> str:
    """Write the best-so-far figure to `path` (PNG); returns the library that drew it.

    plotly draws it when kaleido is installed to export PNG, else matplotlib; with
    neither, `RuntimeError` says what to install.
    """
    try:
        import kaleido  # noqa: F401  - plotly's PNG export
    except ImportError:
        pass
    else:
        _plot_plotly(results, path)
        return "plotly"
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError(
            "writing the PNG needs matplotlib, or kaleido for plotly: pip install matplotlib"
        ) from None
    matplotlib.use("Agg")
    _plot_matplotlib(results, path)
    return "matplotlib"


def _bands(results: dict[str, Any], arm: str) -> tuple[list[float], list[float], list[float]]:
    cols = list(zip(*curves(results, arm), strict=True))
    nan = math.nan
    med = [statistics.median(c) if not any(math.isnan(v) for v in c) else nan for c in cols]
    lo = [min(c) if not any(math.isnan(v) for v in c) else nan for c in cols]
    hi = [max((v for v in c if not math.isnan(v)), default=nan) for c in cols]
    return med, lo, hi


def _title(results: dict[str, Any]) -> str:
    s = results["setting"]
    return (
        f"{s['space']}, <= {s['max_params']:,} params, {results['n_train']:,} train images, "
        f"{s['epochs']} epochs; median of {s['reps']} with min-max band"
    )


def _plot_matplotlib(results: dict[str, Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    div, unit = _scale(results["budget"])
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    for arm in results["setting"]["arms"]:
        med, lo, hi = _bands(results, arm)
        xs = [results["budget"] * i / (len(med) - 1) / div for i in range(len(med))]
        (line,) = ax.plot(xs, med, label=arm, linewidth=2, drawstyle="steps-post")
        ax.fill_between(xs, lo, hi, step="post", alpha=0.15, color=line.get_color())
    seeds = [s["value"] for s in results["seeds"]]
    if seeds:
        ax.axhline(max(seeds), color="grey", linestyle=":", label="best seed configuration")
    verdicts = target(results)
    if verdicts:
        ax.axhline(verdicts[0][3], color="black", linestyle="--", linewidth=0.8,
                   label="random: final median best")  # fmt: skip
        ax.axvline(results["budget"] * TARGET_SHARE / div, color="black", linewidth=0.5)
    ax.set_xlabel(f"images trained ({unit})")
    ax.set_ylabel("best validation accuracy so far")
    ax.set_title(_title(results), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_plotly(results: dict[str, Any], path: Path) -> None:
    import plotly.colors
    import plotly.graph_objects as go

    div, unit = _scale(results["budget"])
    fig = go.Figure()
    palette = plotly.colors.qualitative.Plotly
    for i, arm in enumerate(results["setting"]["arms"]):
        med, lo, hi = _bands(results, arm)
        xs = [results["budget"] * k / (len(med) - 1) / div for k in range(len(med))]
        color = palette[i % len(palette)]
        band = {"shape": "hv", "width": 0, "color": color}
        fig.add_scatter(x=xs, y=hi, line=band, showlegend=False, legendgroup=arm)
        fig.add_scatter(x=xs, y=lo, line=band, fill="tonexty", opacity=0.2, showlegend=False,
                        legendgroup=arm)  # fmt: skip
        fig.add_scatter(x=xs, y=med, name=arm, line={"shape": "hv", "width": 2, "color": color},
                        legendgroup=arm)  # fmt: skip
    seeds = [s["value"] for s in results["seeds"]]
    if seeds:
        fig.add_hline(max(seeds), line_dash="dot", line_color="grey")
    fig.update_layout(
        title={"text": _title(results), "font": {"size": 12}},
        xaxis_title=f"images trained ({unit})",
        yaxis_title="best validation accuracy so far",
        width=1000,
        height=600,
    )
    fig.write_image(str(path))
