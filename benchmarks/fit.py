"""Benchmark: parametric scaling-law fit with bootstrap (target: 1,000 resamples on 250 points in under
60 s on 2 cores).

    python benchmarks/fit.py [--quick] [--workers 2] [--points 250] [--bootstrap 1000]

Last stdout line: one JSON object with `seconds` (wall clock of the whole fit: grid, L-BFGS-B and the
bootstrap) and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis import scaling  # noqa: E402

TRUTH = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022, approach 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 resamples: checks the script runs")
    parser.add_argument("--points", type=int, default=250)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n_boot = 100 if args.quick else args.bootstrap
    df = scaling.synthetic_table(TRUTH, args.points, noise=0.01, seed=args.seed)
    start = time.perf_counter()
    fit = scaling.fit_arrays(
        df.params, df.tokens, df.loss, n_bootstrap=n_boot, seed=args.seed, workers=args.workers
    )
    total = time.perf_counter() - start
    ci = fit.intervals()
    print(f"fit {fit.params}; alpha 95% CI {ci['alpha']}, beta 95% CI {ci['beta']}")
    result = dict(
        benchmark="fit",
        seconds=round(total, 3),
        n_points=args.points,
        n_bootstrap=n_boot,
        n_bootstrap_ok=int(len(fit.bootstrap)),
        workers=args.workers,
        quick=args.quick,
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), python=platform.python_version(),
                     load_avg_1min=round(os.getloadavg()[0], 2)),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
