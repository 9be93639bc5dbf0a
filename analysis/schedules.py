"""Noise-schedule study: per-modality loss by schedule, with intervals across seeds (Student t, 95%).

Schedule columns are found by name (`diffusion.schedule`, `diffusion.schedule.<modality>`, `schedule`);
several schedule columns are combined into one label (e.g. "text=linear, image=cosine").
"""

from __future__ import annotations

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
    if len(columns) == 1:
        return df[columns[0]].astype(str)
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
