"""Symmetry-model studies, read from run directories (`mdiff symmetry train` writes config.json and summary.json):

* recovery of a known transformation distribution (dSprites `known` / `unrotated`): per stage-1 recipe, the
  W1 distance between each shape's learned and known rotation distribution (relative to the known half-width,
  and in degrees) and the slope of the inferred prototype's rotation against the applied one, per seed, with
  the mean and 95% t-interval over seeds;
* data efficiency of the VAE combinations: the test bound of each VAE kind per training-set size, paired
  differences between kinds (same seed = same data split and SGM) and the change from the smallest to the
  largest training set, paired by seed.

Used by `mdiff report` (its symmetry sections) and by benchmarks/symmetry.py.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.schedules import t_interval

Run = tuple[str, dict, dict]  # (name, config, summary)

STAGE1_KEYS = ("symmetric", "invertibility", "blur_sigma_init", "aug_init_mult", "aug_end")
RECOVERY_METRICS = {"rotation_w1_rel": "w1_rel", "rotation_q_slope": "q_slope", "rotation_w1_deg": "w1"}  # name ->
# summary key under recovery/class<i>/rotation/ (a name ending in _deg is converted from radians)
SHIFT_METRICS = ("shift_x", "shift_y")
VAE_NAMES = {"vae": "VAE", "augvae": "AugVAE", "protovae": "prototype-VAE",
             "invvae": "InvVAE weight (prototype frame, not log p(x))"}
VAE_PAIRS = (("augvae", "vae"), ("protovae", "vae"), ("protovae", "augvae"))  # pixel-space rows only


def complete_runs(sweep_dir: str | pathlib.Path, names: Iterable[str] | None = None) -> list[Run]:
    """(name, config, summary) of every complete run under sweep_dir/runs (or only `names`), sorted by name."""
    root = pathlib.Path(sweep_dir, "runs")
    names = sorted(names) if names is not None else sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    runs = []
    for name in names:
        summary_file, config_file = root / name / "summary.json", root / name / "config.json"
        if not (summary_file.is_file() and config_file.is_file()):
            continue
        summary = json.loads(summary_file.read_text())
        if summary.get("status") == "complete":
            runs.append((name, json.loads(config_file.read_text()), summary))
    return runs


def interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean, standard error over seeds and the 95% t-interval (analysis.schedules.t_interval)."""
    arr = np.asarray(values, float)
    mean, lo, hi = t_interval(arr)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else float("nan")
    return {"mean": mean, "se": se, "ci95": [lo, hi], "n": len(arr), "values": [float(v) for v in values]}


def paired(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """a - b paired by seed; `significant` when the 95% interval excludes 0 (never for a single seed)."""
    r = interval([x - y for x, y in zip(a, b, strict=True)])
    lo, hi = r["ci95"]
    r["significant"] = bool(r["n"] > 1 and (lo > 0 or hi < 0))
    return r


# ---------------------------------------------------------------------------------------------
# Recovery of a known distribution
# ---------------------------------------------------------------------------------------------
def is_recovery_run(config: dict, summary: dict) -> bool:
    """A run on data with a known, shape-dependent distribution (dSprites) and the recovery figures."""
    return config.get("data", {}).get("name") == "dsprites" and "recovery/class0/rotation/w1" in summary


def recipe_label(config: dict) -> str:
    """The stage-1 recipe a recovery run used: its loss and the inference keys that differ between recipes."""
    inference = config["inference"]
    loss = "symmetric" if inference["symmetric"] else "non-symmetric"
    return ", ".join([loss, *(f"{k}={inference[k]}" for k in STAGE1_KEYS[1:])])


def recovery_summary(runs: Sequence[Run]) -> dict[str, dict]:
    """Per stage-1 recipe: seeds, wall times, every recovery figure per seed (per shape: rotation W1 relative to
    the known half-width and in degrees, q's rotation slope, the shifts' relative W1) and its interval."""
    groups: dict[str, dict] = {}
    for _, config, summary in runs:
        if not is_recovery_run(config, summary):
            continue
        group = groups.setdefault(recipe_label(config), {"seeds": [], "wall_s": [], "values": {}})
        group["seeds"].append(config["seed"])
        group["wall_s"].append(summary.get("wall_s", float("nan")))
        for c, shape in enumerate(config["data"]["shapes"]):
            prefix = f"recovery/class{c}"
            figures = {f"{shape}_{name}": summary.get(f"{prefix}/rotation/{key}") for name, key in RECOVERY_METRICS.items()}
            figures |= {f"{shape}_{dim}_w1_rel": summary.get(f"{prefix}/{dim}/w1_rel") for dim in SHIFT_METRICS}
            for name, value in figures.items():  # (a relative W1 or a slope is absent where nothing is known)
                if value is not None:
                    group["values"].setdefault(name, []).append(math.degrees(value) if name.endswith("_deg") else value)
    for group in groups.values():
        group["intervals"] = {k: interval(v) for k, v in group["values"].items()}
    return groups


def recovery_frame(groups: dict[str, dict]) -> pd.DataFrame:
    """One row per (recipe, figure): the per-seed values, mean and 95% t-interval."""
    rows = [dict(recipe=recipe, figure=name, seeds=",".join(map(str, g["seeds"])), values=r["values"],
                 mean=r["mean"], ci_lo=r["ci95"][0], ci_hi=r["ci95"][1])
            for recipe, g in groups.items() for name, r in g["intervals"].items()]
    return pd.DataFrame(rows)


def recovery_plot(groups: dict[str, dict], path: str | pathlib.Path) -> list[pathlib.Path]:
    """Per recipe and seed: each shape's rotation W1 (relative to the known half-width, or in degrees where no
    rotation is known) and q's rotation slope (where a rotation is known)."""
    from analysis import plots

    path = pathlib.Path(path).with_suffix(".png")
    names = {k for g in groups.values() for k in g["values"]}
    shapes = sorted({k.split("_rotation_")[0] for k in names if "_rotation_" in k})
    w1 = "rotation_w1_rel" if any(k.endswith("rotation_w1_rel") for k in names) else "rotation_w1_deg"
    panels = [w1] + (["rotation_q_slope"] if any(k.endswith("rotation_q_slope") for k in names) else [])
    with plots.plt.rc_context(plots.STYLE):
        fig, axes = plots.plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
        for r, (recipe, group) in enumerate(groups.items()):
            label = recipe.split(",")[0] + (" + range schedule" if "aug_init_mult=0.1" in recipe else "")
            for ax, metric in zip(axes[0], panels):
                for c, shape in enumerate(shapes):
                    ys = group["values"].get(f"{shape}_{metric}", [])
                    ax.scatter([c + 0.15 * (r - (len(groups) - 1) / 2)] * len(ys), ys, marker="os^v"[r % 4],
                               color=f"C{r}", label=label if c == 0 else None)
        labels = {"rotation_w1_rel": ("W1 / known half-width (0 = exact)", 0.15),
                  "rotation_w1_deg": ("W1 to the known rotation (deg)", None),
                  "rotation_q_slope": ("q rotation slope (1 = invariant prototypes)", 1.0)}
        for ax, metric in zip(axes[0], panels):
            ylabel, line = labels[metric]
            ax.set_ylabel(ylabel)
            if line is not None:
                ax.axhline(line, color="grey", ls=":", lw=1)
            ax.set_xticks(range(len(shapes)), shapes)
        axes[0][0].legend(fontsize=7)
        fig.suptitle("recovery of the known rotation per seed", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plots.plt.close(fig)
    return [path]


# ---------------------------------------------------------------------------------------------
# VAE data efficiency
# ---------------------------------------------------------------------------------------------
def vae_cells(runs: Sequence[Run]) -> dict[str, dict[int, dict[int, dict]]]:
    """kind -> training-set size -> seed -> {test_iwlb, test_iwlb_median, best_step, stopped_step}."""
    cells: dict[str, dict[int, dict[int, dict]]] = {}
    for _, config, summary in runs:
        for kind in [k.split("/")[1] for k in summary if k.startswith("vae/") and k.endswith("/test_iwlb")]:
            figures = {k: summary[f"vae/{kind}/{k}"] for k in ("test_iwlb", "test_iwlb_median", "best_step", "stopped_step")}
            cells.setdefault(kind, {}).setdefault(int(config["data"]["num_train"]), {})[int(config["seed"])] = figures
    return cells


def _values(by_seed: dict[int, dict], seeds: Sequence[int], key: str = "test_iwlb") -> list[float]:
    return [by_seed[s][key] for s in seeds]


def vae_summary(runs: Sequence[Run]) -> dict[str, Any]:
    """The data-efficiency table: per kind and size the test bound over seeds (and its median over test images);
    paired differences between kinds per size; per kind the change from the largest to the smallest training
    set (smallest - largest, paired by seed: the cost of having less data). Pairs use the seeds both sides have."""
    cells = vae_cells(runs)
    by_model = {k: {n: interval(_values(s, sorted(s))) for n, s in sorted(by.items())} for k, by in cells.items()}
    medians = {k: {n: interval(_values(s, sorted(s), "test_iwlb_median")) for n, s in sorted(by.items())}
               for k, by in cells.items()}
    stops = {k: {n: [[s[i]["best_step"], s[i]["stopped_step"]] for i in sorted(s)] for n, s in sorted(by.items())}
             for k, by in cells.items()}
    diffs = {}
    for a, b in VAE_PAIRS:
        if a in cells and b in cells:
            diffs[f"{a}-{b}"] = {}
            for n in sorted(set(cells[a]) & set(cells[b])):
                seeds = sorted(set(cells[a][n]) & set(cells[b][n]))
                diffs[f"{a}-{b}"][n] = paired(_values(cells[a][n], seeds), _values(cells[b][n], seeds))
    size_effect = {}
    for kind, by in cells.items():
        if len(by) >= 2:
            small, large = min(by), max(by)
            seeds = sorted(set(by[small]) & set(by[large]))
            size_effect[kind] = {"from": large, "to": small,
                                 **paired(_values(by[small], seeds), _values(by[large], seeds))}
    return {"by_model": by_model, "paired_differences": diffs, "size_effect": size_effect,
            "median_over_images": medians, "best_and_stopped_step": stops}


def vae_frames(result: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(bound per kind and size, differences: between kinds per size and from the largest to the smallest size)."""
    bounds = pd.DataFrame([dict(model=kind, num_train=n, mean=r["mean"], se=r["se"], ci_lo=r["ci95"][0],
                                ci_hi=r["ci95"][1], seeds=r["n"], values=r["values"],
                                best_and_stopped_step=result["best_and_stopped_step"][kind][n])
                           for kind, by in result["by_model"].items() for n, r in by.items()])
    rows = [dict(difference=name, num_train=str(n), mean=r["mean"], ci_lo=r["ci95"][0], ci_hi=r["ci95"][1],
                 seeds=r["n"], significant=r["significant"])
            for name, by in result["paired_differences"].items() for n, r in by.items()]
    rows += [dict(difference=f"{kind}: smaller - larger set", num_train=f"{r['to']} - {r['from']}", mean=r["mean"],
                  ci_lo=r["ci95"][0], ci_hi=r["ci95"][1], seeds=r["n"], significant=r["significant"])
             for kind, r in result["size_effect"].items()]
    return bounds, pd.DataFrame(rows)


def vae_plot(result: dict[str, Any], path: str | pathlib.Path) -> list[pathlib.Path]:
    """Test bound against training-set size: mean over seeds with the 95% t-interval as error bars."""
    from analysis import plots

    path = pathlib.Path(path).with_suffix(".png")
    by_model = result["by_model"]
    with plots.plt.rc_context(plots.STYLE):
        fig, ax = plots.plt.subplots(figsize=(5.5, 3.8))
        for i, kind in enumerate(sorted(by_model, key=lambda k: list(VAE_NAMES).index(k) if k in VAE_NAMES else 99)):
            sizes = sorted(by_model[kind], key=int)
            xs = [int(s) * (1 + 0.03 * (i - 1)) for s in sizes]  # small offsets so the bars do not overlap
            means = [by_model[kind][s]["mean"] for s in sizes]
            err = [[m - by_model[kind][s]["ci95"][0] for s, m in zip(sizes, means)],
                   [by_model[kind][s]["ci95"][1] - m for s, m in zip(sizes, means)]]
            ax.errorbar(xs, means, yerr=err, marker="o", capsize=3, label=VAE_NAMES.get(kind, kind),
                        linestyle="--" if kind == "invvae" else "-")
        ax.set_xscale("log")
        sizes = sorted({int(s) for by in by_model.values() for s in by})
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel("training images")
        ax.set_ylabel("test log-likelihood bound (nats / image)")
        ax.set_title("IWLB on the same test pixels (mean, 95% t-interval over seeds)", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plots.plt.close(fig)
    return [path]
