"""Bootstrap refits of the parametric scaling law, all replicates at once, vectorised in numpy.

A bootstrap replicate resamples runs with replacement; that equals weighting each run by how often it was
drawn (a multinomial count), so every replicate has the same shapes and all of them are refitted together
as one array program: (replicates x warm starts) problems of 5 parameters each.

The solver is Levenberg-Marquardt on iteratively reweighted least squares (IRLS). For the Huber loss,
psi(r) = w(r) r with w(r) = min(1, delta / |r|), so the IRLS fixed point, sum_i w_i r_i J_i = 0, is exactly
a stationary point of the Huber objective: the same optimum the scalar L-BFGS-B fit finds (tested against
it). A step is kept only where it lowers the Huber objective; otherwise that problem's damping grows.
Warm-started at the full-data optimum, a few dozen iterations suffice; no compilation, no processes.
"""

from __future__ import annotations

import numpy as np

MAX_ITERS = 200
STEP_TOL = 1e-10


def _residuals_and_jacobian(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray):
    """r (P, n) = predicted - observed log loss and J (P, n, 5) = d r / d theta for P problems."""
    e, a, b, alpha, beta = (theta[:, i, None] for i in range(5))
    t1, t2 = a - alpha * log_n, b - beta * log_d
    t3 = np.broadcast_to(e, t1.shape)
    top = np.maximum(np.maximum(t1, t2), t3)
    x1, x2, x3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(t3 - top)
    total = x1 + x2 + x3
    s1, s2, s3 = x1 / total, x2 / total, x3 / total
    r = top + np.log(total) - log_l
    jac = np.stack([s3, s1, s2, -s1 * log_n, -s2 * log_d], axis=-1)
    return r, jac


def _huber_objective(r: np.ndarray, weights: np.ndarray, delta: float) -> np.ndarray:
    absr = np.abs(r)
    h = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
    return (weights * h).sum(axis=-1) / delta


def solve_batch(
    theta0: np.ndarray,
    weights: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_l: np.ndarray,
    delta: float,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    max_iters: int = MAX_ITERS,
    step_tol: float = STEP_TOL,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the weighted Huber objective for P problems at once; returns (theta (P, 5), value (P,))."""
    theta = np.clip(np.array(theta0, dtype=np.float64), lo, hi)
    r, jac = _residuals_and_jacobian(theta, log_n, log_d, log_l)
    value = _huber_objective(r, weights, delta)
    damping = np.full(len(theta), 1e-3)
    active = np.ones(len(theta), dtype=bool)
    eye = np.eye(5)
    for _ in range(max_iters):
        idx = np.flatnonzero(active)
        if not len(idx):
            break
        ra, ja = r[idx], jac[idx]
        irls = weights[idx] * np.minimum(1.0, delta / np.maximum(np.abs(ra), 1e-300))
        jt = ja.transpose(0, 2, 1)
        hess = np.matmul(jt * irls[:, None, :], ja)
        grad = np.matmul(jt, (irls * ra)[..., None])[..., 0]
        diag = np.einsum("pii->pi", hess)
        lhs = hess + damping[idx, None, None] * (diag[:, :, None] * eye + 1e-12 * eye)
        try:
            step = -np.linalg.solve(lhs, grad[..., None])[..., 0]
        except np.linalg.LinAlgError:  # some problem's system is singular: least-norm steps for all of them
            step = -(np.linalg.pinv(lhs) @ grad[..., None])[..., 0]
        candidate = np.clip(theta[idx] + step, lo, hi)
        rc, jc = _residuals_and_jacobian(candidate, log_n, log_d, log_l)
        vc = _huber_objective(rc, weights[idx], delta)
        better = np.isfinite(vc) & (vc <= value[idx])
        moved = np.abs(candidate - theta[idx]).max(axis=1)
        keep = idx[better]
        theta[keep], r[keep], jac[keep], value[keep] = candidate[better], rc[better], jc[better], vc[better]
        damping[keep] = np.maximum(damping[keep] / 3.0, 1e-12)
        damping[idx[~better]] *= 4.0
        done = (better & (moved < step_tol)) | (damping[idx] > 1e12)
        active[idx[done]] = False
    return theta, value


def refit_bootstrap(
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_l: np.ndarray,
    weights: np.ndarray,
    starts: np.ndarray,
    counts: np.ndarray,
    delta: float,
    bounds: list[tuple[float | None, float | None]] | None = None,
    *,
    chunk: int = 256,
) -> np.ndarray:
    """Best refit per replicate: counts (R, n) are draw counts per run, starts (S, 5) warm starts.

    Returns (R, 5) thetas; a row is NaN when no start gave a finite optimum.
    """
    n_rep, n_start = counts.shape[0], starts.shape[0]
    lo = np.array([-np.inf if not bounds or bd[0] is None else bd[0] for bd in (bounds or [(None, None)] * 5)])
    hi = np.array([np.inf if not bounds or bd[1] is None else bd[1] for bd in (bounds or [(None, None)] * 5)])
    w = counts * weights[None, :]
    w = w / w.sum(axis=1, keepdims=True)
    out = np.full((n_rep, 5), np.nan)
    for begin in range(0, n_rep, chunk):  # bounded memory: chunk x starts x n x 5 doubles at a time
        wc = w[begin : begin + chunk]
        theta0 = np.tile(starts, (len(wc), 1))  # replicate-major: row r * n_start + s
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            thetas, values = solve_batch(theta0, np.repeat(wc, n_start, axis=0), log_n, log_d, log_l, delta, lo, hi)
        thetas = thetas.reshape(len(wc), n_start, 5)
        values = np.where(np.isfinite(values), values, np.inf).reshape(len(wc), n_start)
        best = values.argmin(axis=1)
        chosen = thetas[np.arange(len(wc)), best]
        chosen[~np.isfinite(values.min(axis=1))] = np.nan
        out[begin : begin + chunk] = chosen
    return out
