"""Benchmark of the symmetry generative model on CPU.

  python benchmarks/symmetry.py            both SGM stages on digits (experiments/symmetry_digits.py:quick),
                                            throughput of each stage, invariance/likelihood/recovery results
  python benchmarks/symmetry.py --quick    a 1-minute smoke version of the same (fewer steps)
  python benchmarks/symmetry.py --recovery SWEEP_DIR
                                            the recovery table (per stage-1 recipe and seed, 95% intervals)
                                            and recovery.png of a `mdiff sweep run symmetry:recovery` directory
  python benchmarks/symmetry.py --vae      adds the VAE vs AugVAE vs prototype-VAE test log-likelihood table
                                            over training-set sizes and seeds (mean, s.e., 95% interval, paired
                                            differences by seed; the paper's InvVAE weight beside them) and
                                            writes vae_loglik_vs_size.png into the workdir; long (--sizes,
                                            --seeds, --sgm-steps, --vae-steps (a cap: early stopping on the
                                            validation ELBO), --valid-every, --patience, --iw)
The test images are the same for every size and seed (mdiff/symmetry/data.py: load).

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


def interval(values: list[float]) -> dict:
    """Mean, standard error over seeds and a 95% t-interval."""
    from scipy import stats

    n = len(values)
    mean = sum(values) / n
    se = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 / math.sqrt(n) if n > 1 else float("nan")
    half = stats.t.ppf(0.975, n - 1) * se if n > 1 else float("nan")
    return {"mean": mean, "se": se, "ci95": [mean - half, mean + half], "n": n, "values": values}


KINDS = ("vae", "augvae", "protovae", "invvae")  # invvae: the paper's weight, not a bound on the same log p(x)
PAIRS = (("augvae", "vae"), ("protovae", "vae"), ("protovae", "augvae"))  # pixel-space rows only


def paired(a: list[float], b: list[float]) -> dict:
    """a - b paired by seed (same data split and SGM): mean, 95% t-interval, significant if it excludes 0."""
    r = interval([x - y for x, y in zip(a, b)])
    lo, hi = r["ci95"]
    r["significant"] = bool(lo > 0 or hi < 0)
    return r


def vae_plot(result: dict, path: pathlib.Path) -> None:
    """Test bound vs training-set size: mean over seeds with the 95% t-interval as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {"vae": "VAE", "augvae": "AugVAE", "protovae": "prototype-VAE",
             "invvae": "InvVAE weight (prototype frame, not log p(x))"}
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, kind in enumerate(k for k in KINDS if k in result):
        sizes = sorted(result[kind], key=int)
        xs = [int(s) * (1 + 0.03 * (i - 1)) for s in sizes]  # small offsets so the bars do not overlap
        means = [result[kind][s]["mean"] for s in sizes]
        err = [[m - result[kind][s]["ci95"][0] for s, m in zip(sizes, means)],
               [result[kind][s]["ci95"][1] - m for s, m in zip(sizes, means)]]
        ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label=names[kind],
                    linestyle="--" if kind == "invvae" else "-")
    ax.set_xscale("log")
    sizes = sorted({int(s) for by in result.values() for s in by})
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training images")
    ax.set_ylabel("test log-likelihood bound (nats / image)")
    ax.set_title("digits, IWLB on the same test pixels (mean, 95% t-interval over seeds)", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def vae_table(sizes: list[int], seeds: list[int], steps: int, vae_steps: int, iw: int, root: pathlib.Path,
              valid_every: int = 250, patience: int = 4) -> dict:
    import jax

    # Every cell compiles the same programs (parameters are arguments, not constants): cache them on disk so
    # only the first cell pays for compilation.
    jax.config.update("jax_compilation_cache_dir", str(root / "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    table: dict = {}
    medians: dict = {}
    stops: dict = {}
    wall: dict = {}
    for seed in seeds:  # seed-major: an interrupted table still has every size for the first seeds
        for size in sizes:
            overrides = [f"--config.seed={seed}", f"--config.data.num_train={size}",
                         f"--config.inference.steps={steps}", f"--config.flow.steps={steps}",
                         f'--config.vae.models={KINDS!r}', f"--config.vae.steps={vae_steps}",
                         f"--config.vae.iw_samples={iw}", f"--config.vae.valid_every={valid_every}",
                         f"--config.vae.patience={patience}", "--config.train.progress=False"]
            t0 = time.time()
            summary = train_once("quick", overrides, root / f"vae_{size}_{seed}")
            for kind in KINDS:
                table.setdefault(kind, {}).setdefault(str(size), []).append(summary[f"vae/{kind}/test_iwlb"])
                medians.setdefault(kind, {}).setdefault(str(size), []).append(summary[f"vae/{kind}/test_iwlb_median"])
                stops.setdefault(kind, {}).setdefault(str(size), []).append(
                    [summary[f"vae/{kind}/best_step"], summary[f"vae/{kind}/stopped_step"]])
            wall[f"{size}/{seed}"] = time.time() - t0
            print(f"num_train={size} seed={seed} ({time.time() - t0:.0f} s): " + ", ".join(
                f"{k} {summary[f'vae/{k}/test_iwlb']:.1f} (best step {summary[f'vae/{k}/best_step']:.0f}, "
                f"stopped {summary[f'vae/{k}/stopped_step']:.0f})" for k in KINDS), file=sys.stderr, flush=True)
    result = {kind: {size: interval(v) for size, v in by_size.items()} for kind, by_size in table.items()}
    diffs = {f"{a}-{b}": {str(s): paired(table[a][str(s)], table[b][str(s)]) for s in sizes} for a, b in PAIRS}
    print(f"{'model':>9} {'num_train':>9} {'test bound (nats)':>20} {'95% interval':>22}", file=sys.stderr)
    for kind, by_size in result.items():
        for size, r in by_size.items():
            lo, hi = r["ci95"]
            print(f"{kind:>9} {size:>9} {r['mean']:>12.1f} +- {r['se']:<5.1f} [{lo:>9.1f}, {hi:>9.1f}]", file=sys.stderr)
    for name, by_size in diffs.items():
        for size, r in by_size.items():
            lo, hi = r["ci95"]
            print(f"{name:>17} {size:>6} {r['mean']:>9.1f} [{lo:>8.1f}, {hi:>8.1f}]"
                  f"{' significant' if r['significant'] else ''}", file=sys.stderr)
    plot = root / "vae_loglik_vs_size.png"
    vae_plot(result, plot)
    print(f"plot: {plot}", file=sys.stderr)
    return {"by_model": result, "paired_differences": diffs,
            "median_over_images": {k: {s: interval(v) for s, v in by.items()} for k, by in medians.items()},
            "best_and_stopped_step": stops, "cell_wall_s": wall, "plot": str(plot)}


RECOVERY_KEYS = {  # (class, dimension, metric) -> column
    "heart_rotation_w1_rel": "recovery/class0/rotation/w1_rel", "heart_rotation_q_slope": "recovery/class0/rotation/q_slope",
    "ellipse_rotation_w1_rel": "recovery/class1/rotation/w1_rel",
    "ellipse_rotation_q_slope": "recovery/class1/rotation/q_slope",
    "heart_shift_x_w1_rel": "recovery/class0/shift_x/w1_rel", "heart_shift_y_w1_rel": "recovery/class0/shift_y/w1_rel",
    "ellipse_shift_x_w1_rel": "recovery/class1/shift_x/w1_rel",
    "ellipse_shift_y_w1_rel": "recovery/class1/shift_y/w1_rel",
    "heart_rotation_w1_deg": "recovery/class0/rotation/w1", "ellipse_rotation_w1_deg": "recovery/class1/rotation/w1",
}
STAGE1_KEYS = ("symmetric", "invertibility", "blur_sigma_init", "aug_init_mult", "aug_end")


def recovery_summary(sweep_dir: pathlib.Path) -> dict:
    """Per stage-1 recipe (the inference keys that differ between recipes): every recovery figure per seed, its
    mean and 95% t-interval over seeds, and the wall time of each run, from the run directories alone."""
    groups: dict = {}
    for run in sorted((sweep_dir / "runs").iterdir()):
        summary_file, config_file = run / "summary.json", run / "config.json"
        if not summary_file.exists():
            continue
        summary, config = json.loads(summary_file.read_text()), json.loads(config_file.read_text())
        if summary.get("status") != "complete":
            continue
        recipe = ("symmetric" if config["inference"]["symmetric"] else "non-symmetric") + ", " + ", ".join(
            f"{k}={config['inference'][k]}" for k in STAGE1_KEYS[1:])
        group = groups.setdefault(recipe, {"seeds": [], "wall_s": [], "values": {}})
        group["seeds"].append(config["seed"])
        group["wall_s"].append(summary["wall_s"])
        for name, key in RECOVERY_KEYS.items():
            value = summary.get(key, float("nan"))
            group["values"].setdefault(name, []).append(math.degrees(value) if name.endswith("_deg") else value)
    for group in groups.values():
        group["intervals"] = {k: interval(v) for k, v in group["values"].items() if len(v) > 1}
    return groups


def recovery_plot(groups: dict, path: pathlib.Path) -> None:
    """Per recipe and seed: W1 / half-width of the hearts' and ellipses' rotation and q's rotation slope."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    cols = ("heart_rotation", "ellipse_rotation")
    for r, (recipe, group) in enumerate(groups.items()):
        label = recipe.split(",")[0] + (" + range schedule" if "aug_init_mult=0.1" in recipe else " (paper)")
        for ax, metric in zip(axes, ("w1_rel", "q_slope")):
            for c, col in enumerate(cols):
                ys = group["values"][f"{col}_{metric}"]
                ax.scatter([c + 0.15 * (r - 0.5)] * len(ys), ys, marker="o" if r == 0 else "s",
                           color=f"C{r}", label=label if c == 0 else None)
    axes[0].axhline(0.15, color="grey", ls=":", lw=1)
    axes[0].set_ylabel("W1 / known half-width (0 = exact)")
    axes[1].axhline(1.0, color="grey", ls=":", lw=1)
    axes[1].set_ylabel("q rotation slope (1 = invariant prototypes)")
    for ax in axes:
        ax.set_xticks(range(len(cols)), ["heart (+-60 deg)", "ellipse (+-30 deg)"])
    axes[0].legend(fontsize=7)
    fig.suptitle("dSprites known: recovery of the rotation per seed", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short smoke run (150 + 150 steps)")
    parser.add_argument("--vae", action="store_true", help="also the VAE / AugVAE / prototype-VAE table")
    parser.add_argument("--vae-only", action="store_true", help="with --vae: skip the stand-alone SGM benchmark run")
    parser.add_argument("--sizes", default="300,600,1200", help="training-set sizes for --vae")
    parser.add_argument("--seeds", default="0,1,2", help="seeds for --vae")
    parser.add_argument("--sgm-steps", type=int, default=1000, help="steps of each SGM stage per --vae cell")
    parser.add_argument("--vae-steps", type=int, default=3000,
                        help="cap on the training steps of each VAE for --vae (early stopping on validation)")
    parser.add_argument("--valid-every", type=int, default=250, help="steps between validation checks for --vae")
    parser.add_argument("--patience", type=int, default=4,
                        help="validation checks without improvement before a VAE stops (0: train all steps)")
    parser.add_argument("--iw", type=int, default=100, help="importance samples of the test bound for --vae")
    parser.add_argument("--workdir", default=None,
                        help="keep the run directories (and the --vae plot) here (default: a temp dir)")
    parser.add_argument("--recovery", metavar="SWEEP_DIR", default=None,
                        help="only summarise a finished symmetry:recovery (or :unrotated) sweep directory: per "
                             "recipe and seed, with 95%% intervals; writes recovery.png there")
    args = parser.parse_args()
    if args.recovery:
        sweep_dir = pathlib.Path(args.recovery)
        groups = recovery_summary(sweep_dir)
        recovery_plot(groups, sweep_dir / "recovery.png")
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
        result["vae_table"] = vae_table(sizes, seeds, steps, vae_steps, iw, root, args.valid_every, args.patience)
        result["vae_settings"] = {"sgm_steps_per_stage": steps, "vae_steps_cap": vae_steps, "iw_samples": iw,
                                  "valid_every": args.valid_every, "patience": args.patience,
                                  "sizes": sizes, "seeds": seeds}
        result["vae_table_units"] = ("test importance-weighted bound on log p(x), nats per image, the same test "
                                     "pixels and Gaussian pixel model (learned per-pixel sigma) for every row "
                                     "except invvae (the paper's weight: a density over (prototype, eta)); "
                                     "mean over seeds, se over seeds, 95% t-interval")
    result["seconds_total"] = time.time() - t0
    result["machine"] = machine()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
