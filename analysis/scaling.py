"""Parametric scaling law L(N, D) = E + A / N^alpha + B / D^beta (Chinchilla approach 3), with the checks a
careful fit needs before its numbers are quoted.

Method (Besiroglu et al. 2024, the Epoch AI replication of Hoffmann et al. 2022):
* fitted in log space: log L = LSE(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b, E = e^e;
* Huber loss (delta, default 1e-3) on the log-loss residuals, optionally weighted per observation;
* L-BFGS-B (optional bounds, or parameters held fixed) from the best points of a grid of initialisations;
  every start's convergence (scipy's `success`) is kept;
* bootstrap over runs (1,000 replicates by default; seeded): each replicate is refitted from its own best
  grid points and from the full-data optimum, giving percentile intervals for every parameter, and
  confidence / prediction bands for the loss;
* compute-optimal allocation for C = F(N) D, where F(N) = k N^p is the training FLOPs per token fitted to the
  runs' logged values (k = 6, p = 1 when nothing is logged: C = 6 N D):
  N*(C) = G (C/k)^a, D*(C) = C / F(N*) = G^-p (C/k)^b, G = (alpha A / (p beta B))^(1/(alpha + p beta)),
  a = beta / (alpha + p beta), b = alpha / (alpha + p beta).

Diagnostics (`ScalingFit.diagnostics`; the verdict `identifiable` and its reasons):
* convergence of every start; parameters at a given bound; the E / A / B terms degenerate over the data;
* near-tied optima: other local optima inside the 95% profile threshold that disagree with the best one;
* the span of N and D in decades;
* an exponent whose 95% bootstrap interval is wider than the exponent itself;
* profiles of the objective over E, alpha and beta (the other parameters refitted at each value). The
  threshold is a profile-likelihood one: with the objective read as the scale of a Laplace likelihood of the
  log residuals (for |r| >> delta it is mean |r|), a value is allowed while
  objective / best <= exp(chi2_1(0.95) / (2 n_eff)). A profile whose allowed range reaches the edge of the
  admissible range (E -> 0 or E -> the smallest loss; an exponent -> 0 or -> 2.5) means the data do not pin
  that parameter down (practical non-identifiability, Raue et al. 2009), and the fit is not a finding.

Several losses can be fitted jointly with alpha and beta shared (`fit_shared`): observations of every loss
column are stacked and map onto one parameter vector (per-loss E, A, B; shared exponents); a bootstrap
replicate resamples runs, so a run keeps all its losses together.

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
from scipy import optimize, stats
from threadpoolctl import threadpool_limits

from analysis import table
from analysis.batched_fit import refit_bootstrap, solve_batch
from analysis.errors import AnalysisError

PARAMS = ("E", "A", "B", "alpha", "beta")
N_PARAMS = len(PARAMS)
LAW = "L(N, D) = E + A / N^alpha + B / D^beta"
DEFAULT_DELTA = 1e-3
DEFAULT_BOOTSTRAP = 1000
# Epoch's grid: e in {-1, -0.5, ..., 1}, a, b in {0, 5, ..., 25}, alpha, beta in {0, 0.5, ..., 2}.
DEFAULT_GRID = dict(
    e=np.arange(-1.0, 1.01, 0.5),
    a=np.arange(0.0, 25.1, 5.0),
    b=np.arange(0.0, 25.1, 5.0),
    alpha=np.arange(0.0, 2.01, 0.5),
    beta=np.arange(0.0, 2.01, 0.5),
)
LBFGS_OPTIONS = dict(maxiter=1000, ftol=1e-13, gtol=1e-9, maxcor=20)
# Below this many (problem x observation) pairs per process the bootstrap runs in this process: starting a
# worker costs more than it saves (spawned workers re-import the caller, JAX included).
MIN_WORK_PER_PROCESS = 200_000
GRID_STARTS_PER_REPLICATE = 2  # a bootstrap replicate starts from its own best grid points and the full-data optimum

# Identifiability rules (module docstring).
PROFILE_LEVEL = 0.95
EXPONENT_EDGE = 2.5  # profiles of alpha and beta run over [0, EXPONENT_EDGE]
E_EDGE_FRACTION = 1e-3  # the E profile runs over [E_EDGE_FRACTION, 0.999] x the smallest observed loss
PROFILE_POINTS = 26
TERM_CHANGE_MIN = 0.05  # A/N^alpha must change by more than 5% across the runs' N (likewise B/D^beta over D)
TIE_ALPHA, TIE_LOG_E = 0.05, np.log(1.25)  # near-tied optima "disagree" beyond these differences
MAX_RELATIVE_WIDTH = 1.0  # an exponent's bootstrap interval wider than the exponent: not determined
MIN_BOOTSTRAP_FOR_WIDTH = 20  # replicates needed before that rule applies
MIN_SPAN_DECADES = 1.0  # below this the fit is flagged as an extrapolation risk (a warning, not a verdict)
EMBEDDING_HEAVY_RATIO = 1.25  # total / non-embedding parameters above this: fit both conventions


# ---------------------------------------------------------------------------------------------
# Parameterisation: theta = (e, a, b, alpha, beta); the named parameters are (E, A, B, alpha, beta).
# ---------------------------------------------------------------------------------------------
def to_params(theta: np.ndarray) -> dict[str, float]:
    e, a, b, alpha, beta = (float(x) for x in theta)
    with np.errstate(over="ignore"):  # a runaway fit's A = inf is reported by the diagnostics, not warned about
        return dict(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=alpha, beta=beta)


def to_theta(params: Mapping[str, float]) -> np.ndarray:
    return np.array([np.log(params["E"]), np.log(params["A"]), np.log(params["B"]), params["alpha"], params["beta"]])


def predict_log_loss(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """log L for theta (..., 5) at points (n,): shape (..., n)."""
    theta = np.asarray(theta, dtype=np.float64)
    e, a, b, alpha, beta = (theta[..., i, None] for i in range(5))
    t1, t2 = a - alpha * log_n, b - beta * log_d
    t3 = np.broadcast_to(e, t1.shape)
    top = np.maximum(np.maximum(t1, t2), t3)
    return top + np.log(np.exp(t1 - top) + np.exp(t2 - top) + np.exp(t3 - top))


def predict_loss(params: Mapping[str, float], n: Any, d: Any) -> np.ndarray:
    """L(N, D) from named parameters (computed in log space, so it is stable for huge N and D)."""
    log_n, log_d = np.broadcast_arrays(np.log(np.asarray(n, float)), np.log(np.asarray(d, float)))
    return np.exp(predict_log_loss(to_theta(params), log_n.ravel(), log_d.ravel())).reshape(log_n.shape)


def huber(r: np.ndarray, delta: float) -> np.ndarray:
    absr = np.abs(r)
    return np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))


# ---------------------------------------------------------------------------------------------
# Observations and the layout of the parameter vector
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Layout:
    """Which entries of the parameter vector phi each loss column uses: per-column E, A, B (and exponents
    unless shared); `shared` entries come once, after every column's own."""

    groups: tuple[str, ...]
    shared: tuple[str, ...] = ()

    @property
    def own(self) -> tuple[int, ...]:
        return tuple(i for i, p in enumerate(PARAMS) if p not in self.shared)

    @property
    def size(self) -> int:
        return len(self.groups) * len(self.own) + len(self.shared)

    def index(self, group: int) -> np.ndarray:
        """The 5 phi indices of (e, a, b, alpha, beta) for one loss column."""
        own, out = self.own, np.empty(5, dtype=int)
        for j, i in enumerate(own):
            out[i] = group * len(own) + j
        for j, name in enumerate(self.shared):
            out[PARAMS.index(name)] = len(self.groups) * len(own) + j
        return out

    def theta(self, phi: np.ndarray, group: int) -> np.ndarray:
        return np.asarray(phi)[..., self.index(group)]


@dataclasses.dataclass(frozen=True)
class Data:
    """Log-space observations, stacked over loss columns. weights sum to 1; `run` is the run (table row) an
    observation came from (the bootstrap resamples runs); `group` its loss column; `pidx` its phi indices."""

    log_n: np.ndarray
    log_d: np.ndarray
    log_l: np.ndarray
    weights: np.ndarray
    run: np.ndarray
    group: np.ndarray
    pidx: np.ndarray

    @property
    def n_runs(self) -> int:
        return int(self.run.max()) + 1

    def reweight(self, counts: np.ndarray) -> Data:
        """The data with each run counted `counts[run]` times (a bootstrap replicate)."""
        w = self.weights * np.asarray(counts, float)[self.run]
        return dataclasses.replace(self, weights=w / w.sum())

    def subset(self, runs: np.ndarray) -> Data:
        """Only the observations of the given runs (renumbered 0..len(runs)-1)."""
        keep = np.isin(self.run, runs)
        renumber = np.full(self.n_runs, -1)
        renumber[np.asarray(runs)] = np.arange(len(runs))
        w = self.weights[keep]
        return Data(self.log_n[keep], self.log_d[keep], self.log_l[keep], w / w.sum(), renumber[self.run[keep]],
                    self.group[keep], self.pidx[keep])


def stack_data(log_n: np.ndarray, log_d: np.ndarray, log_losses: Sequence[np.ndarray], weights: np.ndarray,
               layout: Layout) -> Data:
    """One observation per (run, loss column); every column gets the same total weight."""
    n_runs, n_groups = len(log_n), len(log_losses)
    w = np.concatenate([weights / weights.sum() / n_groups] * n_groups)
    return Data(np.tile(log_n, n_groups), np.tile(log_d, n_groups), np.concatenate(log_losses), w,
                np.tile(np.arange(n_runs), n_groups), np.repeat(np.arange(n_groups), n_runs),
                np.concatenate([np.broadcast_to(layout.index(g), (n_runs, 5)) for g in range(n_groups)]))


def objective(phi: np.ndarray, data: Data, delta: float) -> tuple[float, np.ndarray]:
    """Scaled weighted Huber loss of log residuals and its gradient with respect to phi."""
    theta = np.asarray(phi)[data.pidx]
    e, a, b, alpha, beta = theta.T
    terms = np.stack([a - alpha * data.log_n, b - beta * data.log_d, e])
    top = terms.max(axis=0)
    ex = np.exp(terms - top)
    total = ex.sum(axis=0)
    soft = ex / total
    r = top + np.log(total) - data.log_l
    inside = np.abs(r) <= delta
    value = np.where(inside, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))
    slope = np.where(inside, r, delta * np.sign(r))
    g = data.weights * slope / delta
    per_point = np.stack([g * soft[2], g * soft[0], g * soft[1], -g * soft[0] * data.log_n, -g * soft[1] * data.log_d], axis=1)
    grad = np.bincount(data.pidx.ravel(), weights=per_point.ravel(), minlength=len(phi))
    return float((data.weights * value).sum() / delta), grad


def point_huber(phis: np.ndarray, data: Data, delta: float) -> np.ndarray:
    """Per-observation Huber terms (divided by delta) for many phi at once: (S, n)."""
    theta = np.asarray(phis, float)[:, data.pidx]  # (S, n, 5)
    e, a, b, alpha, beta = (theta[..., i] for i in range(5))
    t1, t2 = a - alpha * data.log_n, b - beta * data.log_d
    top = np.maximum(np.maximum(t1, t2), e)
    with np.errstate(over="ignore", invalid="ignore"):
        r = top + np.log(np.exp(t1 - top) + np.exp(t2 - top) + np.exp(e - top)) - data.log_l
    return huber(r, delta) / delta


def grid_objective(phis: np.ndarray, data: Data, delta: float) -> np.ndarray:
    """Objective at many phi at once (vectorised over the first axis)."""
    return point_huber(phis, data, delta) @ data.weights


# ---------------------------------------------------------------------------------------------
# Bounds, fixed parameters and starting points
# ---------------------------------------------------------------------------------------------
def _natural_to_phi(name: str, value: float | None) -> float | None:
    if value is None or name not in ("E", "A", "B"):
        return value
    if value <= 0:
        raise AnalysisError(f"{name} must be positive (it is fitted through log {name}), got {value}")
    return float(np.log(value))


def phi_bounds(layout: Layout, bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
               fixed: Mapping[str, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Named natural-scale bounds and fixed values -> (lo, hi) on phi (a fixed parameter has lo == hi)."""
    bounds, fixed = dict(bounds or {}), dict(fixed or {})
    for what, names in (("bounds", bounds), ("fixed", fixed)):
        unknown = sorted(set(names) - set(PARAMS))
        if unknown:
            raise AnalysisError(f"{what}: unknown parameter(s) {unknown}; allowed: {', '.join(PARAMS)}")
    both = sorted(set(bounds) & set(fixed))
    if both:
        raise AnalysisError(f"parameter(s) {both} both bounded and fixed: give one or the other")
    lo, hi = np.full(layout.size, -np.inf), np.full(layout.size, np.inf)
    for name, (b_lo, b_hi) in bounds.items():
        b_lo, b_hi = _natural_to_phi(name, b_lo), _natural_to_phi(name, b_hi)
        if b_lo is not None and b_hi is not None and b_lo > b_hi:
            raise AnalysisError(f"bounds: {name} lower bound exceeds its upper bound")
        for g in range(len(layout.groups)):
            i = layout.index(g)[PARAMS.index(name)]
            lo[i], hi[i] = (-np.inf if b_lo is None else b_lo), (np.inf if b_hi is None else b_hi)
    for name, value in fixed.items():
        if not np.isfinite(value):
            raise AnalysisError(f"fixed {name} must be a finite number, got {value}")
        v = _natural_to_phi(name, float(value))
        for g in range(len(layout.groups)):
            i = layout.index(g)[PARAMS.index(name)]
            lo[i] = hi[i] = v
    return lo, hi


def grid_points(grid: Mapping[str, Sequence[float]] | None = None) -> np.ndarray:
    g = {**DEFAULT_GRID, **(grid or {})}
    return np.array(list(itertools.product(g["e"], g["a"], g["b"], g["alpha"], g["beta"])), dtype=np.float64)


def candidate_starts(data: Data, layout: Layout, lo: np.ndarray, hi: np.ndarray, delta: float,
                     grid: Mapping[str, Sequence[float]] | None = None) -> np.ndarray:
    """Starting points on phi from the initialisation grid (clipped to the bounds, duplicates removed).

    One law: the grid itself. Several laws sharing parameters: for each value of the shared parameters on
    the grid, each loss column's best grid point with those values."""
    points = grid_points(grid)
    if len(layout.groups) == 1 and not layout.shared:
        return np.unique(np.clip(points, lo, hi), axis=0)
    shared_cols = [PARAMS.index(p) for p in layout.shared]
    keys, key_of = np.unique(points[:, shared_cols], axis=0, return_inverse=True)
    key_of = key_of.ravel()
    out = np.zeros((len(keys), layout.size))
    for g in range(len(layout.groups)):
        mask = data.group == g
        sub = dataclasses.replace(data, log_n=data.log_n[mask], log_d=data.log_d[mask], log_l=data.log_l[mask],
                                  weights=data.weights[mask], run=data.run[mask], group=data.group[mask],
                                  pidx=np.broadcast_to(np.arange(5), (int(mask.sum()), 5)))
        idx = layout.index(g)
        clipped = np.clip(points, lo[idx], hi[idx])
        values = grid_objective(clipped, sub, delta)
        for k in range(len(keys)):
            members = np.flatnonzero(key_of == k)
            out[k, idx] = clipped[members[np.argmin(values[members])]]
    return np.unique(np.clip(out, lo, hi), axis=0)


@dataclasses.dataclass(frozen=True)
class Start:
    """One L-BFGS-B run: where it ended, its objective, and whether scipy reported convergence."""

    phi: np.ndarray
    value: float
    success: bool
    message: str
    iterations: int


def _lbfgs_bounds(lo: np.ndarray, hi: np.ndarray) -> list[tuple[float | None, float | None]]:
    return [(None if not np.isfinite(a) else float(a), None if not np.isfinite(b) else float(b)) for a, b in zip(lo, hi)]


def minimise(phi0: np.ndarray, data: Data, delta: float, lo: np.ndarray, hi: np.ndarray) -> Start:
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        res = optimize.minimize(objective, np.clip(phi0, lo, hi), args=(data, delta), jac=True, method="L-BFGS-B",
                                bounds=_lbfgs_bounds(lo, hi), options=LBFGS_OPTIONS)
    message = res.message.decode() if isinstance(res.message, bytes) else str(res.message)
    return Start(np.asarray(res.x, float), float(res.fun), bool(res.success), message, int(res.nit))


def multistart(data: Data, candidates: np.ndarray, delta: float, lo: np.ndarray, hi: np.ndarray,
               n_starts: int = 16) -> list[Start]:
    """L-BFGS-B from the n_starts best candidates; every start's result, best first."""
    values = grid_objective(candidates, data, delta)
    order = np.argsort(np.where(np.isfinite(values), values, np.inf))[: max(1, n_starts)]
    starts = [minimise(candidates[i], data, delta, lo, hi) for i in order]
    return sorted(starts, key=lambda s: s.value if np.isfinite(s.value) else np.inf)


# ---------------------------------------------------------------------------------------------
# Bootstrap over runs
# ---------------------------------------------------------------------------------------------
def _start_method() -> str:
    """fork is cheapest and needs no `if __name__ == "__main__"` guard in the caller's script, but forking
    a process that has started JAX's threads can deadlock; then spawn (workers import numpy/scipy only)."""
    return "spawn" if "jax" in sys.modules else "fork"


def default_workers() -> int:
    return max(1, min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def bootstrap_indices(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n) run indices drawn with replacement; the same for every backend and worker count."""
    return np.random.default_rng(seed).integers(0, n, size=(n_bootstrap, n))


def bootstrap_counts(n: int, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n) how often each run is drawn in each replicate."""
    indices = bootstrap_indices(n, n_bootstrap, seed)
    counts = np.zeros((n_bootstrap, n))
    np.add.at(counts, (np.arange(n_bootstrap)[:, None], indices), 1.0)
    return counts


def replicate_starts(data: Data, counts: np.ndarray, candidates: np.ndarray, best: np.ndarray, delta: float,
                     per_replicate: int = GRID_STARTS_PER_REPLICATE) -> np.ndarray:
    """(R, per_replicate + 1, K): each replicate's best grid candidates on its own data, then the full-data
    optimum. The replicate objectives of all candidates are one matrix product (weights x per-point terms)."""
    terms = point_huber(candidates, data, delta)  # (S, n)
    terms = np.where(np.isfinite(terms), terms, 1e300)
    w = data.weights[None, :] * counts[:, data.run]
    values = (w / w.sum(axis=1, keepdims=True)) @ terms.T  # (R, S)
    m = min(per_replicate, len(candidates))
    top = np.argpartition(values, m - 1, axis=1)[:, :m] if m < len(candidates) else np.tile(np.arange(m), (len(counts), 1))
    return np.concatenate([candidates[top], np.broadcast_to(best, (len(counts), 1, len(best)))], axis=1)


def _refit_chunk(args: tuple) -> np.ndarray:
    with threadpool_limits(1):  # 5x5 systems: BLAS threads only contend (measured 7x slower on 2 busy cores)
        return _refit(*args)


def _refit(data, counts, starts, delta, lo, hi, backend) -> np.ndarray:
    w = data.weights[None, :] * counts[:, data.run]
    w = w / w.sum(axis=1, keepdims=True)
    if backend == "numpy":
        return refit_bootstrap(data.log_n, data.log_d, data.log_l, w, starts, delta, lo, hi, pidx=data.pidx)
    out = np.full((len(counts), starts.shape[2]), np.nan)
    for row in range(len(counts)):
        sample = dataclasses.replace(data, weights=w[row])
        results = [minimise(s, sample, delta, lo, hi) for s in starts[row]]
        results = [r for r in results if np.isfinite(r.value)]
        if results:
            out[row] = min(results, key=lambda r: r.value).phi
    return out


def bootstrap_phis(data: Data, candidates: np.ndarray, best: np.ndarray, delta: float, lo: np.ndarray,
                   hi: np.ndarray, *, n_bootstrap: int, seed: int, workers: int | None = None,
                   backend: str = "numpy") -> np.ndarray:
    """(n_bootstrap, K) refitted parameters on runs resampled with replacement (NaN rows: failed refits).

    backend "numpy": every replicate at once (vectorised LM-IRLS, `analysis.batched_fit`); "scipy": L-BFGS-B per
    replicate (the reference the numpy path is tested against). Both from the same starts per replicate."""
    if backend not in ("numpy", "scipy"):
        raise AnalysisError(f"bootstrap backend {backend!r}: allowed: numpy, scipy")
    if n_bootstrap <= 0:
        return np.empty((0, len(best)))
    counts = bootstrap_counts(data.n_runs, n_bootstrap, seed)
    starts = replicate_starts(data, counts, candidates, best, delta)
    workers = default_workers() if workers is None else max(1, workers)
    per_job = 64 if backend == "numpy" else 8
    work = n_bootstrap * starts.shape[1] * len(data.log_l)  # problems x observations
    n_jobs = max(1, min(workers, n_bootstrap // per_job, work // MIN_WORK_PER_PROCESS))
    parts = np.array_split(np.arange(n_bootstrap), n_jobs)
    jobs = [(data, counts[p], starts[p], delta, lo, hi, backend) for p in parts]
    return np.concatenate(_map(_refit_chunk, jobs))


def _map(fn, jobs: list) -> list:
    """fn over jobs, in a process pool when there are several jobs (results in order)."""
    if len(jobs) == 1:
        return [fn(jobs[0])]
    ctx = multiprocessing.get_context(_start_method())
    with concurrent.futures.ProcessPoolExecutor(max_workers=len(jobs), mp_context=ctx) as pool:
        return list(pool.map(fn, jobs))


# ---------------------------------------------------------------------------------------------
# Compute: FLOPs per token and the compute-optimal allocation
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FlopsModel:
    """Training FLOPs per token F(N) = k N^p (so a run's compute is C = F(N) D), fitted to the runs."""

    k: float = 6.0
    p: float = 1.0
    source: str = "assumed C = 6 N D (no FLOPs logged)"
    max_rel_error: float = 0.0  # of F(N) against the runs' logged FLOPs per token

    def per_token(self, n: Any) -> np.ndarray:
        return self.k * np.asarray(n, float) ** self.p

    def compute(self, n: Any, d: Any) -> np.ndarray:
        return self.per_token(n) * np.asarray(d, float)

    def tokens(self, compute: Any, n: Any) -> np.ndarray:
        return np.asarray(compute, float) / self.per_token(n)

    def describe(self) -> str:
        if self.p == 1.0 and self.k == 6.0 and self.max_rel_error == 0.0:
            return "C = 6 N D"
        return f"C = F(N) D, F(N) = {self.k:.4g} N^{self.p:.4f} FLOPs/token"

    def to_json(self) -> dict[str, Any]:
        return dict(formula="C = k * N^p * D (training FLOPs per token F(N) = k N^p)", k=self.k, p=self.p,
                    source=self.source, max_rel_error=self.max_rel_error)


def fit_flops_model(n: np.ndarray, per_token: np.ndarray, source: str) -> FlopsModel:
    """F(N) = k N^p by least squares in logs over the runs (p = 1 when N does not vary)."""
    n, per_token = np.asarray(n, float), np.asarray(per_token, float)
    if np.ptp(np.log(n)) < 1e-9:
        p, log_k = 1.0, float(np.median(np.log(per_token / n)))
    else:
        p, log_k = (float(v) for v in np.polyfit(np.log(n), np.log(per_token), 1))
        if abs(p - 1.0) < 1e-9:
            p = 1.0
    model = FlopsModel(float(np.exp(log_k)), p, source)
    err = float(np.max(np.abs(model.per_token(n) / per_token - 1.0)))
    return dataclasses.replace(model, max_rel_error=err if err > 1e-9 else 0.0)


def compute_optimal(params: Mapping[str, float], flops: FlopsModel | float = 6.0) -> dict[str, float]:
    """Exponents and coefficients of N*(C) = N_coefficient C^a and D*(C) = D_coefficient C^b for C = k N^p D
    (a float is k with p = 1)."""
    fm = flops if isinstance(flops, FlopsModel) else FlopsModel(float(flops), 1.0)
    alpha, beta, k, p = (np.float64(x) for x in (params["alpha"], params["beta"], fm.k, fm.p))
    with np.errstate(all="ignore"):
        den = alpha + p * beta
        a, b = beta / den, alpha / den
        g = (alpha * np.float64(params["A"]) / (p * beta * np.float64(params["B"]))) ** (1.0 / den)
        return dict(a=float(a), b=float(b), G=float(g), N_coefficient=float(g * k ** (-a)),
                    D_coefficient=float(g ** (-p) * k ** (-b)))


def optimal_allocation(params: Mapping[str, float], compute: Any, flops: FlopsModel | float = 6.0):
    """(N*, D*) at compute budget(s) C."""
    opt = compute_optimal(params, flops)
    c = np.asarray(compute, dtype=np.float64)
    return opt["N_coefficient"] * c ** opt["a"], opt["D_coefficient"] * c ** opt["b"]


# ---------------------------------------------------------------------------------------------
# Diagnostics
# ---------------------------------------------------------------------------------------------
def profile_threshold(data: Data, level: float = PROFILE_LEVEL) -> float:
    """Allowed objective / best ratio: exp(chi2_1(level) / (2 n_eff)) (module docstring)."""
    n_eff = 1.0 / float((data.weights**2).sum())
    return float(np.exp(stats.chi2.ppf(level, 1) / (2.0 * n_eff)))


PROFILE_STEPS = np.array([0.005, 0.01, 0.02, 0.05])  # extra profile points around the optimum (log E; exponents)


def _profile_values(name: str, min_loss: float, best: float) -> np.ndarray:
    """Profile grid on phi's scale: the admissible range (its ends are the edges) plus points near the optimum."""
    if name == "E":
        lo, hi = np.log(E_EDGE_FRACTION * min_loss), np.log(0.999 * min_loss)
        coarse = np.linspace(lo, hi, PROFILE_POINTS)
    else:
        lo, hi = 0.0, EXPONENT_EDGE
        coarse = np.linspace(lo, hi, PROFILE_POINTS)
    local = best + np.concatenate([-PROFILE_STEPS, [0.0], PROFILE_STEPS])
    return np.unique(np.concatenate([coarse, local[(local > lo) & (local < hi)]]))


def profiles(data: Data, layout: Layout, phi: np.ndarray, candidates: np.ndarray, delta: float, lo: np.ndarray,
             hi: np.ndarray) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Profile of the objective over E (per loss column), alpha and beta: at each value on the profile grid
    the other free parameters are refitted (all values at once, from the best fit and the best grid points).
    Returns {(group, name): (values on phi scale, objective, refitted phi)}; fixed parameters are skipped."""
    coords: dict[tuple[int, str], int] = {}
    for g in range(len(layout.groups)):
        for name in ("E", "alpha", "beta"):
            i = int(layout.index(g)[PARAMS.index(name)])
            if lo[i] != hi[i] and i not in coords.values():
                coords[(g, name)] = i
    if not coords:
        return {}
    best_candidates = candidates[np.argsort(grid_objective(candidates, data, delta))[:30]]
    starts, lows, highs, keys = [], [], [], []
    for key, i in coords.items():
        min_loss = float(np.exp(data.log_l[data.group == key[0]].min()))
        for v in np.unique(np.clip(_profile_values(key[1], min_loss, phi[i]), lo[i], hi[i])):
            pool = np.vstack([phi, best_candidates]).copy()
            pool[:, i] = v
            top = pool[np.argsort(grid_objective(pool[1:], data, delta))[:2] + 1]
            for s in (pool[0], *top):
                l, h = lo.copy(), hi.copy()
                l[i] = h[i] = v
                starts.append(s)
                lows.append(l)
                highs.append(h)
                keys.append((key, v))
    starts = np.array(starts)
    weights = np.broadcast_to(data.weights, (len(starts), len(data.weights)))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        fitted, values, _ = solve_batch(starts, weights, data.log_n, data.log_d, data.log_l, delta, np.array(lows),
                                        np.array(highs), pidx=data.pidx)
    values = np.where(np.isfinite(values), values, np.inf)
    out: dict[tuple[int, str], tuple[list, list, list]] = {}
    for (key, v), value, f in zip(keys, values, fitted):
        vals, objs, phis = out.setdefault(key, ([], [], []))
        if vals and vals[-1] == v:
            if value < objs[-1]:
                objs[-1], phis[-1] = value, f
            continue
        vals.append(v)
        objs.append(value)
        phis.append(f)
    return {k: (np.array(a), np.array(b), np.array(c)) for k, (a, b, c) in out.items()}


def _natural(name: str, value: float) -> float:
    with np.errstate(over="ignore"):
        return float(np.exp(value)) if name in ("E", "A", "B") else float(value)


def _json_safe(value: Any) -> Any:
    """Non-finite floats as None (JSON has no inf/nan), recursively."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def diagnose(data: Data, layout: Layout, starts: list[Start], candidates: np.ndarray, delta: float,
             lo: np.ndarray, hi: np.ndarray, flops: FlopsModel) -> list[dict[str, Any]]:
    """Per loss column: the diagnostics dict (identifiable, reasons, warnings and the evidence)."""
    best = starts[0]
    phi, value = best.phi, best.value
    ratio = profile_threshold(data)
    limit = value * ratio
    converged = sum(s.success for s in starts)
    shared_reasons: list[str] = []
    if not best.success:
        shared_reasons.append(f"the best of {len(starts)} L-BFGS-B starts did not converge ({best.message})")
    if converged < len(starts) / 2:
        shared_reasons.append(f"{len(starts) - converged} of {len(starts)} L-BFGS-B starts did not converge: a flat objective")
    prof = profiles(data, layout, phi, candidates, delta, lo, hi)
    lower = min([value] + [float(np.min(o)) for _, o, _ in prof.values()])
    if lower < value * (1 - 1e-6) - 1e-12:
        shared_reasons.append(f"a profile fit found a lower objective ({lower:.6g} < {value:.6g}): the optimiser missed "
                              "the best fit")
    fixed = {PARAMS[j]: _natural(PARAMS[j], lo[layout.index(0)[j]]) for j in range(5)
             if lo[layout.index(0)[j]] == hi[layout.index(0)[j]]}
    out = []
    for g, column in enumerate(layout.groups):
        idx = layout.index(g)
        theta = phi[idx]
        p = to_params(theta)
        mask = data.group == g
        log_n, log_d, log_l = data.log_n[mask], data.log_d[mask], data.log_l[mask]
        reasons, warnings = list(shared_reasons), []
        span = dict(N=float(np.ptp(log_n) / np.log(10)), D=float(np.ptp(log_d) / np.log(10)))
        for axis, decades in span.items():
            if decades < MIN_SPAN_DECADES:
                warnings.append(f"{axis} spans {decades:.2f} decades (< {MIN_SPAN_DECADES:g}): exponents and any "
                                "extrapolation rest on a narrow range")
        at_bounds = []
        for j, name in enumerate(PARAMS):
            i = idx[j]
            if lo[i] == hi[i]:
                continue
            for side, bound in (("lower", lo[i]), ("upper", hi[i])):
                if np.isfinite(bound) and abs(phi[i] - bound) <= 1e-6 * (1 + abs(bound)):
                    at_bounds.append(dict(parameter=name, side=side, bound=_natural(name, bound)))
                    reasons.append(f"{name} = {_fmt(p[name])} sits at its {side} bound")
        runaway = [name for name in PARAMS if not np.isfinite(p[name])]
        if runaway:
            reasons.append(f"{', '.join(runaway)} ran off to infinity: the data do not bound the fit")
        min_loss = float(np.exp(log_l.min()))
        if "E" not in fixed and p["E"] < E_EDGE_FRACTION * min_loss:
            reasons.append(f"E = {_fmt(p['E'])} is below {E_EDGE_FRACTION:g} x the smallest loss ({_fmt(min_loss)}): "
                           "the irreducible term collapsed to zero")
        for name, exponent, logs, term in (("alpha", "alpha", log_n, "A/N^alpha"), ("beta", "beta", log_d, "B/D^beta")):
            change = p[exponent] * float(np.ptp(logs))
            if name not in fixed and change < np.log1p(TERM_CHANGE_MIN):
                reasons.append(f"{term} changes by {100 * np.expm1(change):.1f}% across the runs ({name} = "
                               f"{_fmt(p[name])}): it acts as a constant that trades off against E")
        ties = []
        for s in starts[1:]:
            if not (np.isfinite(s.value) and s.value <= limit):
                continue
            other = s.phi[idx]
            if abs(other[3] - theta[3]) > TIE_ALPHA or abs(other[4] - theta[4]) > TIE_ALPHA or abs(other[0] - theta[0]) > TIE_LOG_E:
                if any(np.abs(other - t["theta"]).max() < 1e-3 for t in ties):
                    continue
                ties.append(dict(theta=other, objective=s.value, **to_params(other),
                                 a=compute_optimal(to_params(other), flops)["a"]))
        if ties:
            t = ties[0]
            reasons.append(f"{len(ties)} other optimum(s) fit within the 95% threshold but disagree (e.g. E {_fmt(t['E'])}, "
                           f"alpha {_fmt(t['alpha'])}, beta {_fmt(t['beta'])} vs E {_fmt(p['E'])}, alpha {_fmt(p['alpha'])}, "
                           f"beta {_fmt(p['beta'])})")
        profile_json: dict[str, Any] = {}
        allowed_phis = [phi]
        for (pg, name), (vals, objs, fitted) in prof.items():
            if pg != g and name == "E":
                continue
            ok = objs <= limit
            allowed_phis += list(fitted[ok])
            natural = [_natural(name, v) for v in vals]
            entry = dict(values=natural, objective=[float(o) for o in objs], threshold=limit,
                         flat_range=[float(min(np.array(natural)[ok])), float(max(np.array(natural)[ok]))] if ok.any() else None)
            edge = [side for side, hit in (("lower", ok[0]), ("upper", ok[-1])) if hit]
            entry["reaches_edge"] = edge
            profile_json[name] = entry
            if edge:
                lo_v, hi_v = entry["flat_range"] or (natural[0], natural[-1])
                reasons.append(f"{name} is not pinned down: any {name} in [{_fmt(lo_v)}, {_fmt(hi_v)}] fits within the 95% "
                               f"profile threshold (objective +{100 * (ratio - 1):.1f}% allowed), reaching the "
                               f"{' and '.join(edge)} edge of the admissible range")
        allowed = np.array([a[idx] for a in allowed_phis])
        optimal = [compute_optimal(to_params(t), flops) for t in allowed]
        ranges = {name: [float(min(_natural(name, v) for v in allowed[:, j])), float(max(_natural(name, v) for v in allowed[:, j]))]
                  for j, name in enumerate(PARAMS)}
        for key in ("a", "b"):
            ranges[key] = [float(np.nanmin([o[key] for o in optimal])), float(np.nanmax([o[key] for o in optimal]))]
        reasons = list(dict.fromkeys(reasons))
        out.append(dict(
            identifiable=not reasons,
            reasons=reasons,
            warnings=warnings,
            convergence=dict(starts=len(starts), converged=converged, best_converged=best.success,
                             messages=sorted({s.message for s in starts if not s.success})),
            at_bounds=at_bounds,
            near_ties=[{k: v for k, v in t.items() if k != "theta"} for t in ties],
            span_decades=span,
            profile_threshold_ratio=ratio,
            profiles=profile_json,
            allowed_ranges=ranges,
            allowed_ranges_rule="min/max over the fit and every profile refit within the 95% threshold",
        ))
    return out


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
    flops: FlopsModel
    n_bootstrap: int
    seed: int
    level: float = 0.95
    notes: list[str] = dataclasses.field(default_factory=list)
    diagnostics: dict[str, Any] = dataclasses.field(default_factory=dict)
    constraints: dict[str, Any] = dataclasses.field(default_factory=dict)
    n_label: str = "parameters N"  # names the N convention on every axis and table
    validation: dict[str, Any] | None = None

    @property
    def identifiable(self) -> bool:
        return bool(self.diagnostics.get("identifiable", True))

    @property
    def reasons(self) -> list[str]:
        return list(self.diagnostics.get("reasons", []))

    def label(self) -> str:
        """The constraints in words, for titles and tables ('' when none)."""
        parts = [f"{k} fixed at {_fmt(v['value'])} ({v['source']})" for k, v in self.constraints.get("fixed", {}).items()]
        shared = self.constraints.get("shared")
        if shared:
            parts.append(f"{', '.join(shared['parameters'])} shared across {', '.join(shared['with'])}")
        return "; ".join(parts)

    # -- intervals ------------------------------------------------------------------------------
    def _quantiles(self, values: np.ndarray) -> tuple[float, float]:
        tail = (1.0 - self.level) / 2.0
        with np.errstate(invalid="ignore"):  # a runaway replicate (inf) makes that end of the interval inf / nan
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
        opts = [compute_optimal(d, self.flops) for d in named]
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
        point = np.exp(predict_log_loss(self.theta, log_n.ravel(), log_d.ravel())).reshape(np.shape(log_n))
        if len(self.bootstrap) < 2:
            return dict(loss=point, conf_lo=point, conf_hi=point, pred_lo=point, pred_hi=point)
        boot_log = predict_log_loss(self.bootstrap, log_n.ravel(), log_d.ravel())
        rng = np.random.default_rng(self.seed + 1 if seed is None else seed)
        noise = rng.choice(self.log_residuals, size=boot_log.shape, replace=True)
        tail = (1.0 - self.level) / 2.0
        conf = np.exp(np.quantile(boot_log, [tail, 1 - tail], axis=0)).reshape((2, *np.shape(point)))
        pred = np.exp(np.quantile(boot_log + noise, [tail, 1 - tail], axis=0)).reshape((2, *np.shape(point)))
        return dict(loss=point, conf_lo=conf[0], conf_hi=conf[1], pred_lo=pred[0], pred_hi=pred[1])

    def compute_optimal(self) -> dict[str, float]:
        return compute_optimal(self.params, self.flops)

    def to_json(self) -> dict[str, Any]:
        """fit.json: `identifiable` (quote a fit only when true) and `status`; E, A, B, alpha, beta, a, b (point
        estimates) with `ci95` (bootstrap percentile intervals) and `compute_optimal` (+ its `ci95`);
        `diagnostics` (reasons, warnings, convergence, at_bounds, near_ties, span_decades, profiles with their
        flat_range and reaches_edge, allowed_ranges); `validation` (held-out error, its interval, runs); `constraints`
        (fixed parameters with their source, shared exponents); `compute` (F(N) = k N^p and its source);
        `n_convention`. Non-finite numbers are written as null."""
        ci = self.intervals()
        opt = self.compute_optimal()
        return _json_safe(dict(
            law=LAW,
            loss_column=self.loss_column,
            n_convention=self.n_label,
            identifiable=self.identifiable,
            status="identified" if self.identifiable else "not identifiable: not a finding (see diagnostics.reasons)",
            **self.params,
            ci95={p: ci[p] for p in PARAMS} if ci else {},
            ci_level=self.level,
            n_points=self.n_points,
            huber_delta=self.huber_delta,
            objective=self.objective,
            n_bootstrap=self.n_bootstrap,
            n_bootstrap_ok=int(len(self.bootstrap)),
            bootstrap_starts=f"per replicate: its {GRID_STARTS_PER_REPLICATE} best grid points and the full-data optimum",
            seed=self.seed,
            constraints=self.constraints,
            compute=self.flops.to_json(),
            compute_optimal=dict(
                **opt,
                formula="N*(C) = N_coefficient * C^a, D*(C) = D_coefficient * C^b, C = k * N^p * D (see compute)",
                ci95={k: ci[k] for k in opt} if ci else {},
            ),
            a=opt["a"],
            b=opt["b"],
            diagnostics=self.diagnostics,
            validation=self.validation,
            notes=list(self.notes),
        ))


def _check_arrays(n: np.ndarray, d: np.ndarray, losses: Mapping[str, np.ndarray], weights: np.ndarray | None) -> np.ndarray:
    if not (n.ndim == 1 and n.shape == d.shape and all(y.shape == n.shape for y in losses.values())):
        raise AnalysisError(f"N, D and loss must be 1-D arrays of equal length, got {n.shape}, {d.shape}, "
                            f"{[y.shape for y in losses.values()]}")
    for name, x in (("params", n), ("tokens", d), *losses.items()):
        if not (np.isfinite(x).all() and (x > 0).all()):
            raise AnalysisError(f"{name}: values must be finite and positive")
    table.require_points(len(n), N_PARAMS, "the parametric fit L(N, D)")
    for axis, x, what in (("N", n, "A and alpha"), ("D", d, "B and beta")):
        if np.ptp(np.log(x)) < 1e-9:
            raise AnalysisError(f"every run has the same {axis} ({x[0]:.4g}): {axis} is not identifiable ({what} cannot be "
                                f"fitted); vary {axis} across runs")
    for name, y in losses.items():
        if np.ptp(np.log(y)) < 1e-12:
            raise AnalysisError(f"{name}: every loss is equal ({y[0]:.6g}): nothing to fit")
    w = np.ones_like(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if w.shape != n.shape or not (np.isfinite(w).all() and (w >= 0).all() and w.sum() > 0):
        raise AnalysisError("weights must be finite, non-negative, not all zero, one per point")
    return w


def _constraints(layout: Layout, fixed: Mapping[str, float] | None, fixed_source: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if fixed:
        out["fixed"] = {k: dict(value=float(v), source=fixed_source or "given by the user") for k, v in fixed.items()}
    if layout.shared:
        out["shared"] = dict(parameters=list(layout.shared), **{"with": list(layout.groups)})
    return out


def _fit_data(data: Data, layout: Layout, *, delta: float, lo: np.ndarray, hi: np.ndarray, grid, n_starts: int,
              n_bootstrap: int, seed: int, workers: int | None, backend: str, flops: FlopsModel, diagnostics: bool):
    candidates = candidate_starts(data, layout, lo, hi, delta, grid)
    starts = multistart(data, candidates, delta, lo, hi, n_starts)
    best = starts[0]
    if not np.isfinite(best.value):
        raise AnalysisError("the fit failed: no start reached a finite objective")
    boot = bootstrap_phis(data, candidates, best.phi, delta, lo, hi, n_bootstrap=n_bootstrap, seed=seed,
                          workers=workers, backend=backend)
    diag = diagnose(data, layout, starts, candidates, delta, lo, hi, flops) if diagnostics else [{} for _ in layout.groups]
    return best, boot, diag


def _interval_reasons(diag: dict[str, Any], theta: np.ndarray, boot: np.ndarray, level: float) -> None:
    """An exponent whose bootstrap interval is wider than the exponent itself is not determined by the data."""
    if not diag or len(boot) < MIN_BOOTSTRAP_FOR_WIDTH:
        return
    tail = (1 - level) / 2
    for j, name in ((3, "alpha"), (4, "beta")):
        if np.ptp(boot[:, j]) == 0:  # fixed
            continue
        lo, hi = np.quantile(boot[:, j], [tail, 1 - tail])
        if hi - lo > abs(theta[j]) * MAX_RELATIVE_WIDTH:
            diag["reasons"].append(f"the {level:.0%} bootstrap interval of {name}, [{_fmt(lo)}, {_fmt(hi)}], is wider than "
                                   f"{name} itself ({_fmt(theta[j])}): the data do not determine it")
            diag["identifiable"] = False


def _views(data: Data, layout: Layout, best: Start, boot: np.ndarray, diag: list[dict], *, delta: float, n_bootstrap: int,
           seed: int, level: float, flops: FlopsModel, constraints: dict, n_label: str) -> dict[str, ScalingFit]:
    ok = np.isfinite(boot).all(axis=1)
    notes = [] if ok.all() else [f"{int((~ok).sum())} of {len(boot)} bootstrap refits failed and were skipped"]
    fits = {}
    for g, column in enumerate(layout.groups):
        theta = layout.theta(best.phi, g)
        _interval_reasons(diag[g], theta, layout.theta(boot[ok], g), level)
        mask = data.group == g
        residuals = data.log_l[mask] - predict_log_loss(theta, data.log_n[mask], data.log_d[mask])
        fits[column] = ScalingFit(
            params=to_params(theta), theta=theta, bootstrap=layout.theta(boot[ok], g), log_residuals=residuals,
            n_points=int(mask.sum()), huber_delta=delta, objective=best.value, loss_column=column, flops=flops,
            n_bootstrap=n_bootstrap, seed=seed, level=level, notes=list(notes), diagnostics=diag[g],
            constraints=constraints, n_label=n_label)
    return fits


def fit_laws(
    n: Any,
    d: Any,
    losses: Mapping[str, Any],
    *,
    shared: Sequence[str] = (),
    weights: Any = None,
    delta: float = DEFAULT_DELTA,
    bounds: Mapping[str, tuple[float | None, float | None]] | None = None,
    fixed: Mapping[str, float] | None = None,
    fixed_source: str | None = None,
    grid: Mapping[str, Sequence[float]] | None = None,
    n_starts: int = 16,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    workers: int | None = None,
    backend: str = "numpy",
    flops: FlopsModel | None = None,
    compute: Any = None,
    level: float = 0.95,
    n_label: str = "parameters N",
    diagnostics: bool = True,
    validate: bool = True,
) -> dict[str, ScalingFit]:
    """Fit one law per loss column (jointly, sharing the parameters named in `shared`), with diagnostics and
    validation by extrapolation. `compute` is each run's training FLOPs (default: flops.compute(N, D))."""
    n, d = np.asarray(n, dtype=np.float64), np.asarray(d, dtype=np.float64)
    losses = {k: np.asarray(v, dtype=np.float64) for k, v in losses.items()}
    if not losses:
        raise AnalysisError("no loss column to fit")
    if n_bootstrap < 0:
        raise AnalysisError(f"bootstrap replicates must be >= 0, got {n_bootstrap}")
    if delta <= 0:
        raise AnalysisError(f"huber delta must be positive, got {delta}")
    if not 0 < level < 1:
        raise AnalysisError(f"interval level must be in (0, 1), got {level}")
    unknown = sorted(set(shared) - {"alpha", "beta"})
    if unknown:
        raise AnalysisError(f"shared: only alpha and beta can be shared across loss columns, got {unknown}")
    if shared and len(losses) < 2:
        raise AnalysisError("shared exponents need at least two loss columns")
    w = _check_arrays(n, d, losses, weights)
    with threadpool_limits(1):  # tiny linear algebra: BLAS threads only contend
        return _fit_laws(n, d, losses, w, shared=shared, delta=delta, bounds=bounds, fixed=fixed,
                         fixed_source=fixed_source, grid=grid, n_starts=n_starts, n_bootstrap=n_bootstrap, seed=seed,
                         workers=workers, backend=backend, flops=flops, compute=compute, level=level,
                         n_label=n_label, diagnostics=diagnostics, validate=validate)


def _fit_laws(n, d, losses, w, *, shared, delta, bounds, fixed, fixed_source, grid, n_starts, n_bootstrap, seed,
              workers, backend, flops, compute, level, n_label, diagnostics, validate) -> dict[str, ScalingFit]:
    flops = flops or FlopsModel()
    layout = Layout(tuple(losses), tuple(p for p in ("alpha", "beta") if p in shared))
    lo, hi = phi_bounds(layout, bounds, fixed)
    data = stack_data(np.log(n), np.log(d), [np.log(y) for y in losses.values()], w, layout)
    options = dict(delta=delta, lo=lo, hi=hi, grid=grid, n_starts=n_starts, workers=workers, backend=backend, flops=flops)
    best, boot, diag = _fit_data(data, layout, n_bootstrap=n_bootstrap, seed=seed, diagnostics=diagnostics, **options)
    fits = _views(data, layout, best, boot, diag, delta=delta, n_bootstrap=n_bootstrap, seed=seed, level=level,
                  flops=flops, constraints=_constraints(layout, fixed, fixed_source), n_label=n_label)
    if validate:
        compute = flops.compute(n, d) if compute is None else np.asarray(compute, float)
        for column, result in validate_by_extrapolation(data, layout, compute, n, d, losses, n_bootstrap=n_bootstrap,
                                                        seed=seed, level=level, **options).items():
            fits[column].validation = result
    return fits


def fit_arrays(n: Any, d: Any, loss: Any, *, loss_column: str = "loss", **kwargs: Any) -> ScalingFit:
    """Fit L(N, D) to arrays of positive, finite numbers (see `fit_scaling_law` for tables)."""
    return fit_laws(n, d, {loss_column: loss}, **kwargs)[loss_column]


# ---------------------------------------------------------------------------------------------
# Validation by extrapolation
# ---------------------------------------------------------------------------------------------
HOLDOUT_FRACTION = 0.2
VALIDATION_BOOTSTRAP = 200  # replicates for the held-out error's interval (at most the fit's own number)
BUDGET_TOLERANCE = 0.25  # runs within 25% of each other's compute share a budget (as in analysis.isoflop)


def holdout_runs(compute: np.ndarray) -> np.ndarray:
    """The largest-compute runs: the top HOLDOUT_FRACTION by compute (at least one), widened to whole budgets
    (runs within BUDGET_TOLERANCE of the smallest held-out compute are held out too)."""
    order = np.argsort(compute)[::-1]
    m = max(1, int(np.ceil(HOLDOUT_FRACTION * len(compute))))
    threshold = compute[order[m - 1]] / (1.0 + BUDGET_TOLERANCE)
    return np.flatnonzero(compute > threshold)


def validate_by_extrapolation(data: Data, layout: Layout, compute: np.ndarray, n: np.ndarray, d: np.ndarray,
                              losses: Mapping[str, np.ndarray], *, n_bootstrap: int, seed: int, level: float,
                              **options: Any) -> dict[str, dict[str, Any]]:
    """Refit on all but the largest-compute runs and predict those: relative errors with a bootstrap interval
    (parameter uncertainty of the reduced fit), and how many held-out runs fall inside the prediction band."""
    held = holdout_runs(compute)
    train = np.setdiff1d(np.arange(len(compute)), held)
    rule = (f"held out the largest-compute runs (top {HOLDOUT_FRACTION:.0%}, widened to whole budgets): "
            f"{len(held)} runs with C >= {compute[held].min():.3g} FLOPs; fitted on {len(train)} runs with C <= "
            f"{compute[train].max() if len(train) else float('nan'):.3g}")
    skip = None
    if len(train) <= N_PARAMS:
        skip = f"too few runs left to fit ({len(train)})"
    elif np.ptp(np.log(n[train])) < 1e-9 or np.ptp(np.log(d[train])) < 1e-9:
        skip = "the remaining runs do not vary both N and D"
    if skip:
        return {c: dict(skipped=f"validation by extrapolation not possible: {skip}", rule=rule) for c in layout.groups}
    sub = data.subset(train)
    n_bootstrap = min(n_bootstrap, VALIDATION_BOOTSTRAP)
    try:
        best, boot, diag = _fit_data(sub, layout, n_bootstrap=n_bootstrap, seed=seed, diagnostics=True, **options)
    except AnalysisError as e:
        return {c: dict(skipped=f"validation fit failed: {e}", rule=rule) for c in layout.groups}
    ok = np.isfinite(boot).all(axis=1)
    out = {}
    tail = (1 - level) / 2
    for g, column in enumerate(layout.groups):
        theta, thetas = layout.theta(best.phi, g), layout.theta(boot[ok], g)
        log_n, log_d = np.log(n[held]), np.log(d[held])
        observed = losses[column][held]
        predicted = np.exp(predict_log_loss(theta, log_n, log_d))
        rel = predicted / observed - 1.0
        entry: dict[str, Any] = dict(
            rule=rule, held_out=int(len(held)), trained_on=int(len(train)), n_bootstrap=n_bootstrap,
            train_identifiable=bool(diag[g].get("identifiable", True)), train_reasons=diag[g].get("reasons", []),
            mean_abs_rel_error=float(np.mean(np.abs(rel))), max_abs_rel_error=float(np.max(np.abs(rel))),
            mean_rel_error=float(np.mean(rel)),
            runs=[dict(N=float(a), D=float(b), compute=float(c), observed=float(o), predicted=float(p))
                  for a, b, c, o, p in zip(n[held], d[held], compute[held], observed, predicted)],
        )
        if len(thetas) >= 2:
            boot_pred = np.exp(predict_log_loss(thetas, log_n, log_d))  # (R, m)
            boot_err = np.mean(np.abs(boot_pred / observed - 1.0), axis=1)
            entry["mean_abs_rel_error_ci"] = [float(x) for x in np.quantile(boot_err, [tail, 1 - tail])]
            mask = sub.group == g
            resid = sub.log_l[mask] - predict_log_loss(theta, sub.log_n[mask], sub.log_d[mask])
            noise = np.random.default_rng(seed + 2).choice(resid, size=boot_pred.shape)
            band = np.exp(np.quantile(np.log(boot_pred) + noise, [tail, 1 - tail], axis=0))
            entry["inside_prediction_band"] = int(((observed >= band[0]) & (observed <= band[1])).sum())
            for run, lo_b, hi_b in zip(entry["runs"], band[0], band[1]):
                run["prediction_band"] = [float(lo_b), float(hi_b)]
        out[column] = entry
    return out


# ---------------------------------------------------------------------------------------------
# Tables: columns, N convention, compute
# ---------------------------------------------------------------------------------------------
N_CONVENTIONS = ("non-embedding", "total")
NON_EMBEDDING_COLUMNS = ("params_nonembedding", "params")  # the suite's `params` is non-embedding
TOTAL_COLUMNS = ("params_total",)


def params_column(df: pd.DataFrame, convention: str = "non-embedding") -> tuple[str, str]:
    """(column, axis label) for the N convention. A table with neither suite column is taken as given."""
    if convention not in N_CONVENTIONS:
        raise AnalysisError(f"parameter convention {convention!r}: allowed: {', '.join(N_CONVENTIONS)}")
    if convention == "total":
        table.require_columns(df, TOTAL_COLUMNS, what="N with embedding parameters (--params total)")
        return "params_total", "total parameters N (with embeddings)"
    column = table.first_present(df, NON_EMBEDDING_COLUMNS)
    if column is None:
        table.require_columns(df, ["params"], what="the scaling-law fit")
    ours = column == "params_nonembedding" or "params_total" in df.columns
    return column, ("non-embedding parameters N" if ours else f"parameters N (column {column!r} as given)")


def embedding_heavy(df: pd.DataFrame) -> bool:
    """True when both conventions are logged and the embeddings are a large share of the median run."""
    column = table.first_present(df, NON_EMBEDDING_COLUMNS)
    if column is None or "params_total" not in df.columns:
        return False
    ratio = pd.to_numeric(df["params_total"], errors="coerce") / pd.to_numeric(df[column], errors="coerce")
    return bool(np.nanmedian(ratio.to_numpy(float)) > EMBEDDING_HEAVY_RATIO)


def table_compute(df: pd.DataFrame, n: np.ndarray, d: np.ndarray) -> tuple[FlopsModel, np.ndarray]:
    """The FLOPs-per-token model F(N) = k N^p and each run's compute, from the logs when they have them:
    `flops_per_token`, else `flops` / tokens; a table without either (a published one) assumes C = 6 N D."""
    if "flops_per_token" in df.columns:
        per_token = table.positive_column(df, "flops_per_token")
        model = fit_flops_model(n, per_token, "fitted to the logged flops_per_token")
        compute = table.positive_column(df, "flops") if "flops" in df.columns else per_token * d
        return model, compute
    if "flops" in df.columns:
        compute = table.positive_column(df, "flops")
        return fit_flops_model(n, compute / d, "fitted to the logged flops / tokens"), compute
    model = FlopsModel()
    return model, model.compute(n, d)


def fit_table(
    df: pd.DataFrame,
    losses: Sequence[str] = ("loss",),
    *,
    params: str = "non-embedding",
    tokens_column: str = "tokens",
    weights_column: str | None = None,
    **kwargs: Any,
) -> dict[str, ScalingFit]:
    """Fit a results table: rows not `complete` are dropped (noted); missing or bad columns are errors."""
    column, n_label = params_column(df, params)
    table.require_columns(df, [column, tokens_column], what="the scaling-law fit")
    for loss in losses:
        if loss not in df.columns:
            raise AnalysisError(
                f"{df.attrs.get('source', 'results table')}: loss column {loss!r} does not exist; "
                f"columns present: {', '.join(map(str, df.columns))}"
            )
    df, notes = table.keep_complete(df)
    table.require_points(len(df), N_PARAMS, "the parametric fit L(N, D)", df)
    n = table.positive_column(df, column)
    d = table.positive_column(df, tokens_column)
    ys = {loss: table.positive_column(df, loss) for loss in losses}
    weights = table.finite_column(df, weights_column) if weights_column else None
    flops, compute = table_compute(df, n, d)
    fits = fit_laws(n, d, ys, weights=weights, flops=flops, compute=compute, n_label=n_label, **kwargs)
    for fit in fits.values():
        fit.notes[:0] = notes
        if flops.max_rel_error > 0.05:
            fit.notes.append(f"FLOPs per token follow k N^p only to within {flops.max_rel_error:.0%} over these runs")
    return fits


def fit_scaling_law(df: pd.DataFrame, loss: str = "loss", **kwargs: Any) -> ScalingFit:
    """One law for one loss column of a results table (see `fit_table`)."""
    return fit_table(df, (loss,), **kwargs)[loss]


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
