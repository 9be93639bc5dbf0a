"""Batch-size analysis: final loss vs physical batch at fixed token horizons, naive vs SDE-reparameterised.

Every quantity comes from the seeds, never from one run:

* `batch_curves`: per (horizon, mode, batch) the mean loss over seeds, its standard error and 95% Student t
  interval, and the number of runs.
* `critical_batch`: B_crit of one reparameterised curve by a noise-aware rule. Walking up in B, a point joins
  the *flat level* (the runs of the batches so far) unless a one-sided Welch t-test says its runs lie above
  it (level `alpha` over the whole curve, Bonferroni-divided among its tests, so a flat curve gets a false
  B_crit with probability <= alpha): the first such batch is where the loss leaves the flat level, so B_crit lies in
  (last flat batch, first rising batch], reported as that bracket and its geometric midpoint. A point
  significantly *below* the flat level means the curve was not flat there: the flat level restarts at it
  (noted). No rise within the sweep gives B_crit > the largest batch. S_crit = D / (L B_crit).
  B_crit is only defined for reparameterised curves: naive curves get their loss-optimal batch instead.
* `fit_gamma`: gamma of kappa = (D_base / D)^gamma (B / B_base), from one of two sources, never pooled:
  - `kappa`: reparameterised runs that vary kappa at fixed (B, D) (e.g. a sweep of optim.gamma or
    optim.batch_base): the loss-optimal kappa per (B, D), then log(kappa* B_base / B) = gamma log(D_base / D) + c;
  - `naive`: naive runs (base values at every batch) are best where their implicit kappa = 1 equals the
    optimal one, B* = B_base (D / D_base)^gamma, so gamma is the slope of log B*_naive against log D.
  An optimum at the edge of its grid is excluded (only a bound), and the interval is a percentile bootstrap
  over seeds (runs resampled within each grid point). The configured gamma (0.44 by default) and S_crit
  (`optim.steps_critical`) are starting values: `compare_configured` sets them beside what was measured.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from analysis import table
from analysis.errors import AnalysisError
from analysis.schedules import t_interval

BATCH_COLUMNS = ("batch_physical", "train.batch", "batch")
HORIZON_COLUMNS = ("train.tokens", "tokens")
MODE_COLUMNS = ("optim.reparameterise", "reparameterise", "batch_mode", "mode")
SEQ_LEN_COLUMNS = ("data.seq_len", "seq_len")
KAPPA_COLUMNS = ("kappa", "optim.kappa")
GAMMA_COLUMNS = ("optim.gamma", "gamma")
STEPS_CRITICAL_COLUMNS = ("optim.steps_critical", "steps_critical")
NAIVE, REPARAMETERISED = "naive", "reparameterised"
ALPHA = 0.05  # one-sided test level of the B_crit rule


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
    return str(value).strip().lower() in ("true", "1", "1.0", "yes", "sde", "reparameterised", "reparameterized")


def mode_labels(df: pd.DataFrame, column: str | None) -> pd.Series:
    """'reparameterised' / 'naive' for boolean-like mode columns; other labels are kept as they are."""
    if column is None:
        return pd.Series("runs", index=df.index)
    values = df[column]
    if set(values.astype(str).str.lower().unique()) <= {"true", "false", "1", "0", "1.0", "0.0"}:
        return values.map(lambda v: REPARAMETERISED if _truthy(v) else NAIVE)
    return values.astype(str)


def run_table(
    df: pd.DataFrame,
    loss: str = "loss",
    *,
    batch_column: str | None = None,
    horizon_column: str | None = None,
    mode_column: str | None = None,
) -> pd.DataFrame:
    """One row per complete run: horizon, mode, batch, loss (plus kappa when the table has it)."""
    batch_column, horizon_column = _columns(df, "batch analysis", "batch", batch_column, BATCH_COLUMNS, horizon_column, loss)
    df, _ = table.keep_complete(df)
    if df.empty:
        raise AnalysisError("batch analysis: no complete runs")
    mode_column = mode_column or table.first_present(df, MODE_COLUMNS)
    frame = pd.DataFrame(
        dict(
            horizon=table.positive_column(df, horizon_column),
            mode=mode_labels(df, mode_column).to_numpy(),
            batch=table.positive_column(df, batch_column),
            loss=table.finite_column(df, loss),
        ),
        index=df.index,
    )
    kappa_column = table.first_present(df, KAPPA_COLUMNS)
    if kappa_column is not None:
        frame["kappa"] = pd.to_numeric(df[kappa_column], errors="coerce").to_numpy(float)
    return frame


def batch_curves(df: pd.DataFrame, loss: str = "loss", **columns: str | None) -> pd.DataFrame:
    """Columns: horizon, mode, batch, loss (mean over seeds), loss_std, sem, ci_lo, ci_hi (95% t), n_runs."""
    runs = run_table(df, loss, **columns)
    rows = []
    for (horizon, mode, b), g in runs.groupby(["horizon", "mode", "batch"]):
        y = g.loss.to_numpy(float)
        mean, lo, hi = t_interval(y)
        std = float(y.std(ddof=1)) if len(y) > 1 else float("nan")
        rows.append(dict(horizon=horizon, mode=mode, batch=b, loss=mean, loss_std=std,
                         sem=std / math.sqrt(len(y)) if len(y) > 1 else float("nan"), ci_lo=lo, ci_hi=hi, n_runs=len(y)))
    return pd.DataFrame(rows).sort_values(["horizon", "mode", "batch"]).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# B_crit: the loss leaves the flat level by more than its standard error allows
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class CriticalBatch:
    b_crit: float | None  # geometric midpoint of (b_lo, b_hi]; None when the loss never leaves the flat level
    b_lo: float  # the largest batch still on the flat level (B_crit > b_lo)
    b_hi: float | None  # the first batch whose loss is above the flat level (B_crit <= b_hi)
    flat_level: float  # mean loss of the flat level's runs
    flat_batches: list[float]
    p_value: float | None  # of the rise at b_hi
    s_crit: float | None = None  # D / (L B_crit), with its bracket
    s_crit_bracket: list[float] | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def welch_greater(a: np.ndarray, b: np.ndarray) -> float:
    """One-sided Welch t-test p-value for mean(a) > mean(b) (each sample needs >= 2 runs)."""
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:  # no spread in either sample: decide on the means alone
        return 0.0 if a.mean() > b.mean() else 1.0
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    return float(stats.t.sf((a.mean() - b.mean()) / math.sqrt(va + vb), df))


def critical_batch(
    batch: np.ndarray, loss: np.ndarray, *, alpha: float = ALPHA, horizon: float | None = None, seq_len: float | None = None
) -> CriticalBatch:
    """B_crit from per-run (batch, loss) of one reparameterised curve (see the module docstring)."""
    batch, loss = np.asarray(batch, float), np.asarray(loss, float)
    batches = np.unique(batch)
    runs = [loss[batch == b] for b in batches]
    few = [f"{b:g}" for b, r in zip(batches, runs) if len(r) < 2]
    if few:
        raise AnalysisError(f"B_crit needs >= 2 seeds at every batch (a standard error); batch {', '.join(few)} has 1")
    if len(batches) < 2:
        raise AnalysisError("B_crit needs >= 2 batch sizes on the curve")
    notes: list[str] = []
    flat = [0]
    each = alpha / (len(batches) - 1)  # Bonferroni: a false B_crit on a flat curve has probability <= alpha
    for j in range(1, len(batches)):
        level = np.concatenate([runs[i] for i in flat])
        p_up = welch_greater(runs[j], level)
        if p_up < each:
            return _finish(batches, runs, flat, j, p_up, notes, horizon, seq_len)
        if welch_greater(level, runs[j]) < each:
            notes.append(f"loss falls significantly from B={batches[flat[-1]]:g} to B={batches[j]:g}: not flat below; "
                         f"the flat level restarts at B={batches[j]:g}")
            flat = [j]
        else:
            flat.append(j)
    notes.append(f"the loss never leaves the flat level: B_crit > {batches[-1]:g} (beyond the sweep)")
    return _finish(batches, runs, flat, None, None, notes, horizon, seq_len)


def _finish(batches, runs, flat, j, p, notes, horizon, seq_len) -> CriticalBatch:
    level = float(np.concatenate([runs[i] for i in flat]).mean())
    b_lo = float(batches[flat[-1]]) if j is None else float(batches[j - 1])
    b_hi = None if j is None else float(batches[j])
    b_crit = None if b_hi is None else float(math.sqrt(b_lo * b_hi))
    out = CriticalBatch(b_crit, b_lo, b_hi, level, [float(batches[i]) for i in flat], p, notes=notes)
    if b_crit is not None and horizon and seq_len:
        out.s_crit = horizon / (seq_len * b_crit)
        out.s_crit_bracket = [horizon / (seq_len * b_hi), horizon / (seq_len * b_lo)]
    return out


def critical_batches(
    runs: pd.DataFrame, *, alpha: float = ALPHA, seq_len: float | None = None, steps_critical: float | None = None
) -> pd.DataFrame:
    """B_crit and S_crit per reparameterised horizon (`runs` from `run_table`); naive curves are skipped.

    With `steps_critical` (the configured S_crit), `b_crit_configured` = D / (L S_crit) sits beside the measurement.
    """
    rows = []
    for horizon, g in runs[runs["mode"] == REPARAMETERISED].groupby("horizon"):
        cb = critical_batch(g.batch.to_numpy(), g.loss.to_numpy(), alpha=alpha, horizon=horizon, seq_len=seq_len)
        row = dict(horizon=horizon, b_crit=cb.b_crit, b_crit_bracket=[cb.b_lo, cb.b_hi], s_crit=cb.s_crit,
                   s_crit_bracket=cb.s_crit_bracket, flat_level=cb.flat_level, p_rise=cb.p_value, note="; ".join(cb.notes))
        if steps_critical and seq_len:
            row["b_crit_configured"] = horizon / (seq_len * steps_critical)
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Optima on a log grid (naive batch optimum; loss-optimal kappa)
# ---------------------------------------------------------------------------------------------
def log_vertex(x: np.ndarray, y: np.ndarray) -> tuple[float, bool]:
    """(argmin over log x, at_edge): the vertex of the parabola through the best point and its neighbours;
    at an edge of the grid (or a flat/inverted parabola) the best point itself, flagged when at the edge."""
    order = np.argsort(x)
    lx, yy = np.log(np.asarray(x, float)[order]), np.asarray(y, float)[order]
    i = int(np.argmin(yy))
    if i == 0 or i == len(yy) - 1:
        return float(np.exp(lx[i])), True
    coef = np.polyfit(lx[i - 1 : i + 2], yy[i - 1 : i + 2], 2)
    if coef[0] <= 0:
        return float(np.exp(lx[i])), False
    return float(np.exp(np.clip(-coef[1] / (2 * coef[0]), lx[i - 1], lx[i + 1]))), False


def _grid_optimum(g: pd.DataFrame, x: str) -> tuple[float, bool]:
    means = g.groupby(x).loss.mean()
    return log_vertex(means.index.to_numpy(float), means.to_numpy(float))


def naive_optima(runs: pd.DataFrame) -> pd.DataFrame:
    """The loss-optimal physical batch per naive horizon, flagged when it sits at the edge of the batch grid."""
    rows = []
    for horizon, g in runs[runs["mode"] == NAIVE].groupby("horizon"):
        if g.batch.nunique() >= 3:
            b, edge = _grid_optimum(g, "batch")
            rows.append(dict(horizon=horizon, batch_opt=b, at_edge=edge, best_loss=float(g.groupby("batch").loss.mean().min())))
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# gamma
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GammaFit:
    source: str  # "kappa" (kappa varied at fixed (B, D)) or "naive" (naive optimum across horizons)
    gamma: float
    ci95: list[float]  # percentile bootstrap over seeds
    intercept: float
    optima: pd.DataFrame  # horizon, x, y (the fitted log-log pairs: x = log(D_base / D) or log D, y = log optimum)
    excluded: list[str]
    n_bootstrap: int
    gamma_configured: float | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(source=self.source, gamma=self.gamma, ci95=self.ci95, intercept=self.intercept,
                    optima=self.optima.to_dict(orient="records"), excluded=self.excluded,
                    n_bootstrap=self.n_bootstrap, gamma_configured=self.gamma_configured)


def _point_means(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return runs.groupby(keys, as_index=False).loss.mean()


def _optima_kappa(means: pd.DataFrame, base_tokens: float, base_batch: float) -> tuple[pd.DataFrame, list[str]]:
    """Loss-optimal kappa per (D, B) from per-point mean losses (columns horizon, batch, kappa, loss)."""
    rows, excluded = [], []
    for (horizon, b), g in means.groupby(["horizon", "batch"]):
        if len(g) < 3:
            continue
        k, edge = log_vertex(g.kappa.to_numpy(float), g.loss.to_numpy(float))
        if edge:
            excluded.append(f"D={horizon:g}, B={b:g}: loss-optimal kappa {k:.3g} at the edge of its grid (only a bound)")
            continue
        rows.append(dict(horizon=horizon, batch=b, optimum=k, x=math.log(base_tokens / horizon), y=math.log(k * base_batch / b)))
    return pd.DataFrame(rows), excluded


def _optima_naive(means: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Loss-optimal batch per horizon from per-point mean losses (columns horizon, batch, loss)."""
    rows, excluded = [], []
    for horizon, g in means.groupby("horizon"):
        if len(g) < 3:
            continue
        b, edge = log_vertex(g.batch.to_numpy(float), g.loss.to_numpy(float))
        if edge:
            excluded.append(f"D={horizon:g}: naive loss-optimal batch {b:g} at the edge of the batch grid (only a bound)")
            continue
        rows.append(dict(horizon=horizon, optimum=b, x=math.log(horizon), y=math.log(b)))
    return pd.DataFrame(rows), excluded


def _slope(optima: pd.DataFrame) -> tuple[float, float]:
    if optima.horizon.nunique() < 2:
        raise AnalysisError("needs interior optima at >= 2 horizons")
    slope, intercept = np.polyfit(optima.x.to_numpy(float), optima.y.to_numpy(float), 1)
    return float(slope), float(intercept)


def fit_gamma(
    df: pd.DataFrame,
    loss: str = "loss",
    *,
    source: str = "auto",
    base_tokens: float | None = None,
    base_batch: float | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    gamma_configured: float | None = None,
    **columns: str | None,
) -> GammaFit:
    """gamma from `source` "kappa" or "naive" ("auto": kappa when some (B, D) has >= 3 kappa values, else naive).

    Raises AnalysisError naming why when the data cannot give gamma (no interior optimum at 2 horizons ...).
    """
    runs = run_table(df, loss, **columns)
    if source == "auto":
        has_kappa_grid = "kappa" in runs and (
            runs[runs["mode"] != NAIVE].groupby(["horizon", "batch"]).kappa.nunique().max() >= 3
        )
        source = "kappa" if has_kappa_grid else "naive"
    if source == "kappa":
        runs = runs[runs["mode"] != NAIVE]
        if "kappa" not in runs or runs.kappa.isna().any():
            raise AnalysisError("gamma from kappa needs a kappa column with a value for every reparameterised run")
        base_tokens = base_tokens or float(np.exp(np.log(runs.horizon).mean()))
        base_batch = base_batch or float(np.exp(np.log(runs.batch).mean()))

        keys = ["horizon", "batch", "kappa"]

        def optima_of(m):
            return _optima_kappa(m, base_tokens, base_batch)
    elif source == "naive":
        runs, keys, optima_of = runs[runs["mode"] == NAIVE], ["horizon", "batch"], _optima_naive
    else:
        raise AnalysisError(f"gamma source {source!r}: allowed kappa, naive, auto")
    optima, excluded = optima_of(_point_means(runs, keys))
    if optima.empty or optima.horizon.nunique() < 2:
        why = "; ".join(excluded) or f"fewer than 2 horizons with >= 3 grid values ({source} runs)"
        raise AnalysisError(f"gamma not identifiable from the {source} runs: {why}")
    gamma, intercept = _slope(optima)
    single = runs.groupby(keys).loss.size().min() < 2
    boots = np.asarray([]) if single else _bootstrap(runs, keys, optima_of, n_bootstrap, seed)
    ci = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))] if len(boots) >= 20 else [float("nan")] * 2
    if single:
        excluded.append("a grid point has a single run: no interval (the bootstrap over seeds needs >= 2 per point)")
    elif len(boots) < 0.9 * n_bootstrap:
        excluded.append(f"{n_bootstrap - len(boots)} of {n_bootstrap} bootstrap resamples had an optimum at the grid edge")
    return GammaFit(source, gamma, ci, intercept, optima, excluded, len(boots), gamma_configured)


def _bootstrap(runs: pd.DataFrame, keys: list[str], optima_of, n: int, seed: int) -> np.ndarray:
    """gamma refitted on runs resampled with replacement within each grid point; edge optima drop a resample."""
    rng = np.random.default_rng(seed)
    means = _point_means(runs, keys)
    samples = [g.loss.to_numpy(float) for _, g in runs.groupby(keys)]  # same order as `means`
    draws = np.stack([y[rng.integers(0, len(y), (n, len(y)))].mean(axis=1) for y in samples], axis=1) if n else []
    out = []
    for row in draws:
        optima, excluded = optima_of(means.assign(loss=row))
        if excluded or optima.empty or optima.horizon.nunique() < 2:
            continue
        out.append(_slope(optima)[0])
    return np.asarray(out)


def configured_value(df: pd.DataFrame, candidates: tuple[str, ...]) -> float | None:
    """The one value of a configured starting value (gamma, S_crit) in the table, or None (absent or mixed)."""
    column = table.first_present(df, candidates)
    if column is None:
        return None
    values = pd.to_numeric(df[column], errors="coerce").dropna().unique()
    return float(values[0]) if len(values) == 1 else None


def compare_configured(crit: pd.DataFrame, gamma: GammaFit | None, *, gamma_configured: float | None,
                       steps_critical: float | None, seq_len: float | None = None) -> pd.DataFrame:
    """One row per starting value: configured vs measured (with its interval), and whether they agree."""
    rows = []
    if gamma_configured is not None:
        if gamma is None:
            rows.append(dict(quantity="gamma", configured=gamma_configured, measured=None, interval=None, agrees="not measured"))
        else:
            lo, hi = gamma.ci95
            agrees = "unknown (no interval)" if not np.isfinite(lo) else ("yes" if lo <= gamma_configured <= hi else "no")
            rows.append(dict(quantity=f"gamma ({gamma.source} runs)", configured=gamma_configured, measured=gamma.gamma,
                             interval=gamma.ci95, agrees=agrees))
    if steps_critical is not None:
        for _, row in crit.iterrows():
            if row.b_crit is None or pd.isna(row.b_crit) or not isinstance(row.s_crit_bracket, list):
                b_lo = row.b_crit_bracket[0]
                rows.append(dict(quantity=f"S_crit at D={row.horizon:.4g}", configured=steps_critical, measured=None,
                                 interval=None, agrees=f"no rise: B_crit > {b_lo:g}, S_crit < {row.horizon / (seq_len * b_lo):.3g}"
                                 if seq_len else "no rise within the sweep"))
                continue
            lo, hi = row.s_crit_bracket
            rows.append(dict(quantity=f"S_crit at D={row.horizon:.4g}", configured=steps_critical, measured=row.s_crit,
                             interval=[lo, hi], agrees="yes" if lo <= steps_critical <= hi else "no"))
    return pd.DataFrame(rows)


def synthetic_batch_table(
    horizons: tuple[float, ...] = (1e6, 4e6),
    batches: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512),
    *,
    seq_len: int = 128,
    s_crit: float = 100.0,
    base_batch: int = 32,
    base_tokens: float | None = None,
    gamma: float = 0.44,
    seeds: int = 3,
    seed: int = 0,
    noise: float = 0.002,
    rise: float = 0.3,
    drift: float = 0.05,
) -> pd.DataFrame:
    """Known answers for tests and demos. Reparameterised runs: loss flat in B until S = D / (L B) drops
    below S_crit, then rising by `rise` x log(S_crit / S). Naive runs: a penalty `drift` x (log2 of the
    implicit kappa error)^2, i.e. optimal at B* = B_base (D / D_base)^gamma, plus the same S_crit rise."""
    rng = np.random.default_rng(seed)
    base_tokens = base_tokens or float(np.exp(np.log(horizons).mean()))
    rows = []
    for d in horizons:
        base = 3.0 - 0.1 * np.log10(d)
        b_star = base_batch * (d / base_tokens) ** gamma
        for b in batches:
            steps = d / (seq_len * b)
            excess = rise * max(0.0, np.log(s_crit / steps))
            for mode in (True, False):
                mismatch = 0.0 if mode else drift * np.log2(b / b_star) ** 2
                k = (base_tokens / d) ** gamma * b / base_batch if mode else 1.0
                for s in range(seeds):
                    rows.append({"train.tokens": d, "train.batch": b, "optim.reparameterise": mode, "seed": s,
                                 "data.seq_len": seq_len, "kappa": k, "loss": base + excess + mismatch + noise * rng.standard_normal(),
                                 "status": "complete"})
    return pd.DataFrame(rows)


@dataclasses.dataclass
class BatchAnalysis:
    """Everything the batch study reports, from one results table (`analyse`)."""

    curves: pd.DataFrame
    critical: pd.DataFrame  # reparameterised curves only
    naive: pd.DataFrame  # loss-optimal batch per naive horizon
    gamma: GammaFit | None
    comparison: pd.DataFrame  # configured starting values vs measured
    seq_len: float | None
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return dict(curves=self.curves.to_dict(orient="records"), critical=self.critical.to_dict(orient="records"),
                    naive_optima=self.naive.to_dict(orient="records"), gamma=self.gamma.to_json() if self.gamma else None,
                    configured_vs_measured=self.comparison.to_dict(orient="records"), seq_len=self.seq_len,
                    alpha=ALPHA, notes=self.notes)


def analyse(
    df: pd.DataFrame, loss: str = "loss", *, seq_len: float | None = None, alpha: float = ALPHA,
    n_bootstrap: int = 1000, seed: int = 0,
) -> BatchAnalysis:
    """Curves, B_crit per reparameterised horizon, naive optima, gamma (or why not) and the configured values."""
    if not 0.0 < alpha < 0.5:
        raise AnalysisError(f"alpha {alpha}: the test level must lie in (0, 0.5)")
    if n_bootstrap < 0:
        raise AnalysisError(f"bootstrap {n_bootstrap}: the number of resamples must be >= 0")
    runs = run_table(df, loss)
    curves = batch_curves(df, loss)
    complete, _ = table.keep_complete(df)
    column = table.first_present(complete, SEQ_LEN_COLUMNS)
    if seq_len is None and column:
        seq_len = float(pd.to_numeric(complete[column]).median())
    notes = [] if seq_len else ["no sequence-length column: S_crit not computed"]
    gamma_configured = configured_value(complete, GAMMA_COLUMNS)
    steps_critical = configured_value(complete, STEPS_CRITICAL_COLUMNS)
    try:
        crit = critical_batches(runs, alpha=alpha, seq_len=seq_len, steps_critical=steps_critical)
    except AnalysisError as e:
        crit = pd.DataFrame()
        notes.append(f"B_crit not measured: {e}")
    try:
        gamma = fit_gamma(df, loss, n_bootstrap=n_bootstrap, seed=seed, gamma_configured=gamma_configured)
        notes += [f"gamma: {e}" for e in gamma.excluded]
    except AnalysisError as e:
        gamma = None
        notes.append(str(e))
    comparison = compare_configured(crit, gamma, gamma_configured=gamma_configured, steps_critical=steps_critical,
                                    seq_len=seq_len) if not crit.empty or gamma_configured else pd.DataFrame()
    return BatchAnalysis(curves, crit, naive_optima(runs), gamma, comparison, seq_len, notes)
