"""The sampling-defaults study: quality vs steps per task, and the settings that score best per task.

A sampling sweep (sweeps/sampling.py) varies `sampling.<task>.<key>` columns and each point records
`eval/<task>/<score>` figures. For each task this module picks the rows that varied that task's keys,
summarises its primary score against the number of steps (grouped by the other varied keys), and
chooses the best settings by that score. The choice is written as config overrides
(`sampling.<task>.<key>`), ready for `mdiff train --config ... --config.sampling.t2i.guidance=...`.
"""

from __future__ import annotations

import pandas as pd

from analysis import schedules, table

# Task -> (score column suffix, "min" or "max"): the figure the defaults are chosen by.
PRIMARY_SCORES = {
    "text": ("gen_ppl", "min"),
    "t2i": ("accuracy", "max"),
    "i2t": ("token_accuracy", "max"),
    "t2s": ("wer", "min"),
    "s2t": ("wer", "min"),
}


def task_axes(df: pd.DataFrame, task: str) -> list[str]:
    prefix = f"sampling.{task}."
    return [c for c in df.columns if c.startswith(prefix)]


def task_rows(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """Complete rows in which this task's sampling keys were set (a chained sweep leaves others empty)."""
    axes = task_axes(df, task)
    score = f"eval/{task}/{PRIMARY_SCORES[task][0]}"
    if not axes or score not in df.columns:
        return df.iloc[0:0]
    done, _ = table.keep_complete(df)
    rows = done[done[axes].notna().any(axis=1)]
    return rows[pd.to_numeric(rows[score], errors="coerce").notna()]


def tasks_in(df: pd.DataFrame) -> list[str]:
    return [task for task in PRIMARY_SCORES if len(task_rows(df, task))]


def chosen_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """One row per task: the best observed settings by the task's primary score."""
    rows = []
    for task in tasks_in(df):
        group = task_rows(df, task)
        name, direction = PRIMARY_SCORES[task]
        scores = pd.to_numeric(group[f"eval/{task}/{name}"], errors="coerce")
        best = group.loc[scores.idxmin() if direction == "min" else scores.idxmax()]
        settings = {c.split(".", 2)[2]: best[c] for c in task_axes(df, task) if pd.notna(best[c])}
        rows.append(dict(task=task, score=name, goal=direction, best=float(scores.loc[best.name]),
                         n_points=len(group), run=best.get("name", ""), settings=settings))
    return pd.DataFrame(rows)


def default_overrides(chosen: pd.DataFrame) -> dict[str, object]:
    """{"sampling.<task>.<key>": value} for every chosen setting (plain Python values)."""
    out: dict[str, object] = {}
    for _, row in chosen.iterrows():
        for key, value in row.settings.items():
            out[f"sampling.{row.task}.{key}"] = value.item() if hasattr(value, "item") else value
    return out


def quality_vs_steps(df: pd.DataFrame) -> pd.DataFrame:
    """Primary score vs `sampling.<task>.steps` for each task whose steps varied, grouped by the other keys."""
    frames = []
    for task in tasks_in(df):
        rows = task_rows(df, task)
        steps = f"sampling.{task}.steps"
        if steps not in rows.columns or rows[steps].nunique() < 2:
            continue
        others = [c for c in task_axes(df, task) if c != steps and rows[c].nunique() > 1]
        rows = rows.assign(_group=rows[others].astype(str).agg(" ".join, axis=1) if others else "")
        score = f"eval/{task}/{PRIMARY_SCORES[task][0]}"
        summary = schedules.sampling_summary(rows, steps, [score], group_column="_group")
        frames.append(summary.assign(metric=f"{task} {PRIMARY_SCORES[task][0]}"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
