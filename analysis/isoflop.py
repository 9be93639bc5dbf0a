"""IsoFLOP analysis (Chinchilla approach 2).

Runs are grouped by compute budget C (the logged `flops`, else F(N) D). Per budget a parabola
loss = p2 x^2 + p1 x + p0 in x = log10 N gives the loss-optimal N*(C) at its vertex, and D*(C) = C / F(N*),
with F(N) = k N^p the training FLOPs per token fitted to the same runs (`analysis.scaling.table_compute`, the
compute definition the parametric fit uses too), so D* never assumes another k than the runs had.
Power laws N* = k_N C^a and D* = k_D C^b are then fitted by least squares in log-log space; their intervals
come from a bootstrap that resamples runs within each budget and refits everything (seeded).
The verdict `identifiable` is false when fewer than two budgets have their optimum inside the sampled sizes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from analysis import table
from analysis.errors import AnalysisError
from analysis.scaling import DEFAULT_BOOTSTRAP, FlopsModel, params_column, table_compute

MIN_POINTS_PER_BUDGET = 3


def group_budgets(compute: np.ndarray, rel_tol: float = 0.25) -> np.ndarray:
    """Budget id per run: runs whose compute differs by less than the factor (1 + rel_tol) from their sorted
    neighbour share a budget (sweeps log FLOPs that differ slightly from the nominal budget)."""
    order = np.argsort(compute)
    log_c = np.log(compute[order])
    ids_sorted = np.concatenate([[0], np.cumsum(np.diff(log_c) > np.log1p(rel_tol))])
    ids = np.empty_like(ids_sorted)
    ids[order] = ids_sorted
    return ids


def parabola_vertex(log10_n: np.ndarray, loss: np.ndarray) -> tuple[float, float, np.ndarray] | None:
    """(x*, loss at x*, coefficients) of the least-squares parabola, or None if it opens downward."""
    coef = np.polyfit(log10_n, loss, 2)
    if not np.isfinite(coef).all() or coef[0] <= 0:
        return None
    x_star = -coef[1] / (2 * coef[0])
    return float(x_star), float(np.polyval(coef, x_star)), coef


def _power_law(compute: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """(exponent, coefficient) of values = coefficient * compute^exponent, by least squares in logs."""
    slope, intercept = np.polyfit(np.log(compute), np.log(values), 1)
    return float(slope), float(np.exp(intercept))


@dataclasses.dataclass
class IsoFlopFit:
    budgets: pd.DataFrame  # one row per usable budget: compute, n_opt, d_opt, loss_opt, n_runs, p2, p1, p0
    a: float
    N_coefficient: float
    b: float
    D_coefficient: float
    flops: FlopsModel
    ci95: dict[str, list[float]]
    n_bootstrap: int
    loss_column: str
    notes: list[str] = dataclasses.field(default_factory=list)
    n_label: str = "parameters N"

    @property
    def interior_budgets(self) -> int:
        return int(self.budgets.interior.sum())

    @property
    def reasons(self) -> list[str]:
        out = []
        if self.interior_budgets < 2:
            out.append(f"only {self.interior_budgets} budget(s) have their optimum inside the sampled model sizes "
                       "(the others are extrapolated vertices)")
        if self.n_bootstrap and not self.ci95:
            out.append("fewer than two bootstrap replicates kept two usable budgets")
        return out

    @property
    def identifiable(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict[str, Any]:
        return dict(
            a=self.a,
            b=self.b,
            N_coefficient=self.N_coefficient,
            D_coefficient=self.D_coefficient,
            formula="N*(C) = N_coefficient * C^a, D*(C) = D_coefficient * C^b",
            compute=self.flops.to_json(),
            n_convention=self.n_label,
            identifiable=self.identifiable,
            reasons=self.reasons,
            ci95=self.ci95,
            n_bootstrap=self.n_bootstrap,
            loss_column=self.loss_column,
            budgets=self.budgets.to_dict(orient="records"),
            notes=list(self.notes),
        )


def _optima(groups: list[tuple[float, np.ndarray, np.ndarray]], flops: FlopsModel) -> tuple[list[dict[str, float]], list[str]]:
    rows, notes = [], []
    for compute, n, loss in groups:
        if len(n) < MIN_POINTS_PER_BUDGET or len(np.unique(n)) < MIN_POINTS_PER_BUDGET:
            notes.append(f"budget C={compute:.3g}: {len(np.unique(n))} distinct model sizes, need {MIN_POINTS_PER_BUDGET}; skipped")
            continue
        vertex = parabola_vertex(np.log10(n), loss)
        if vertex is None:
            notes.append(f"budget C={compute:.3g}: loss vs log N does not curve upward; skipped")
            continue
        x_star, loss_star, coef = vertex
        interior = bool(np.log10(n.min()) <= x_star <= np.log10(n.max()))
        if not interior:
            notes.append(f"budget C={compute:.3g}: optimum N*={10**x_star:.3g} lies outside the sampled sizes (extrapolated)")
        n_opt = 10**x_star
        rows.append(
            dict(compute=compute, n_opt=n_opt, d_opt=float(flops.tokens(compute, n_opt)), loss_opt=loss_star,
                 n_runs=len(n), interior=interior, p2=coef[0], p1=coef[1], p0=coef[2])
        )
    return rows, notes


def fit_isoflop_arrays(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    *,
    compute: np.ndarray | None = None,
    flops: FlopsModel | None = None,
    rel_tol: float = 0.25,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    level: float = 0.95,
    loss_column: str = "loss",
    n_label: str = "parameters N",
) -> IsoFlopFit:
    """IsoFLOP fit of arrays; `flops` is the FLOPs-per-token model the runs had (default C = 6 N D)."""
    if n_bootstrap < 0:
        raise AnalysisError(f"bootstrap replicates must be >= 0, got {n_bootstrap}")
    n, d, loss = (np.asarray(x, dtype=np.float64) for x in (n, d, loss))
    flops = flops or FlopsModel()
    compute = flops.compute(n, d) if compute is None else np.asarray(compute, dtype=np.float64)
    ids = group_budgets(compute, rel_tol)
    members = [np.flatnonzero(ids == g) for g in np.unique(ids)]
    groups = [(float(np.exp(np.log(compute[m]).mean())), n[m], loss[m]) for m in members]
    rows, notes = _optima(groups, flops)
    if len(rows) < 2:
        raise AnalysisError(
            f"IsoFLOP fit needs at least 2 compute budgets with >= {MIN_POINTS_PER_BUDGET} model sizes each, "
            f"got {len(rows)} (budgets found: {len(groups)})"
        )
    budgets = pd.DataFrame(rows)
    a, n_coef = _power_law(budgets.compute.to_numpy(), budgets.n_opt.to_numpy())
    b, d_coef = _power_law(budgets.compute.to_numpy(), budgets.d_opt.to_numpy())
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_bootstrap):
        resampled = [(c, gn[idx], gl[idx]) for (c, gn, gl) in groups for idx in [rng.integers(0, len(gn), len(gn))]]
        boot_rows, _ = _optima(resampled, flops)
        if len(boot_rows) >= 2:
            bc = np.array([r["compute"] for r in boot_rows])
            draws.append((_power_law(bc, np.array([r["n_opt"] for r in boot_rows]))[0],
                          _power_law(bc, np.array([r["d_opt"] for r in boot_rows]))[0]))
    tail = (1 - level) / 2
    ci = {}
    if len(draws) >= 2:
        arr = np.array(draws)
        ci = dict(a=list(map(float, np.quantile(arr[:, 0], [tail, 1 - tail]))),
                  b=list(map(float, np.quantile(arr[:, 1], [tail, 1 - tail]))))
    return IsoFlopFit(budgets, a, n_coef, b, d_coef, flops, ci, n_bootstrap, loss_column, notes, n_label)


def fit_isoflop(
    df: pd.DataFrame,
    loss: str = "loss",
    *,
    params: str = "non-embedding",
    **kwargs: Any,
) -> IsoFlopFit:
    """IsoFLOP fit of a results table: budgets and D* from the logged FLOPs (`scaling.table_compute`)."""
    column, n_label = params_column(df, params)
    table.require_columns(df, [column, "tokens"], what="the IsoFLOP fit")
    if loss not in df.columns:
        raise AnalysisError(f"{df.attrs.get('source', 'results table')}: loss column {loss!r} does not exist")
    df, notes = table.keep_complete(df)
    n = table.positive_column(df, column)
    d = table.positive_column(df, "tokens")
    y = table.finite_column(df, loss)
    flops, compute = table_compute(df, n, d)
    fit = fit_isoflop_arrays(n, d, y, compute=compute, flops=flops, loss_column=loss, n_label=n_label, **kwargs)
    fit.notes[:0] = notes
    return fit


def synthetic_isoflop_table(
    params: dict[str, float],
    budgets: tuple[float, ...] = (1e18, 1e19, 1e20, 1e21),
    sizes_per_budget: int = 9,
    span: float = 8.0,
    noise: float = 0.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Runs on IsoFLOP curves, N spread log-symmetrically (factor `span` each way) around the true optimum."""
    from analysis.scaling import optimal_allocation, predict_loss

    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n_star, _ = optimal_allocation(params, c)
        for n in n_star * np.geomspace(1 / span, span, sizes_per_budget):
            d = c / (6 * n)
            loss = float(predict_loss(params, n, d)) * float(np.exp(noise * rng.standard_normal()))
            rows.append(dict(params=n, tokens=d, flops=c, loss=loss))
    return pd.DataFrame(rows)
