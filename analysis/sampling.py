"""The sampling-defaults study: quality vs steps per task, and the settings that score best per task.

A sampling sweep (sweeps/sampling.py) varies `sampling.<task>.<key>` columns and each point records
`eval/<task>/<score>` figures. For each task this module picks the rows that varied that task's keys,
summarises its primary score against the number of steps (grouped by the other varied keys), and
chooses the best settings by that score. The choice is written as config overrides
(`sampling.<task>.<key>`), ready for `mdiff train --config ... --config.sampling.t2i.guidance=...`
or `mdiff sample --defaults report/sampling_defaults.json`.
"""

from __future__ import annotations

import pandas as pd

from analysis import schedules, table

# Task -> candidate (score column suffix, "min" or "max"), the first one present is the figure the
# defaults are chosen by: the embedded dataset's evaluators report perplexity / judge accuracy / WER;
# runs on the synthetic dataset (no tokenizers) report token accuracy for the paired tasks.
PRIMARY_SCORES: dict[str, tuple[tuple[str, str], ...]] = {
    "text": (("gen_ppl", "min"),),
    "t2i": (("accuracy", "max"), ("token_accuracy", "max")),
    "i2t": (("wer", "min"), ("token_accuracy", "max")),
    "t2s": (("wer", "min"), ("token_accuracy", "max")),
    "s2t": (("wer", "min"), ("token_accuracy", "max")),
}

# An n-gram perplexity rewards repetition: greedy or confidence-first text that repeats common tokens
# scores a low gen_ppl while being degenerate. A text setting qualifies only if its samples' token
# entropy is at least real text's (the evaluator's ceiling) minus this many bits; generative
# perplexity is only comparable at matched entropy.
ENTROPY_TOLERANCE_BITS = 0.25
ENTROPY, ENTROPY_CEILING = "eval/text/entropy_bits", "eval/text/ceiling/entropy_bits"


def primary_score(df: pd.DataFrame, task: str) -> tuple[str, str] | None:
    """(score name, "min" | "max") of the first of the task's candidate scores the table holds."""
    for name, goal in PRIMARY_SCORES[task]:
        if f"eval/{task}/{name}" in df.columns:
            return name, goal
    return None


def task_axes(df: pd.DataFrame, task: str) -> list[str]:
    prefix = f"sampling.{task}."
    return [c for c in df.columns if c.startswith(prefix)]


def task_rows(df: pd.DataFrame, task: str) -> pd.DataFrame:
    """Complete rows in which this task's sampling keys were set (a chained sweep leaves others empty)."""
    axes = task_axes(df, task)
    primary = primary_score(df, task)
    if not axes or primary is None:
        return df.iloc[0:0]
    done, _ = table.keep_complete(df)
    rows = done[done[axes].notna().any(axis=1)]
    return rows[pd.to_numeric(rows[f"eval/{task}/{primary[0]}"], errors="coerce").notna()]


def tasks_in(df: pd.DataFrame) -> list[str]:
    return [task for task in PRIMARY_SCORES if len(task_rows(df, task))]


def qualifying(rows: pd.DataFrame, task: str) -> pd.Series:
    """Which rows may be chosen: text rows whose entropy is near real text's (all rows otherwise)."""
    if task != "text" or ENTROPY not in rows.columns or ENTROPY_CEILING not in rows.columns:
        return pd.Series(True, index=rows.index)
    entropy = pd.to_numeric(rows[ENTROPY], errors="coerce")
    ceiling = pd.to_numeric(rows[ENTROPY_CEILING], errors="coerce")
    return (entropy >= ceiling - ENTROPY_TOLERANCE_BITS) | ceiling.isna()


def chosen_defaults(df: pd.DataFrame) -> pd.DataFrame:
    """One row per task: the best observed settings by the task's primary score (ties: fewest steps).

    `qualified` counts the rows that passed the degeneracy guard (`qualifying`); if none did, the
    choice is made among all rows and `qualified` is 0, so the table shows the guard failed.
    """
    rows = []
    for task in tasks_in(df):
        group = task_rows(df, task)
        name, direction = primary_score(df, task)
        ok = qualifying(group, task)
        pool = group[ok] if ok.any() else group
        steps = f"sampling.{task}.steps"
        order = pool.assign(_score=pd.to_numeric(pool[f"eval/{task}/{name}"], errors="coerce"),
                            _steps=pd.to_numeric(pool[steps], errors="coerce") if steps in pool.columns else 0)
        order = order.sort_values(["_score", "_steps"], ascending=[direction == "min", True], kind="stable")
        best = order.iloc[0]
        settings = {c.split(".", 2)[2]: best[c] for c in task_axes(df, task) if pd.notna(best[c])}
        rows.append(dict(task=task, score=name, goal=direction, best=float(best["_score"]), n_points=len(group),
                         qualified=int(ok.sum()), run=best.get("name", ""), settings=settings))
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
        rows = rows[rows[steps].notna()]
        others = [c for c in task_axes(df, task) if c != steps and rows[c].nunique() > 1]
        rows = rows.assign(_group=rows[others].astype(str).agg(" ".join, axis=1) if others else "")
        name = primary_score(df, task)[0]
        summary = schedules.sampling_summary(rows, steps, [f"eval/{task}/{name}"], group_column="_group")
        frames.append(summary.assign(metric=f"{task} {name}"))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
