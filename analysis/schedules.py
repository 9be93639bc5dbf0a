"""Noise-schedule study: per-modality loss by schedule, with intervals across seeds (Student t, 95%).

Schedule columns are found by name (`diffusion.schedule`, `diffusion.schedule.<modality>`, `schedule`);
several schedule columns are combined into one label (e.g. "text=linear, image=cosine"), or give the
schedule's own name when every modality uses it.

Beside the training table, the sweep directory can hold per-run measurements this module reads:
`mdiff nelbo` files (NELBO of a fixed model under several schedules: the invariance check, and a common
estimator for comparing the trained schedules) and `mdiff eval` files (sample quality per task).
"""

from __future__ import annotations

import json
import pathlib
import re

import numpy as np
import pandas as pd
from scipy import stats

from analysis import table
from analysis.errors import AnalysisError

_SCHEDULE = re.compile(r"^(?:diffusion\.schedule(?:\.\w+)?|schedule(?:_\w+)?)$")
LOSS_COLUMNS = ("loss", "loss_text", "loss_image", "loss_audio")


def schedule_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if _SCHEDULE.match(str(c)) and df[c].dropna().nunique() > 1]


def schedule_labels(df: pd.DataFrame, columns: list[str]) -> pd.Series:
    """One label per row: the schedule itself when every schedule column agrees, else "text=..., image=..."."""
    if len(columns) == 1:
        return df[columns[0]].astype(str)
    values = df[columns].astype(str)
    if (values.nunique(axis=1) == 1).all():
        return values.iloc[:, 0]
    short = [c.rsplit(".", 1)[-1] for c in columns]
    return df[columns].astype(str).apply(lambda row: ", ".join(f"{s}={v}" for s, v in zip(short, row)), axis=1)


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper); the interval collapses to the mean for a single seed."""
    values = values[np.isfinite(values)]
    mean = float(values.mean()) if len(values) else float("nan")
    if len(values) < 2:
        return mean, mean, mean
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return mean, float(mean - half), float(mean + half)


def schedule_summary(df: pd.DataFrame, losses: tuple[str, ...] = LOSS_COLUMNS, level: float = 0.95) -> pd.DataFrame:
    """One row per (schedule, loss column): mean, ci_lo, ci_hi, n_seeds."""
    columns = schedule_columns(df)
    if not columns:
        raise AnalysisError(
            "schedule analysis needs a varying schedule column (diffusion.schedule[.<modality>] or schedule); "
            f"columns present: {', '.join(map(str, df.columns))}"
        )
    df, _ = table.keep_complete(df)
    present = [c for c in losses if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any()]
    if not present:
        raise AnalysisError(f"schedule analysis: none of the loss columns {list(losses)} has values")
    labels = schedule_labels(df, columns)
    rows = []
    for label, group in df.groupby(labels):
        for column in present:
            mean, lo, hi = t_interval(pd.to_numeric(group[column], errors="coerce").to_numpy(float), level)
            rows.append(dict(schedule=label, loss_column=column, mean=mean, ci_lo=lo, ci_hi=hi, n_seeds=len(group)))
    return pd.DataFrame(rows)


def sampling_summary(df: pd.DataFrame, steps_column: str, metrics: list[str], group_column: str | None = None) -> pd.DataFrame:
    """Mean (and t-interval) of each metric per number of sampling steps (and group): sampling quality vs steps."""
    table.require_columns(df, [steps_column, *metrics], what="the sampling analysis")
    df, _ = table.keep_complete(df)
    keys = [steps_column] + ([group_column] if group_column else [])
    rows = []
    for key, group in df.groupby(keys):
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            mean, lo, hi = t_interval(pd.to_numeric(group[metric], errors="coerce").to_numpy(float))
            rows.append(dict(steps=float(key[0]), group=key[1] if group_column else "", metric=metric,
                             mean=mean, ci_lo=lo, ci_hi=hi, n=len(group)))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Schedule invariance at a fixed model (`mdiff nelbo` files inside the sweep directory)
# ---------------------------------------------------------------------------------------------
Z95 = float(stats.norm.ppf(0.975))


def invariance_table(sweep_dir: str | pathlib.Path) -> pd.DataFrame:
    """One row per (run, estimating schedule, modality) from every runs/<name>/ `mdiff nelbo` file.

    `diff` is the paired difference against the file's reference schedule (same data, same noise keys);
    `consistent` says whether its 95% interval (diff +- 1.96 SE) contains 0, as schedule invariance predicts.
    """
    from mdiff.eval.nelbo import NELBO_FILE

    rows = []
    for path in sorted(pathlib.Path(sweep_dir, "runs").glob(f"*/{NELBO_FILE}")):
        d = json.loads(path.read_text())
        for r in d["results"]:
            rows.append(dict(run=path.parent.name, step=d["step"], repeats=d["repeats"], reference=d["reference"],
                             schedule=r["schedule"], modality=r["modality"], nelbo=r["mean"], se=r["se"],
                             diff=r["diff_vs_reference"], diff_se=r["diff_se"]))
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    reference = df.schedule == df.reference
    df["z"] = np.where(reference, 0.0, df["diff"] / df.diff_se.where(df.diff_se > 0))
    df["consistent"] = np.where(reference, True, df.z.abs() <= Z95)
    return df


def invariance_verdict(table_: pd.DataFrame) -> str:
    """Plain summary: how many paired differences sit within their 95% interval of zero."""
    tested = table_[table_.schedule != table_.reference]
    if tested.empty:
        return "no schedule besides the reference was estimated"
    ok = int(tested.consistent.sum())
    worst = tested.loc[tested.z.abs().idxmax()]
    expected = 0.05 * len(tested)
    return (f"{ok} of {len(tested)} paired differences (schedule minus {worst.reference}, per modality and run) lie within "
            f"1.96 SE of zero (about {expected:.1f} outside expected by chance at 95%); largest |z| = {abs(worst.z):.2f} "
            f"({worst.schedule}, {worst.modality}, run {worst.run}: {worst['diff']:+.4f} +- {worst.diff_se:.4f} nats)")


def common_estimate(sweep_dir: str | pathlib.Path, df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Trained-schedule comparison on one estimator: each run's NELBO under its `mdiff nelbo` reference
    schedule (the same data and noise keys for every run), averaged over seeds per trained schedule."""
    inv = invariance_table(sweep_dir)
    columns = schedule_columns(df)
    if inv.empty or not columns:
        return pd.DataFrame()
    done, _ = table.keep_complete(df)
    labels = schedule_labels(done, columns).rename("trained").to_frame().assign(run=done["name"].astype(str))
    ref = inv[inv.schedule == inv.reference].merge(labels, on="run")
    rows = []
    for (trained, modality), group in ref.groupby(["trained", "modality"], sort=False):
        mean, lo, hi = t_interval(group.nelbo.to_numpy(float), level)
        rows.append(dict(trained=trained, modality=modality, estimator=group.reference.iloc[0], mean=mean, ci_lo=lo,
                         ci_hi=hi, n_seeds=len(group), mc_se=float(np.sqrt((group.se**2).mean() / len(group)))))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Sample quality per trained schedule (`mdiff eval` files inside the sweep directory)
# ---------------------------------------------------------------------------------------------
def sample_quality(sweep_dir: str | pathlib.Path, df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Primary score per task (analysis.sampling.PRIMARY_SCORES) with its shuffled floor, per trained
    schedule: mean and t-interval over the seeds whose runs/<name>/eval_samples.json exists."""
    from analysis.sampling import PRIMARY_SCORES
    from mdiff.eval.evaluate import EVAL_FILE

    columns = schedule_columns(df)
    if not columns:
        return pd.DataFrame()
    done, _ = table.keep_complete(df)
    labels = schedule_labels(done, columns)
    scores: list[dict] = []
    for name, label in zip(done["name"].astype(str), labels):
        path = pathlib.Path(sweep_dir, "runs", name, EVAL_FILE)
        if not path.is_file():
            continue
        for task, result in json.loads(path.read_text()).get("tasks", {}).items():
            score = next(((s, goal) for s, goal in PRIMARY_SCORES.get(task, ()) if s in result), None)
            if score:
                scores.append(dict(trained=label, task=task, score=score[0], better=score[1], value=result[score[0]],
                                   shuffled=result.get("shuffled", {}).get(score[0], np.nan)))
    if not scores:
        return pd.DataFrame()
    rows = []
    frame = pd.DataFrame(scores)
    for (trained, task, score, better), group in frame.groupby(["trained", "task", "score", "better"], sort=False):
        mean, lo, hi = t_interval(group.value.to_numpy(float), level)
        rows.append(dict(trained=trained, task=task, score=score, better=better, mean=mean, ci_lo=lo, ci_hi=hi,
                         shuffled_floor=float(group.shuffled.mean()), n_seeds=len(group)))
    return pd.DataFrame(rows)


def plot_invariance(inv: pd.DataFrame, out: str | pathlib.Path) -> list[pathlib.Path]:
    """One panel per modality: each schedule's paired NELBO difference from the reference (95% interval), per run."""
    from analysis import plots

    inv = inv[inv.groupby("run").schedule.transform("nunique") > 1]  # runs scored under one schedule only add zeros
    with plots.plt.rc_context(plots.STYLE):
        modalities = list(dict.fromkeys(inv.modality))
        schedules_ = list(dict.fromkeys(inv.schedule))
        runs = list(dict.fromkeys(inv.run))
        fig, axes = plots._figure(ncols=len(modalities), width=2.6 * len(modalities) + 1, height=3.0)
        for ax, modality in zip(axes[0], modalities):
            for k, run in enumerate(runs):
                g = inv[(inv.modality == modality) & (inv.run == run)].set_index("schedule").reindex(schedules_)
                x = np.arange(len(schedules_)) + (k - (len(runs) - 1) / 2) * 0.8 / max(len(runs), 1)
                ax.errorbar(x, g["diff"], yerr=Z95 * g.diff_se, fmt="o", ms=3, capsize=2, lw=0.8)
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_xticks(np.arange(len(schedules_)), schedules_, rotation=35, ha="right", fontsize=7)
            ax.set_title(f"{modality}")
        axes[0, 0].set_ylabel(f"NELBO - NELBO[{inv.reference.iloc[0]}] (nats/token)")
        fig.suptitle(f"Same model, different schedules: paired differences, 95% intervals ({len(runs)} run(s))", fontsize=9)
        return plots.save(fig, out)


def plot_sample_quality(quality: pd.DataFrame, out: str | pathlib.Path) -> list[pathlib.Path]:
    """One panel per task: primary sample score by trained schedule (95% t-interval over seeds), shuffled floor dashed."""
    from analysis import plots

    with plots.plt.rc_context(plots.STYLE):
        tasks = list(dict.fromkeys(quality.task))
        fig, axes = plots._figure(ncols=len(tasks), width=2.4 * len(tasks) + 1, height=3.0)
        for ax, task in zip(axes[0], tasks):
            g = quality[quality.task == task]
            x = np.arange(len(g))
            ax.errorbar(x, g["mean"], yerr=np.vstack([g["mean"] - g.ci_lo, g.ci_hi - g["mean"]]), fmt="o", capsize=2)
            ax.axhline(float(g.shuffled_floor.mean()), color="grey", ls="--", lw=0.8, label="shuffled floor")
            ax.set_xticks(x, g.trained, rotation=35, ha="right", fontsize=7)
            ax.set_title(f"{task}: {g.score.iloc[0]} ({'lower' if g.better.iloc[0] == 'min' else 'higher'} is better)", fontsize=8)
        axes[0, 0].legend(fontsize=6.5)
        return plots.save(fig, out)
