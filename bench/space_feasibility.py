"""How often each study preset samples an over-budget architecture.

Samples N trials per preset with a stand-in objective (no training) and prints the
infeasible share and the distribution of parameter counts, with and without the
spaces' fit-to-budget rule.

    python bench/space_feasibility.py [--samples 500] [--max-params 5000000] [--sampler tpe]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import warnings
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from autosearch.search.space import SPACES, infeasible_rate
from autosearch.search.tuning.study import make_sampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--max-params", type=int, default=5_000_000)
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore")

    print(f"{args.samples} samples per preset, sampler {args.sampler}, limit {args.max_params:,}")
    quantiles = "params p5 / p25 / median / p75 / max (M)"
    header = f"{'preset':<12} {'fit':<5} {'infeasible':>10}   {quantiles}"
    print(header)
    print("-" * len(header))
    for name, space in SPACES.items():
        variants = [("yes", space)]
        if space.arch.fixed is None:
            raw = dataclasses.replace(space, arch=dataclasses.replace(space.arch, fit_budget=False))
            variants.append(("no", raw))
        for fit, variant in variants:
            rate, counts = infeasible_rate(
                variant,
                args.samples,
                max_params=args.max_params,
                sampler=make_sampler(args.sampler, args.seed),
            )
            q = np.percentile(counts, [5, 25, 50, 75, 100]) / 1e6
            print(f"{name:<12} {fit:<5} {rate:>9.1%}   " + " / ".join(f"{v:.2f}" for v in q))


if __name__ == "__main__":
    main()
