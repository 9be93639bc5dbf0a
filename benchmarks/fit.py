"""Benchmark: parametric scaling-law fit with 1,000 bootstrap refits on 250 points (target: under 60 s on 2 cores).

    python benchmarks/fit.py [--quick] [--workers 2] [--points 250] [--bootstrap 1000] [--repeats 3]

Two configurations, interleaved in the same process so that a shared machine disturbs both alike:
* `full`: what `mdiff fit scaling` runs: grid + L-BFGS-B, 1,000 bootstrap refits (each from its own best grid
  points and the full-data optimum), diagnostics (profiles of E, alpha, beta) and validation by extrapolation
  (a second fit on all but the largest-compute runs, with its own 200 refits);
* `estimates` (the baseline): the same fit and bootstrap without diagnostics and validation.

Last stdout line: one JSON object with the median wall and CPU seconds (this process and its workers) of each,
the ratio full / estimates, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from analysis import scaling  # noqa: E402

TRUTH = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)  # Hoffmann et al. 2022, approach 3


def _timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process and its finished children, result)."""
    t0, c0 = time.perf_counter(), os.times()
    result = fn()
    t1, c1 = time.perf_counter(), os.times()
    cpu = (c1.user + c1.system + c1.children_user + c1.children_system) - (c0.user + c0.system + c0.children_user + c0.children_system)
    return t1 - t0, cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 resamples, one repeat: checks the script runs")
    parser.add_argument("--points", type=int, default=250)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n_boot = 100 if args.quick else args.bootstrap
    repeats = 1 if args.quick else args.repeats
    df = scaling.synthetic_table(TRUTH, args.points, noise=0.01, seed=args.seed)
    configs = {"estimates": dict(diagnostics=False, validate=False), "full": {}}
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in configs}
    fit = None
    for _ in range(repeats):
        for name, extra in configs.items():
            wall, cpu, result = _timed(lambda: scaling.fit_arrays(df.params, df.tokens, df.loss, n_bootstrap=n_boot,
                                                                   seed=args.seed, workers=args.workers, **extra))
            times[name].append((wall, cpu))
            fit = result if name == "full" else fit
    ci = fit.intervals()
    print(f"fit {fit.params}; alpha 95% CI {ci['alpha']}, beta 95% CI {ci['beta']}; identifiable {fit.identifiable}; "
          f"held-out error {fit.validation['mean_abs_rel_error']:.4f}")
    med = {k: dict(wall_s=round(statistics.median(w for w, _ in v), 2), cpu_s=round(statistics.median(c for _, c in v), 2))
           for k, v in times.items()}
    result = dict(
        benchmark="fit",
        seconds=med["full"]["wall_s"],
        cpu_seconds=med["full"]["cpu_s"],
        baseline_estimates_only=med["estimates"],
        ratio_full_to_estimates=dict(wall=round(med["full"]["wall_s"] / med["estimates"]["wall_s"], 2),
                                     cpu=round(med["full"]["cpu_s"] / med["estimates"]["cpu_s"], 2)),
        repeats=repeats,
        n_points=args.points,
        n_bootstrap=n_boot,
        n_bootstrap_ok=int(len(fit.bootstrap)),
        identifiable=fit.identifiable,
        workers=args.workers,
        quick=args.quick,
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), python=platform.python_version(),
                     load_avg_1min=round(os.getloadavg()[0], 2)),
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
