"""Batch-size analysis: final loss vs physical batch at fixed token horizons, naive vs SDE-reparameterised.

* `batch_curves`: the loss per (horizon, mode, batch), averaged over seeds, with the number of runs.
* `critical_batch`: B_crit, the largest batch before the loss rises more than `tolerance` (relative) above
  the flat region's best loss, interpolated in log B where the curve crosses the threshold; the matching
  S_crit = D / (L B_crit) when the sequence length L is known (DESIGN.md "Batch size").
* `fit_gamma`: gamma of kappa = (D_base / D)^gamma (B / B_base) from the loss-optimal kappa per horizon
  (vertex of a parabola in log kappa through the best point and its neighbours), by least squares of
  log kappa* on log(D_base / D), with a 95% t-interval.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis import table
from analysis.errors import AnalysisError

BATCH_COLUMNS = ("batch_physical", "train.batch", "batch")
HORIZON_COLUMNS = ("train.tokens", "tokens")
MODE_COLUMNS = ("optim.reparameterise", "reparameterise", "batch_mode", "mode")
SEQ_LEN_COLUMNS = ("data.seq_len", "seq_len")
KAPPA_COLUMNS = ("kappa", "optim.kappa")



def _columns(
    df: pd.DataFrame, what: str, name: str, column: str | None, candidates: tuple[str, ...], horizon_column: str | None, loss: str
) -> tuple[str, str]:
    """Resolve (`name` column, horizon column) from the table, or raise naming what is missing."""
    column = column or table.first_present(df, candidates)
    horizon_column = horizon_column or table.first_present(df, HORIZON_COLUMNS)
    if column is None or horizon_column is None:
        raise AnalysisError(
            f"{what} needs a {name} column (one of {', '.join(candidates)}) and a horizon column "
            f"(one of {', '.join(HORIZON_COLUMNS)}); columns present: {', '.join(map(str, df.columns))}"
        )
    if loss not in df.columns:
        raise AnalysisError(f"{df.attrs.get('source', 'results table')}: loss column {loss!r} does not exist")
    return column, horizon_column

def _truthy(value: Any) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes", "sde", "reparameterised", "reparameterized")


def mode_labels(df: pd.DataFrame, column: str | None) -> pd.Series:
    """'reparameterised' / 'naive' for boolean-like mode columns; other labels are kept as they are."""
    if column is None:
        return pd.Series("runs", index=df.index)
    values = df[column]
    if set(values.astype(str).str.lower().unique()) <= {"true", "false", "1", "0", "1.0", "0.0"}:
        return values.map(lambda v: "reparameterised" if _truthy(v) else "naive")
    return values.astype(str)


def batch_curves(
    df: pd.DataFrame,
    loss: str = "loss",
    *,
    batch_column: str | None = None,
    horizon_column: str | None = None,
    mode_column: str | None = None,
) -> pd.DataFrame:
    """Columns: horizon, mode, batch, loss (mean over seeds), loss_std, n_runs; sorted by batch."""
    batch_column, horizon_column = _columns(df, "batch analysis", "batch", batch_column, BATCH_COLUMNS, horizon_column, loss)
    df, _ = table.keep_complete(df)
    mode_column = mode_column or table.first_present(df, MODE_COLUMNS)
    frame = pd.DataFrame(
        dict(
            horizon=table.positive_column(df, horizon_column),
            mode=mode_labels(df, mode_column).to_numpy(),
            batch=table.positive_column(df, batch_column),
            loss=table.finite_column(df, loss),
        )
    )
    out = frame.groupby(["horizon", "mode", "batch"], as_index=False).agg(
        loss=("loss", "mean"), loss_std=("loss", "std"), n_runs=("loss", "size")
    )
    return out.sort_values(["horizon", "mode", "batch"]).reset_index(drop=True)


@dataclasses.dataclass
class CriticalBatch:
    b_crit: float | None  # None when the loss never leaves the flat region (B_crit beyond the sweep)
    reference_loss: float
    threshold: float
    s_crit: float | None


def critical_batch(
    batch: np.ndarray,
    loss: np.ndarray,
    *,
    tolerance: float = 0.02,
    horizon: float | None = None,
    seq_len: float | None = None,
) -> CriticalBatch:
    """B_crit: the loss first exceeds (1 + tolerance) x the best loss at batches up to the best point."""
    order = np.argsort(batch)
    b, y = np.asarray(batch, float)[order], np.asarray(loss, float)[order]
    best = int(np.argmin(y))
    reference = float(y[best])
    threshold = reference * (1 + tolerance)
    above = np.flatnonzero((y > threshold) & (np.arange(len(y)) > best))
    if not len(above):
        return CriticalBatch(None, reference, threshold, None)
    j = int(above[0])
    # Interpolate in log B between the last point under the threshold and the first above it.
    x0, x1, y0, y1 = np.log(b[j - 1]), np.log(b[j]), y[j - 1], y[j]
    frac = 1.0 if y1 == y0 else float(np.clip((threshold - y0) / (y1 - y0), 0, 1))
    b_crit = float(np.exp(x0 + frac * (x1 - x0)))
    s_crit = horizon / (seq_len * b_crit) if horizon and seq_len else None
    return CriticalBatch(b_crit, reference, threshold, s_crit)


def critical_batches(
    curves: pd.DataFrame, *, tolerance: float = 0.02, seq_len: float | None = None
) -> pd.DataFrame:
    """B_crit and S_crit per (horizon, mode) curve."""
    rows = []
    for (horizon, mode), g in curves.groupby(["horizon", "mode"]):
        if len(g) < 2:
            continue
        cb = critical_batch(g.batch.to_numpy(), g.loss.to_numpy(), tolerance=tolerance, horizon=horizon, seq_len=seq_len)
        rows.append(dict(horizon=horizon, mode=mode, b_crit=cb.b_crit, s_crit=cb.s_crit,
                         best_loss=cb.reference_loss, threshold=cb.threshold))
    return pd.DataFrame(rows)


def loss_optimal_kappa(kappa: np.ndarray, loss: np.ndarray) -> float:
    """argmin of loss over log kappa: vertex of the parabola through the best point and its neighbours
    (the best point itself at an edge of the sweep or when the parabola is flat or inverted)."""
    order = np.argsort(kappa)
    k, y = np.log(np.asarray(kappa, float)[order]), np.asarray(loss, float)[order]
    i = int(np.argmin(y))
    if i == 0 or i == len(y) - 1:
        return float(np.exp(k[i]))
    coef = np.polyfit(k[i - 1 : i + 2], y[i - 1 : i + 2], 2)
    if coef[0] <= 0:
        return float(np.exp(k[i]))
    return float(np.exp(np.clip(-coef[1] / (2 * coef[0]), k[i - 1], k[i + 1])))


@dataclasses.dataclass
class GammaFit:
    gamma: float
    ci95: list[float]
    intercept: float  # log kappa* at D = D_base (0 when the base point is right)
    optima: pd.DataFrame  # horizon, kappa_opt

    def to_json(self) -> dict[str, Any]:
        return dict(gamma=self.gamma, ci95=self.ci95, intercept=self.intercept,
                    optima=self.optima.to_dict(orient="records"))


def fit_gamma(
    df: pd.DataFrame,
    loss: str = "loss",
    *,
    base_tokens: float | None = None,
    kappa_column: str | None = None,
    horizon_column: str | None = None,
    batch_column: str | None = None,
    base_batch: float | None = None,
) -> GammaFit:
    """gamma from the loss-optimal kappa at each token horizon D: log kappa* = gamma log(D_base / D) + c.

    When the physical batch varies, kappa* is first divided by B / B_base so only the horizon part remains.
    """
    kappa_column, horizon_column = _columns(df, "gamma fit", "kappa", kappa_column, KAPPA_COLUMNS, horizon_column, loss)
    df, _ = table.keep_complete(df)
    kappa = table.positive_column(df, kappa_column)
    horizon = table.positive_column(df, horizon_column)
    y = table.finite_column(df, loss)
    if batch_column and batch_column in df.columns:
        batch = table.positive_column(df, batch_column)
        kappa = kappa / (batch / (base_batch or np.median(batch)))
    rows = []
    for d in np.unique(horizon):
        sel = horizon == d
        if len(np.unique(kappa[sel])) >= 3:
            rows.append(dict(horizon=float(d), kappa_opt=loss_optimal_kappa(kappa[sel], y[sel])))
    if len(rows) < 3:
        raise AnalysisError(f"gamma fit needs >= 3 horizons with >= 3 kappa values each, got {len(rows)}")
    optima = pd.DataFrame(rows)
    d_base = base_tokens or float(np.exp(np.log(optima.horizon).mean()))
    x = np.log(d_base / optima.horizon.to_numpy())
    z = np.log(optima.kappa_opt.to_numpy())
    res = stats.linregress(x, z)
    half = stats.t.ppf(0.975, len(x) - 2) * res.stderr
    return GammaFit(float(res.slope), [float(res.slope - half), float(res.slope + half)], float(res.intercept), optima)


def synthetic_batch_table(
    horizons: tuple[float, ...] = (1e6, 4e6),
    batches: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512),
    *,
    seq_len: int = 128,
    s_crit: float = 100.0,
    base_batch: int = 32,
    seed: int = 0,
    noise: float = 0.002,
) -> pd.DataFrame:
    """Loss flat in B for reparameterised runs until S = D / (L B) drops below S_crit, then rising; naive
    runs (fixed hyperparameters) drift with B / B_base in both directions. For tests and demos."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in horizons:
        base = 3.0 - 0.1 * np.log10(d)
        for b in batches:
            steps = d / (seq_len * b)
            excess = 0.3 * max(0.0, np.log(s_crit / steps))
            for mode in (True, False):
                drift = 0.0 if mode else 0.05 * abs(np.log2(b / base_batch))
                loss = base + excess + drift + noise * rng.standard_normal()
                rows.append({"train.tokens": d, "train.batch": b, "optim.reparameterise": mode,
                             "data.seq_len": seq_len, "loss": loss, "status": "complete"})
    return pd.DataFrame(rows)
