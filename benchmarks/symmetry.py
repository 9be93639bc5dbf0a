"""Benchmark of the symmetry generative model on CPU.

  python benchmarks/symmetry.py            both SGM stages on digits (experiments/symmetry_digits.py:quick),
                                            throughput of each stage, invariance/likelihood/recovery results
  python benchmarks/symmetry.py --quick    a 1-minute smoke version of the same (fewer steps)
  python benchmarks/symmetry.py --recovery SWEEP_DIR
                                            the recovery table (per stage-1 recipe and seed, 95% intervals)
                                            and recovery.png of a `mdiff sweep run symmetry:recovery` directory
  python benchmarks/symmetry.py --vae      adds the VAE vs AugVAE vs prototype-VAE test log-likelihood table
                                            over training-set sizes and seeds (mean, s.e., 95% interval, paired
                                            differences by seed and from the largest to the smallest set; the
                                            paper's InvVAE weight beside them) and writes vae_loglik_vs_size.png
                                            into the workdir; long. By default its cells are the `symmetry:vae`
                                            sweep's (sweeps/symmetry.py: vae_settings); --sizes, --seeds,
                                            --sgm-steps, --vae-steps (a cap: early stopping on the validation
                                            ELBO), --valid-every, --patience and --iw change them
The statistics and figures are analysis/symmetry.py's, which `mdiff report` also uses on a sweep directory.
The test images are the same for every size and seed (mdiff/symmetry/data.py: load).

The last stdout line is one JSON object with `seconds_total`, `steps_per_s_stage1`, `steps_per_s_stage2` and the
rest of the figures (and the machine).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time
from bench_common import machine  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIG = str(ROOT / "experiments/symmetry_digits.py")



def train_once(variant: str, overrides: list[str], workdir: pathlib.Path) -> dict:
    """Train one run in `workdir`, or return its summary if a complete run of the same config is there (so a
    long --vae table stopped part-way continues from its finished cells when run again)."""
    from mdiff import rundir
    from mdiff.config import load_config
    from mdiff.symmetry import defaults  # noqa: F401
    from mdiff.symmetry.train import train_and_evaluate

    config = load_config(f"{CONFIG}:{variant}", overrides)
    if (workdir / rundir.SUMMARY_FILE).exists() and (workdir / rundir.CONFIG_FILE).exists():
        summary = rundir.read_summary(workdir)
        same = not rundir.config_differences(rundir.read_config(workdir), rundir.config_dict(config))
        if summary.get("status") == "complete" and same:
            print(f"{workdir}: complete with this config, reused", file=sys.stderr)
            return summary
    return train_and_evaluate(config, workdir, overwrite=True, log=lambda m: print(m, file=sys.stderr))


def sgm_figures(summary: dict) -> dict:
    keys = ("eval/stage1/x_mse", "eval/stage2/log_p", "recovery/rotation/std_learned", "recovery/rotation/std_true",
            "recovery/rotation/w1", "recovery/shift_x/std_learned", "recovery/shift_x/std_true")
    return {k: summary.get(k) for k in keys}


def vae_table(sizes: list[int], seeds: list[int], settings: dict, root: pathlib.Path) -> dict:
    """Train (or reuse) one cell per seed and size in root/vae_<size>_<seed> with the `symmetry:vae` sweep's
    cell overrides (`settings`), print the table, draw the figure; return analysis.symmetry.vae_summary's result."""
    import jax

    from analysis import symmetry as study
    from mdiff import rundir, runtime
    from mdiff.sweeps.define import override_args

    # Every cell compiles the same programs (parameters are arguments, not constants): the project's on-disk
    # cache (as `mdiff` uses it), with a lower threshold so the cells' smaller programs are kept too.
    runtime.use_compilation_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    runs, wall = [], {}
    for seed in seeds:  # seed-major: an interrupted table still has every size for the first seeds
        for size in sizes:
            workdir = root / f"vae_{size}_{seed}"
            t0 = time.time()
            summary = train_once("quick", override_args({"seed": seed, "data.num_train": size, **settings}), workdir)
            runs.append((workdir.name, rundir.read_config(workdir), summary))
            wall[f"{size}/{seed}"] = time.time() - t0
            print(f"num_train={size} seed={seed} ({wall[f'{size}/{seed}']:.0f} s): " + ", ".join(
                f"{k} {summary[f'vae/{k}/test_iwlb']:.1f} (best step {summary[f'vae/{k}/best_step']:.0f}, "
                f"stopped {summary[f'vae/{k}/stopped_step']:.0f})" for k in settings["vae.models"]),
                file=sys.stderr, flush=True)
    result = study.vae_summary(runs)
    bounds, differences = study.vae_frames(result)
    print(bounds.drop(columns=["values", "best_and_stopped_step"]).to_string(index=False), file=sys.stderr)
    print(differences.to_string(index=False), file=sys.stderr)
    plot = root / "vae_loglik_vs_size.png"
    study.vae_plot(result, plot)
    print(f"plot: {plot}", file=sys.stderr)
    return {**result, "cell_wall_s": wall, "plot": str(plot)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (150 + 150 steps)")
    parser.add_argument("--vae", action="store_true", help="also the VAE / AugVAE / prototype-VAE table")
    parser.add_argument("--vae-only", action="store_true", help="with --vae: skip the stand-alone SGM benchmark run")
    from sweeps.symmetry import SEEDS, VAE_SIZES, vae_settings

    study = vae_settings()  # the defaults are the `symmetry:vae` sweep's cells
    parser.add_argument("--sizes", default=",".join(map(str, VAE_SIZES)), help="training-set sizes for --vae")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="seeds for --vae")
    parser.add_argument("--sgm-steps", type=int, default=study["inference.steps"],
                        help="steps of each SGM stage per --vae cell")
    parser.add_argument("--vae-steps", type=int, default=study["vae.steps"],
                        help="cap on the training steps of each VAE for --vae (early stopping on validation)")
    parser.add_argument("--valid-every", type=int, default=study["vae.valid_every"],
                        help="steps between validation checks for --vae")
    parser.add_argument("--patience", type=int, default=study["vae.patience"],
                        help="validation checks without improvement before a VAE stops (0: train all steps)")
    parser.add_argument("--iw", type=int, default=study["vae.iw_samples"],
                        help="importance samples of the test bound for --vae")
    parser.add_argument("--workdir", default=None,
                        help="keep the run directories (and the --vae plot) here (default: a temp dir)")
    parser.add_argument("--recovery", metavar="SWEEP_DIR", default=None,
                        help="only summarise a finished symmetry:recovery (or :unrotated) sweep directory: per "
                             "recipe and seed, with 95%% intervals; writes recovery.png there")
    args = parser.parse_args()
    if args.recovery:
        sweep_dir = pathlib.Path(args.recovery)
        from analysis import symmetry as study

        groups = study.recovery_summary(study.complete_runs(sweep_dir))
        if not groups:
            parser.error(f"--recovery {sweep_dir}: no complete dSprites recovery runs under {sweep_dir / 'runs'}")
        study.recovery_plot(groups, sweep_dir / "recovery.png")
        print(json.dumps({"benchmark": "symmetry_recovery", "groups": groups, "plot": str(sweep_dir / "recovery.png")}))
        return

    t0 = time.time()
    root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="mdiff_sgm_bench_"))
    result: dict = {"benchmark": "symmetry"}
    if not (args.vae and args.vae_only):
        overrides = ["--config.inference.steps=150", "--config.flow.steps=150"] if args.quick else []
        summary = train_once("quick", overrides, root / "sgm")
        result.update({
            "config": f"experiments/symmetry_digits.py:quick{' (--quick: 150+150 steps)' if args.quick else ''}",
            "steps_stage1": summary["steps_stage1"],
            "steps_stage2": summary["steps_stage2"],
            "steps_per_s_stage1": summary["steps_per_s_stage1"],
            "steps_per_s_stage2": summary["steps_per_s_stage2"],
            "sgm_wall_s": summary["wall_s"],
            **sgm_figures(summary),
        })
    if args.vae:
        sizes = [int(s) for s in args.sizes.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
        steps, vae_steps, iw = (100, 60, 16) if args.quick else (args.sgm_steps, args.vae_steps, args.iw)
        settings = vae_settings(steps, vae_steps, iw, args.valid_every, args.patience)
        result["vae_table"] = vae_table(sizes, seeds, settings, root)
        result["vae_settings"] = {**settings, "sizes": sizes, "seeds": seeds}
        result["vae_table_units"] = ("test importance-weighted bound on log p(x), nats per image, the same test "
                                     "pixels and Gaussian pixel model (learned per-pixel sigma) for every row "
                                     "except invvae (the paper's weight: a density over (prototype, eta)); "
                                     "mean over seeds, se over seeds, 95% t-interval")
    result["seconds_total"] = time.time() - t0
    result["machine"] = machine()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
