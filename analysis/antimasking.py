"""Anti-masking study: final loss with and without it at equal distinct data tokens, and gradient variance.

* `loss_summary`: per arm (off / on) and loss column, the mean over seeds with its 95% t-interval, and the
  paired difference on - off over the seeds both arms ran (t-interval of the per-seed differences).
* `read_gradient_variance`: SWEEP_DIR/gradient_variance.json as `python -m analysis.gradient_variance` wrote
  it (None when absent), flattened into one row per (regime, estimator).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pandas as pd

from analysis import table
from analysis.errors import AnalysisError
from analysis.gradient_variance import OUTPUT
from analysis.schedules import t_interval

COLUMN = "diffusion.anti_masking"
LOSSES = ("loss", "loss_text", "loss_image", "loss_audio")


def applies(df: pd.DataFrame) -> bool:
    return table.varying(df, COLUMN)


def _arm(value) -> str:
    return "on" if str(value).strip().lower() in ("true", "1", "1.0") else "off"


def loss_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Columns: loss_column, off/on means and intervals, paired difference (on - off) with its interval, n_pairs."""
    if COLUMN not in df.columns:
        raise AnalysisError(f"anti-masking analysis needs a {COLUMN!r} column")
    df, _ = table.keep_complete(df)
    df = df.assign(arm=df[COLUMN].map(_arm), seed=df["seed"] if "seed" in df.columns else np.arange(len(df)))
    rows = []
    for column in [c for c in LOSSES if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any()]:
        values = {arm: pd.to_numeric(g.set_index("seed")[column], errors="coerce").dropna() for arm, g in df.groupby("arm")}
        if set(values) != {"off", "on"}:
            continue
        row = dict(loss_column=column)
        for arm in ("off", "on"):
            mean, lo, hi = t_interval(values[arm].to_numpy(float))
            row |= {f"{arm}_mean": mean, f"{arm}_ci95": [lo, hi], f"{arm}_seeds": len(values[arm])}
        paired = (values["on"] - values["off"]).dropna()
        mean, lo, hi = t_interval(paired.to_numpy(float))
        rows.append(row | dict(diff_on_minus_off=mean, diff_ci95=[lo, hi], n_pairs=len(paired)))
    if not rows:
        raise AnalysisError("anti-masking analysis: no loss column with runs in both arms")
    return pd.DataFrame(rows)


def read_gradient_variance(sweep_dir: pathlib.Path) -> tuple[dict | None, pd.DataFrame]:
    path = pathlib.Path(sweep_dir) / OUTPUT
    if not path.is_file():
        return None, pd.DataFrame()
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AnalysisError(f"{path} is not valid JSON: {e.msg}") from None
    rows = [dict(regime=regime, estimator=name, **{k: v for k, v in est.items()})
            for regime, r in raw.get("regimes", {}).items() for name, est in r["estimators"].items()]
    return raw, pd.DataFrame(rows)
