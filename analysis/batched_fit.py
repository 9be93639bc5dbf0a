"""Many refits of the parametric scaling law at once, vectorised in numpy (bootstrap replicates, profiles).

A bootstrap replicate resamples runs with replacement; that equals weighting each run by how often it was
drawn (a multinomial count), so every replicate has the same shapes and all of them are refitted together
as one array program: (replicates x starts) problems of K parameters each. A profile point is a problem in
which one parameter is held fixed (its lower and upper bound equal).

Parameters: a problem's vector phi (K values) is laid out per observation by an index map `pidx` (n, 5):
observation i uses theta_i = phi[pidx[i]] = (log E, log A, log B, alpha, beta). One law has K = 5 and the
identity map; per-modality laws that share alpha and beta stack their observations and share those entries.

The solver is Levenberg-Marquardt on iteratively reweighted least squares (IRLS). For the Huber loss,
psi(r) = w(r) r with w(r) = min(1, delta / |r|), so the IRLS fixed point, sum_i w_i r_i J_i = 0, is exactly
a stationary point of the Huber objective: the same optimum the scalar L-BFGS-B fit finds (tested against
it). A step is kept only where it lowers the Huber objective; otherwise that problem's damping grows.
Fixed parameters (lo == hi) get a zero Jacobian column, so the others are solved for as if it were absent.
"""

from __future__ import annotations

import numpy as np

MAX_ITERS = 200
STEP_TOL = 1e-10


def identity_map(n: int) -> np.ndarray:
    """pidx of one law: every observation uses phi[0:5]."""
    return np.broadcast_to(np.arange(5), (n, 5))


def _residuals_and_jacobian(phi, pidx, log_n, log_d, log_l, fixed):
    """r (P, n) = predicted - observed log loss and J (P, n, K) = d r / d phi for P problems."""
    theta = phi[:, pidx]  # (P, n, 5)
    e, a, b, alpha, beta = (theta[..., i] for i in range(5))
    t1, t2 = a - alpha * log_n, b - beta * log_d
    top = np.maximum(np.maximum(t1, t2), e)
    x1, x2, x3 = np.exp(t1 - top), np.exp(t2 - top), np.exp(e - top)
    total = x1 + x2 + x3
    s1, s2, s3 = x1 / total, x2 / total, x3 / total
    r = top + np.log(total) - log_l
    jac_theta = np.stack([s3, s1, s2, -s1 * log_n, -s2 * log_d], axis=-1)
    k = phi.shape[1]
    if k == 5 and (pidx == np.arange(5)).all():
        jac = jac_theta
    else:
        jac = np.einsum("pnj,njk->pnk", jac_theta, np.eye(k)[pidx])  # one-hot (n, 5, K): shared entries add up
    if fixed is not None:
        jac = np.where(fixed[:, None, :], 0.0, jac)
    return r, jac


def _huber_objective(r: np.ndarray, weights: np.ndarray, delta: float) -> np.ndarray:
    absr = np.abs(r)
    h = np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta))
    return (weights * h).sum(axis=-1) / delta


def solve_batch(
    phi0: np.ndarray,
    weights: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_l: np.ndarray,
    delta: float,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    pidx: np.ndarray | None = None,
    max_iters: int = MAX_ITERS,
    step_tol: float = STEP_TOL,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise the weighted Huber objective for P problems at once.

    phi0 (P, K); weights (P, n); lo, hi (K,) or (P, K). Returns (phi (P, K), value (P,), converged (P,)):
    converged means the last accepted step moved every parameter by less than `step_tol`.
    """
    phi = np.array(phi0, dtype=np.float64)
    n_prob, k = phi.shape
    pidx = identity_map(len(log_n)) if pidx is None else pidx
    lo, hi = np.broadcast_to(lo, phi.shape), np.broadcast_to(hi, phi.shape)
    phi = np.clip(phi, lo, hi)
    fixed_all = lo == hi
    fixed = fixed_all if fixed_all.any() else None
    r, jac = _residuals_and_jacobian(phi, pidx, log_n, log_d, log_l, fixed)
    value = _huber_objective(r, weights, delta)
    damping = np.full(n_prob, 1e-3)
    active = np.ones(n_prob, dtype=bool)
    converged = np.zeros(n_prob, dtype=bool)
    eye = np.eye(k)
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
        lhs = lhs + fixed_all[idx][:, :, None] * eye  # a fixed parameter's row: step 0 (its gradient is 0)
        try:
            step = -np.linalg.solve(lhs, grad[..., None])[..., 0]
        except np.linalg.LinAlgError:  # some problem's system is singular: least-norm steps for all of them
            step = -(np.linalg.pinv(lhs) @ grad[..., None])[..., 0]
        candidate = np.clip(phi[idx] + step, lo[idx], hi[idx])
        rc, jc = _residuals_and_jacobian(candidate, pidx, log_n, log_d, log_l, None if fixed is None else fixed[idx])
        vc = _huber_objective(rc, weights[idx], delta)
        better = np.isfinite(vc) & (vc <= value[idx])
        moved = np.abs(candidate - phi[idx]).max(axis=1)
        keep = idx[better]
        phi[keep], r[keep], jac[keep], value[keep] = candidate[better], rc[better], jc[better], vc[better]
        damping[keep] = np.maximum(damping[keep] / 3.0, 1e-12)
        damping[idx[~better]] *= 4.0
        small = better & (moved < step_tol)
        converged[idx[small]] = True
        done = small | (damping[idx] > 1e12)
        active[idx[done]] = False
    return phi, value, converged


def refit_bootstrap(
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_l: np.ndarray,
    weights: np.ndarray,
    starts: np.ndarray,
    delta: float,
    lo: np.ndarray,
    hi: np.ndarray,
    *,
    pidx: np.ndarray | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """Best refit per replicate. weights (R, n): each replicate's observation weights; starts (R, S, K): its
    starting points. Returns (R, K); a row is NaN when no start gave a finite optimum."""
    n_rep, n_start, k = starts.shape
    out = np.full((n_rep, k), np.nan)
    for begin in range(0, n_rep, chunk):  # bounded memory: chunk x starts x n x K doubles at a time
        wc = weights[begin : begin + chunk]
        phi0 = starts[begin : begin + chunk].reshape(-1, k)  # replicate-major: row r * n_start + s
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            phis, values, _ = solve_batch(phi0, np.repeat(wc, n_start, axis=0), log_n, log_d, log_l, delta, lo, hi, pidx=pidx)
        phis = phis.reshape(len(wc), n_start, k)
        values = np.where(np.isfinite(values), values, np.inf).reshape(len(wc), n_start)
        best = values.argmin(axis=1)
        chosen = phis[np.arange(len(wc)), best]
        chosen[~np.isfinite(values.min(axis=1))] = np.nan
        out[begin : begin + chunk] = chosen
    return out
