"""Parametric scaling law L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla approach 3).

Method (Besiroglu et al. 2024, the Epoch AI replication of Hoffmann et al. 2022):
* fitted in log space: log L = LSE(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b, E = e^e;
* Huber loss (delta, default 1e-3) on the log-loss residuals, optionally weighted per observation;
* L-BFGS-B (optional bounds) from the best points of a grid of initialisations, keeping the best optimum;
* bootstrap over runs (seeded; replicates warm-start from the full-data optima, spread over processes)
  giving percentile intervals for every parameter, and confidence / prediction bands for the loss;
* compute-optimal allocation for C = k N D (k = 6, or estimated from logged FLOPs):
  N*(C) = G (C/k)^a, D*(C) = G^-1 (C/k)^b, G = (alpha A / (beta B))^(1/(alpha+beta)),
  a = beta / (alpha + beta), b = alpha / (alpha + beta).

The objective is divided by delta * sum(weights) so its scale does not depend on delta or on the number of
points: Hoffmann et al.'s optimiser stopped early on the unscaled sum (Besiroglu et al., section 4).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import multiprocessing
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize

from analysis import table
from analysis.errors import AnalysisError

PARAMS = ("E", "A", "B", "alpha", "beta")
N_PARAMS = len(PARAMS)
DEFAULT_DELTA = 1e-3
# Epoch's grid: e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}, alpha, beta in {0, 0.5, ..., 2}.
DEFAULT_GRID = dict(
    e=np.arange(-1.0, 1.01, 0.5),
    a=np.arange(0.0, 25.1, 5.0),
    b=np.arange(0.0, 25.1, 5.0),
    alpha=np.arange(0.0, 2.01, 0.5),
    beta=np.arange(0.0, 2.01, 0.5),
)
LBFGS_OPTIONS = dict(maxiter=1000, ftol=1e-13, gtol=1e-9, maxcor=20)


# ---------------------------------------------------------------------------------------------
# Parameterisation: theta = (e, a, b, alpha, beta); the named parameters are (E, A, B, alpha, beta).
# ---------------------------------------------------------------------------------------------
def to_params(theta: np.ndarray) -> dict[str, float]:
    e, a, b, alpha, beta = (float(x) for x in theta)
    return dict(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha, beta=beta)


def to_theta(params: Mapping[str, float]) -> np.ndarray:
    return np.array([np.log(params["E"]), np.log(params["A"]), np.log(params["B"]), params["alpha"], params["beta"]])


def _terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """The three log-space terms, shape (..., 3, n) for theta of shape (..., 5)."""
    theta = np.asarray(theta, dtype=np.float64)
    e, a, b, alpha, beta = (theta[..., i, None] for i in range(5))
    return np.stack(
        [a - alpha * log_n, b - beta * log_d, np.broadcast_to(e, np.broadcast_shapes(e.shape, log_n.shape))], axis=-2
    )


def predict_log_loss(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    terms = _terms(theta, np.asarray(log_n, float), np.asarray(log_d, float))
    top = terms.max(axis=-2)
    return top + np.log(np.exp(terms - top[..., None, :]).sum(axis=-2))


def predict_loss(params: Mapping[str, float], n: Any, d: Any) -> np.ndarray:
    """L(N, D) from named parameters (computed in log space, so it is stable for huge N and D)."""
    log_n, log_d = np.broadcast_arrays(np.log(np.asarray(n, float)), np.log(np.asarray(d, float)))
    return np.exp(predict_log_loss(to_theta(params), log_n.ravel(), log_d.ravel())).reshape(log_n.shape)


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    absr = np.abs(r)
    return np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))


@dataclasses.dataclass(frozen=True)
class Data:
    """Log-space observations and weights (normalised to sum to 1)."""

    log_n: np.ndarray
    log_d: np.ndarray
    log_l: np.ndarray
    weights: np.ndarray

    def take(self, idx: np.ndarray) -> Data:
        w = self.weights[idx]
        return Data(self.log_n[idx], self.log_d[idx], self.log_l[idx], w / w.sum())


def objective(theta: np.ndarray, data: Data, delta: float) -> tuple[float, np.ndarray]:
    """Scaled weighted Huber loss of log residuals and its gradient with respect to theta."""
    terms = _terms(theta, data.log_n, data.log_d)
    top = terms.max(axis=0)
    ex = np.exp(terms - top)
    total = ex.sum(axis=0)
    soft = ex / total
    r = top + np.log(total) - data.log_l
    inside = np.abs(r) <= delta
    value = np.where(inside, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    slope = np.where(inside, r, delta * np.sign(r))
    g = data.weights * slope / delta
    grad = np.array(
        [
            (g * soft[2]).sum(),
            (g * soft[0]).sum(),
            (g * soft[1]).sum(),
            -(g * soft[0] * data.log_n).sum(),
            -(g * soft[1] * data.log_d).sum(),
        ]
    )
    return float((data.weights * value).sum() / delta), grad


def grid_objective(thetas: np.ndarray, data: Data, delta: float) -> np.ndarray:
    """Objective at many theta at once (vectorised over the first axis)."""
    r = predict_log_loss(thetas, data.log_n, data.log_d) - data.log_l
    return (data.weights * huber(r, delta)).sum(axis=-1) / delta


def _minimise(theta0: np.ndarray, data: Data, delta: float, bounds: list[tuple[float | None, float | None]] | None):
    res = optimize.minimize(
        objective, theta0, args=(data, delta), jac=True, method="L-BFGS-B", bounds=bounds, options=LBFGS_OPTIONS
    )
    return res.x, float(res.fun)


def _theta_bounds(bounds: Mapping[str, tuple[float | None, float | None]] | None):
    """Named natural-scale bounds -> L-BFGS-B bounds on theta (E, A, B bounded through their logs)."""
    if not bounds:
        return None
    unknown = sorted(set(bounds) - set(PARAMS))
    if unknown:
        raise AnalysisError(f"bounds: unknown parameter(s) {unknown}; allowed: {', '.join(PARAMS)}")
    out: list[tuple[float | None, float | None]] = []
    for name in PARAMS:
        lo, hi = bounds.get(name, (None, None))
        if name in ("E", "A", "B"):
            for v in (lo, hi):
                if v is not None and v <= 0:
                    raise AnalysisError(f"bounds: {name} bounds must be positive (fitted through log {name}), got {v}")
            lo, hi = (None if lo is None else float(np.log(lo))), (None if hi is None else float(np.log(hi)))
        if lo is not None and hi is not None and lo > hi:
            raise AnalysisError(f"bounds: {name} lower bound {lo} exceeds upper bound {hi}")
        out.append((lo, hi))
    return out


def _clip(theta: np.ndarray, bounds) -> np.ndarray:
    if bounds is None:
        return theta
    lo = np.array([-np.inf if b[0] is None else b[0] for b in bounds])
    hi = np.array([np.inf if b[1] is None else b[1] for b in bounds])
    return np.clip(theta, lo, hi)


def grid_points(grid: Mapping[str, Sequence[float]] | None = None) -> np.ndarray:
    g = {**DEFAULT_GRID, **(grid or {})}
    return np.array(list(itertools.product(g["e"], g["a"], g["b"], g["alpha"], g["beta"])), dtype=np.float64)


def fit_theta(
    data: Data,
    delta: float = DEFAULT_DELTA,
    *,
    bounds=None,
    grid: Mapping[str, Sequence[float]] | None = None,
    n_starts: int = 16,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Best optimum from the n_starts best grid points; also returns the distinct local optima found."""
    starts = _clip(grid_points(grid), bounds)
    values = grid_objective(starts, data, delta)
    order = np.argsort(values)[: max(1, n_starts)]
    optima = [_minimise(starts[i], data, delta, bounds) for i in order]
    optima.sort(key=lambda t: t[1])
    distinct: list[np.ndarray] = []
    for theta, _ in optima:
        if np.isfinite(theta).all() and all(np.abs(theta - d).max() > 1e-3 for d in distinct):
            distinct.append(theta)
    best_theta, best_value = optima[0]
    return best_theta, best_value, np.array(distinct[:4])


# ---------------------------------------------------------------------------------------------
# Bootstrap over runs
# ---------------------------------------------------------------------------------------------
def _refit_replicates(args: tuple) -> np.ndarray:
    """Worker: refit on each index set, warm-starting from the full-data optima; NaN row on failure."""
    data, indices, starts, delta, bounds = args
    out = np.full((len(indices), N_PARAMS), np.nan)
    for row, idx in enumerate(indices):
        sample = data.take(idx)
        best = (None, np.inf)
        for theta0 in starts:
            with np.errstate(all="ignore"):
                theta, value = _minimise(theta0, sample, delta, bounds)
            if np.isfinite(value) and value < best[1]:
                best = (theta, value)
        if best[0] is not None:
            out[row] = best[0]
    return out


def _start_method() -> str:
    """fork is cheapest and needs no `if __name__ == "__main__"` guard in the caller's script, but forking
    a process that has started JAX's threads can deadlock; then spawn (workers import numpy/scipy only)."""
    return "spawn" if "jax" in sys.modules else "fork"


def default_workers() -> int:
    return max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n) run indices drawn with replacement; the same for every backend and worker count."""
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def bootstrap_thetas(
    data: Data,
    starts: np.ndarray,
    delta: float,
    *,
    n_bootstrap: int,
    seed: int,
    bounds=None,
    workers: int | None = None,
    backend: str = "numpy",
) -> np.ndarray:
    """(n_bootstrap, 5) refitted thetas on runs resampled with replacement (NaN rows: failed refits).

    backend "numpy": every replicate at once (vectorised LM-IRLS, `analysis.batched_fit`); "scipy": L-BFGS-B per
    replicate, spread over `workers` processes (the reference the numpy path is tested against).
    """
    if n_bootstrap <= 0:
        return np.empty((0, N_PARAMS))
    n = len(data.log_l)
    indices = bootstrap_indices(n, n_bootstrap, seed)
    workers = default_workers() if workers is None else max(1, workers)
    if backend == "numpy":
        counts = np.zeros((n_bootstrap, n))
        np.add.at(counts, (np.arange(n_bootstrap)[:, None], indices), 1.0)
        jobs = [(data, c, starts, delta, bounds) for c in np.array_split(counts, max(1, min(workers or 1, n_bootstrap // 64)))]
        return np.concatenate(_map(_refit_counts, jobs, workers))
    if backend != "scipy":
        raise AnalysisError(f"bootstrap backend {backend!r}: allowed: numpy, scipy")
    jobs = [(data, c, starts, delta, bounds) for c in np.array_split(indices, max(1, min(workers or 1, n_bootstrap // 8)))]
    return np.concatenate(_map(_refit_replicates, jobs, workers))


def _refit_counts(args: tuple) -> np.ndarray:
    from analysis.batched_fit import refit_bootstrap

    data, counts, starts, delta, bounds = args
    return refit_bootstrap(data.log_n, data.log_d, data.log_l, data.weights, starts, counts, delta, bounds)


def _map(fn, jobs: list, workers: int | None) -> list:
    """fn over jobs, in a process pool when there are several jobs (results in order)."""
    if len(jobs) == 1:
        return [fn(jobs[0])]
    ctx = multiprocessing.get_context(_start_method())
    with concurrent.futures.ProcessPoolExecutor(max_workers=len(jobs), mp_context=ctx) as pool:
        return list(pool.map(fn, jobs))


# ---------------------------------------------------------------------------------------------
# Compute-optimal allocation
# ---------------------------------------------------------------------------------------------
def compute_optimal(params: Mapping[str, float], flops_per_param_token: float = 6.0) -> dict[str, float]:
    """Exponents and coefficients of N*(C) = N_coef C^a and D*(C) = D_coef C^b for C = k N D."""
    alpha, beta, k = params["alpha"], params["beta"], flops_per_param_token
    a, b = beta / (alpha + beta), alpha / (alpha + beta)
    g = (alpha * params["A"] / (beta * params["B"])) ** (1.0 / (alpha + beta))
    return dict(a=a, b=b, G=g, N_coefficient=g * k ** (-a), D_coefficient=k ** (-b) / g)


def optimal_allocation(params: Mapping[str, float], compute: Any, flops_per_param_token: float = 6.0):
    """(N*, D*) at compute budget(s) C."""
    opt = compute_optimal(params, flops_per_param_token)
    c = np.asarray(compute, dtype=np.float64)
    return opt["N_coefficient"] * c ** opt["a"], opt["D_coefficient"] * c ** opt["b"]


# ---------------------------------------------------------------------------------------------
# The fit
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class ScalingFit:
    params: dict[str, float]
    theta: np.ndarray
    bootstrap: np.ndarray  # (n_ok, 5) thetas of successful replicates
    log_residuals: np.ndarray  # observed minus predicted log loss, full-data fit
    n_points: int
    huber_delta: float
    objective: float
    loss_column: str
    flops_per_param_token: float
    n_bootstrap: int
    seed: int
    level: float = 0.95
    notes: list[str] = dataclasses.field(default_factory=list)

    # -- intervals ------------------------------------------------------------------------------
    def _quantiles(self, values: np.ndarray) -> tuple[float, float]:
        tail = (1.0 - self.level) / 2.0
        lo, hi = np.nanquantile(values, [tail, 1.0 - tail])
        return float(lo), float(hi)

    def bootstrap_params(self) -> list[dict[str, float]]:
        return [to_params(t) for t in self.bootstrap]

    def intervals(self) -> dict[str, list[float]]:
        """Percentile intervals for E, A, B, alpha, beta and the compute-optimal quantities."""
        if len(self.bootstrap) < 2:
            return {}
        named = self.bootstrap_params()
        out = {p: list(self._quantiles(np.array([d[p] for d in named]))) for p in PARAMS}
        opts = [compute_optimal(d, self.flops_per_param_token) for d in named]
        for key in ("a", "b", "G", "N_coefficient", "D_coefficient"):
            out[key] = list(self._quantiles(np.array([o[key] for o in opts])))
        return out

    # -- predictions ----------------------------------------------------------------------------
    def predict(self, n: Any, d: Any) -> np.ndarray:
        return predict_loss(self.params, n, d)

    def loss_bands(self, n: Any, d: Any, *, seed: int | None = None) -> dict[str, np.ndarray]:
        """Point prediction, confidence band (parameter uncertainty) and prediction band (plus resampled
        log residuals of the fit, i.e. the scatter of a new run) at the given (N, D)."""
        log_n, log_d = np.log(np.asarray(n, float)), np.log(np.asarray(d, float))
        point = np.exp(predict_log_loss(self.theta, log_n, log_d))
        if len(self.bootstrap) < 2:
            return dict(loss=point, conf_lo=point, conf_hi=point, pred_lo=point, pred_hi=point)
        boot_log = predict_log_loss(self.bootstrap[:, None, :], log_n.ravel(), log_d.ravel())[:, 0, :]
        rng = np.random.default_rng(self.seed + 1 if seed is None else seed)
        noise = rng.choice(self.log_residuals, size=boot_log.shape, replace=True)
        tail = (1.0 - self.level) / 2.0
        conf = np.exp(np.quantile(boot_log, [tail, 1 - tail], axis=0)).reshape((2, *np.shape(point)))
        pred = np.exp(np.quantile(boot_log + noise, [tail, 1 - tail], axis=0)).reshape((2, *np.shape(point)))
        return dict(loss=point, conf_lo=conf[0], conf_hi=conf[1], pred_lo=pred[0], pred_hi=pred[1])

    def compute_optimal(self) -> dict[str, float]:
        return compute_optimal(self.params, self.flops_per_param_token)

    def to_json(self) -> dict[str, Any]:
        ci = self.intervals()
        opt = self.compute_optimal()
        return dict(
            **self.params,
            ci95={p: ci[p] for p in PARAMS} if ci else {},
            ci_level=self.level,
            n_points=self.n_points,
            huber_delta=self.huber_delta,
            loss_column=self.loss_column,
            objective=self.objective,
            n_bootstrap=self.n_bootstrap,
            n_bootstrap_ok=int(len(self.bootstrap)),
            seed=self.seed,
            compute_optimal=dict(
                **opt,
                flops_per_param_token=self.flops_per_param_token,
                formula="N*(C) = N_coefficient * C^a, D*(C) = D_coefficient * C^b, C = flops_per_param_token * N * D",
                ci95={k: ci[k] for k in opt} if ci else {},
            ),
            a=opt["a"],
            b=opt["b"],
            notes=list(self.notes),
        )


def fit_arrays(
    n: np.ndarray,
    d: np.ndarray,
    loss: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    delta: float = DEFAULT_DELTA,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    grid: Mapping[str, Sequence[float]] | None = None,
    n_starts: int = 16,
    n_bootstrap: int = 1000,
    seed: int = 0,
    workers: int | None = None,
    backend: str = "numpy",
    flops_per_param_token: float = 6.0,
    loss_column: str = "loss",
    level: float = 0.95,
) -> ScalingFit:
    """Fit L(N, D) to arrays of positive, finite numbers (see `fit_scaling_law` for tables)."""
    n, d, loss = (np.asarray(x, dtype=np.float64) for x in (n, d, loss))
    if not (n.shape == d.shape == loss.shape and n.ndim == 1):
        raise AnalysisError(f"N, D and loss must be 1-D arrays of equal length, got {n.shape}, {d.shape}, {loss.shape}")
    for name, x in (("params", n), ("tokens", d), (loss_column, loss)):
        if not (np.isfinite(x).all() and (x > 0).all()):
            raise AnalysisError(f"{name}: values must be finite and positive")
    table.require_points(len(n), N_PARAMS, "the parametric fit L(N, D)")
    if delta <= 0:
        raise AnalysisError(f"huber delta must be positive, got {delta}")
    if not 0 < level < 1:
        raise AnalysisError(f"interval level must be in (0, 1), got {level}")
    w = np.ones_like(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != n.shape or not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise AnalysisError("weights must be finite, non-negative, not all zero, one per point")
    data = Data(np.log(n), np.log(d), np.log(loss), w / w.sum())
    theta_bounds = _theta_bounds(bounds)
    theta, value, optima = fit_theta(data, delta, bounds=theta_bounds, grid=grid, n_starts=n_starts)
    boot = bootstrap_thetas(
        data, optima, delta, n_bootstrap=n_bootstrap, seed=seed, bounds=theta_bounds, workers=workers, backend=backend
    )
    ok = np.isfinite(boot).all(axis=1)
    notes = [] if ok.all() else [f"{int((~ok).sum())} of {len(boot)} bootstrap refits failed and were skipped"]
    residuals = data.log_l - predict_log_loss(theta, data.log_n, data.log_d)
    return ScalingFit(
        params=to_params(theta),
        theta=theta,
        bootstrap=boot[ok],
        log_residuals=residuals,
        n_points=len(n),
        huber_delta=delta,
        objective=value,
        loss_column=loss_column,
        flops_per_param_token=flops_per_param_token,
        n_bootstrap=n_bootstrap,
        seed=seed,
        level=level,
        notes=notes,
    )


def flops_per_param_token(df: pd.DataFrame, n: np.ndarray, d: np.ndarray, column: str = "flops") -> float:
    """k in C = k N D, the median over runs of logged FLOPs / (N D)."""
    flops = table.positive_column(df, column)
    return float(np.median(flops / (n * d)))


def fit_scaling_law(
    df: pd.DataFrame,
    loss: str = "loss",
    *,
    params_column: str = "params",
    tokens_column: str = "tokens",
    weights_column: str | None = None,
    use_flops: bool = False,
    **kwargs: Any,
) -> ScalingFit:
    """Fit a results table: rows not `complete` are dropped (noted); missing or bad columns are errors."""
    table.require_columns(df, [params_column, tokens_column], what="the scaling-law fit")
    if loss not in df.columns:
        raise AnalysisError(
            f"{df.attrs.get('source', 'results table')}: loss column {loss!r} does not exist; "
            f"columns present: {', '.join(map(str, df.columns))}"
        )
    df, notes = table.keep_complete(df)
    table.require_points(len(df), N_PARAMS, "the parametric fit L(N, D)", df)
    n = table.positive_column(df, params_column)
    d = table.positive_column(df, tokens_column)
    y = table.positive_column(df, loss)
    weights = table.finite_column(df, weights_column) if weights_column else None
    if use_flops:
        table.require_columns(df, ["flops"], what="--use-flops")
        kwargs["flops_per_param_token"] = flops_per_param_token(df, n, d)
    fit = fit_arrays(n, d, y, weights=weights, loss_column=loss, **kwargs)
    fit.notes[:0] = notes
    return fit


def synthetic_table(
    params: Mapping[str, float],
    n_points: int = 120,
    *,
    noise: float = 0.01,
    seed: int = 0,
    n_range: tuple[float, float] = (1e7, 1e10),
    d_range: tuple[float, float] = (1e9, 1e12),
) -> pd.DataFrame:
    """Runs with log-uniform N and D and multiplicative log-normal noise on L: for tests and demos."""
    rng = np.random.default_rng(seed)
    n = np.exp(rng.uniform(*np.log(n_range), n_points))
    d = np.exp(rng.uniform(*np.log(d_range), n_points))
    loss = predict_loss(params, n, d) * np.exp(noise * rng.standard_normal(n_points))
    return pd.DataFrame(dict(params=n, tokens=d, flops=6 * n * d, loss=loss))
