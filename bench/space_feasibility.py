"""How often each study preset samples an architecture over the budget.

Samples N trials per preset with a stand-in objective (no training) and prints the
infeasible share: the draws whose shape is over the budget even at its smallest
scale, which a study records as infeasible. For the feasible draws it prints the
spread of parameter counts and how close each net comes to the share of the budget
its trial drew (params / (fill x max-params); 1.0 is a perfect fit).

    python bench/space_feasibility.py [--samples 1000] [--max-params 5000000] [--sampler random]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autosearch.models import count_params
from autosearch.search.space import SPACES, sample
from autosearch.search.tuning.study import make_sampler


def draw(space, n: int, *, max_params: int, sampler) -> list[tuple[int, float | None]]:
    """(parameter count, drawn fill or None) of `n` samples; the stand-in objective
    scores feasible nets by log(params) under the budget constraint, so a model-based
    sampler is pushed toward the limit as a real search would be."""
    study = optuna.create_study(sampler=sampler, direction="maximize")
    out = []
    for _ in range(n):
        trial = study.ask()
        params = count_params(sample(trial, space, max_params=max_params).arch)
        trial.set_constraint("params", float(params - max_params))
        study.tell(trial, 0.0 if params > max_params else float(np.log(params)))
        out.append((params, trial.params.get("fill")))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--max-params", type=int, default=5_000_000)
    parser.add_argument("--sampler", default="random")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")

    limit = args.max_params
    print(f"{args.samples} samples per preset, sampler {args.sampler}, limit {limit:,}")
    header = (
        f"{'preset':<12} {'infeasible':>10}   {'feasible params p5 / p50 / p95 (M)':<36}"
        "  params / (fill x limit) p5 / p50"
    )
    print(header)
    print("-" * len(header))
    for name, space in SPACES.items():
        rows = draw(
            space, args.samples, max_params=limit, sampler=make_sampler(args.sampler, args.seed)
        )
        feasible = [(p, f) for p, f in rows if p <= limit]
        share = 1 - len(feasible) / len(rows)
        counts = np.percentile([p for p, _ in feasible], [5, 50, 95]) / 1e6
        fits = [p / (f * limit) for p, f in feasible if f is not None]
        fit = " / ".join(f"{v:.2f}" for v in np.percentile(fits, [5, 50])) if fits else "fixed arch"
        spread = " / ".join(f"{v:.2f}" for v in counts)
        print(f"{name:<12} {share:>10.1%}   {spread:<36}  {fit}")


if __name__ == "__main__":
    main()
