"""Benchmark of the symmetry generative model on CPU.

  python benchmarks/symmetry.py            both SGM stages on digits (experiments/symmetry_digits.py:quick),
                                            throughput of each stage, invariance/likelihood/recovery results
  python benchmarks/symmetry.py --quick    a 1-minute smoke version of the same (fewer steps)
  python benchmarks/symmetry.py --vae      adds the VAE vs AugVAE vs prototype-VAE test log-likelihood table
                                            over training-set sizes and seeds (mean, s.e., 95% interval); long

The last stdout line is one JSON object with `seconds_total`, `steps_per_s_stage1`, `steps_per_s_stage2` and the
rest of the figures (and the machine).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import tempfile
import time
from bench_common import machine  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIG = str(ROOT / "experiments/symmetry_digits.py")



def train_once(variant: str, overrides: list[str], workdir: pathlib.Path) -> dict:
    from mdiff.config import load_config
    from mdiff.symmetry import defaults  # noqa: F401
    from mdiff.symmetry.train import train_and_evaluate

    config = load_config(f"{CONFIG}:{variant}", overrides)
    return train_and_evaluate(config, workdir, overwrite=True, log=lambda m: print(m, file=sys.stderr))


def sgm_figures(summary: dict) -> dict:
    keys = ("eval/stage1/x_mse", "eval/stage2/log_p", "recovery/rotation/std_learned", "recovery/rotation/std_true",
            "recovery/rotation/w1", "recovery/shift_x/std_learned", "recovery/shift_x/std_true")
    return {k: summary.get(k) for k in keys}


def interval(values: list[float]) -> dict:
    """Mean, standard error and a 95% t-interval."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    se = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 / math.sqrt(n) if n > 1 else float("nan")
    half = stats.t.ppf(0.975, n - 1) * se if n > 1 else float("nan")
    return {"mean": mean, "se": se, "ci95": [mean - half, mean + half], "n": n, "values": values}


def vae_table(sizes: list[int], seeds: list[int], steps: int, vae_steps: int, root: pathlib.Path) -> dict:
    table: dict = {}
    for size in sizes:
        for seed in seeds:
            overrides = [f"--config.seed={seed}", f"--config.data.num_train={size}",
                         f"--config.inference.steps={steps}", f"--config.flow.steps={steps}",
                         '--config.vae.models=("vae","augvae","protovae")', f"--config.vae.steps={vae_steps}",
                         "--config.vae.iw_samples=100"]
            summary = train_once("quick", overrides, root / f"vae_{size}_{seed}")
            for kind in ("vae", "augvae", "protovae"):
                table.setdefault(kind, {}).setdefault(str(size), []).append(summary[f"vae/{kind}/test_iwlb"])
            print(f"num_train={size} seed={seed}: " + ", ".join(
                f"{k} {summary[f'vae/{k}/test_iwlb']:.1f}" for k in ("vae", "augvae", "protovae")), file=sys.stderr)
    result = {kind: {size: interval(v) for size, v in by_size.items()} for kind, by_size in table.items()}
    print(f"{'model':>9} {'num_train':>9} {'test bound (nats)':>20} {'95% interval':>22}", file=sys.stderr)
    for kind, by_size in result.items():
        for size, r in by_size.items():
            lo, hi = r["ci95"]
            print(f"{kind:>9} {size:>9} {r['mean']:>12.1f} +- {r['se']:<5.1f} [{lo:>9.1f}, {hi:>9.1f}]", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (150 + 150 steps)")
    parser.add_argument("--vae", action="store_true", help="also the VAE / AugVAE / prototype-VAE table")
    parser.add_argument("--sizes", default="300,600,1200", help="training-set sizes for --vae")
    parser.add_argument("--seeds", default="0,1,2", help="seeds for --vae")
    parser.add_argument("--workdir", default=None, help="keep the run directories here (default: a temp dir)")
    args = parser.parse_args()

    t0 = time.time()
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="mdiff_sgm_bench_"))
    overrides = ["--config.inference.steps=150", "--config.flow.steps=150"] if args.quick else []
    summary = train_once("quick", overrides, root / "sgm")
    result = {
        "benchmark": "symmetry",
        "config": f"experiments/symmetry_digits.py:quick{' (--quick: 150+150 steps)' if args.quick else ''}",
        "steps_stage1": summary["steps_stage1"],
        "steps_stage2": summary["steps_stage2"],
        "steps_per_s_stage1": summary["steps_per_s_stage1"],
        "steps_per_s_stage2": summary["steps_per_s_stage2"],
        "sgm_wall_s": summary["wall_s"],
        **sgm_figures(summary),
    }
    if args.vae:
        sizes = [int(s) for s in args.sizes.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
        steps, vae_steps = (100, 50) if args.quick else (1000, 2000)
        result["vae_table"] = vae_table(sizes, seeds, steps, vae_steps, root)
        result["vae_table_units"] = "test importance-weighted bound, nats per image (Gaussian pixels in [-1, 1])"
    result["seconds_total"] = time.time() - t0
    result["machine"] = machine()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
