"""Hyperparameter transfer: loss against learning rate per width (per depth), standard vs CompleteP.

* `transfer_curves`: per (parameterisation, axis, size, lr) the mean loss over seeds with its 95% t-interval.
  `axis` is "width" (runs at the most common depth) or "depth" (runs at the most common width); the shape
  both grids share belongs to both.
* `lr_optima`: the loss-optimal lr per curve (vertex of the parabola in log lr through the best grid point and
  its neighbours, `analysis.batch.log_vertex`), flagged when it sits at the edge of the lr grid (only a bound).
* `transfer_summary`: per (parameterisation, axis) the spread of the optimum across sizes in lr grid steps
  (log2 of max/min optimum divided by log2 of the grid ratio) and its slope per doubling of the size, each with
  a percentile bootstrap interval over seeds (runs resampled within each point). The claim under test: under
  CompleteP the optimum moves by at most one grid step; under the standard parameterisation it drifts.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from analysis import table
from analysis.batch import log_vertex
from analysis.errors import AnalysisError
from analysis.schedules import t_interval

LR_COLUMNS = ("optim.lr", "lr")
WIDTH_COLUMNS = ("model.width", "width")
DEPTH_COLUMNS = ("model.depth", "depth")
PARAM_COLUMNS = ("optim.completep", "completep")
SP, COMPLETEP = "standard", "CompleteP"


def applies(df: pd.DataFrame) -> bool:
    """The table is a transfer sweep: the lr varies and so does the width or the depth."""
    lr = table.first_present(df, LR_COLUMNS)
    sizes = [table.first_present(df, c) for c in (WIDTH_COLUMNS, DEPTH_COLUMNS)]
    return table.varying(df, lr) and any(table.varying(df, c) for c in sizes)


def run_table(df: pd.DataFrame, loss: str = "loss") -> pd.DataFrame:
    """One row per complete run: parameterisation, width, depth, lr, loss."""
    columns = {name: table.first_present(df, c) for name, c in
               (("lr", LR_COLUMNS), ("width", WIDTH_COLUMNS), ("depth", DEPTH_COLUMNS), ("param", PARAM_COLUMNS))}
    missing = [k for k in ("lr", "width", "depth") if columns[k] is None]
    if missing or loss not in df.columns:
        raise AnalysisError(f"transfer analysis needs lr, width, depth and {loss!r} columns; missing: "
                            f"{', '.join(missing + ([loss] if loss not in df.columns else []))}")
    df, _ = table.keep_complete(df)
    if df.empty:
        raise AnalysisError("transfer analysis: no complete runs")
    param = df[columns["param"]].map(lambda v: COMPLETEP if str(v).strip().lower() in ("true", "1", "1.0") else SP) \
        if columns["param"] else pd.Series(SP, index=df.index)
    return pd.DataFrame(dict(param=param.to_numpy(), width=table.positive_column(df, columns["width"]),
                             depth=table.positive_column(df, columns["depth"]), lr=table.positive_column(df, columns["lr"]),
                             loss=table.finite_column(df, loss)), index=df.index)


def _axes(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(axis, runs with a `size` column): the width grid at the most common depth, the depth grid at the most common width."""
    out = []
    for axis, other in (("width", "depth"), ("depth", "width")):
        fixed = runs[other].mode().iloc[0]
        sel = runs[runs[other] == fixed]
        if sel[axis].nunique() >= 2:
            out.append((axis, sel.assign(size=sel[axis])))
    if not out:
        raise AnalysisError("transfer analysis: neither the width nor the depth takes 2 values at a fixed other dimension")
    return out


def transfer_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Columns: param, axis, size, lr, loss (mean over seeds), ci_lo, ci_hi, n_runs."""
    rows = []
    for axis, sel in _axes(runs):
        for (param, size, lr), g in sel.groupby(["param", "size", "lr"]):
            mean, lo, hi = t_interval(g.loss.to_numpy(float))
            rows.append(dict(param=param, axis=axis, size=size, lr=lr, loss=mean, ci_lo=lo, ci_hi=hi, n_runs=len(g)))
    return pd.DataFrame(rows)


def lr_optima(curves: pd.DataFrame) -> pd.DataFrame:
    """The loss-optimal lr per (param, axis, size) curve, flagged `at_edge` when it is only a bound."""
    rows = []
    for (param, axis, size), g in curves.groupby(["param", "axis", "size"]):
        if len(g) < 3:
            continue
        lr, edge = log_vertex(g.lr.to_numpy(float), g.loss.to_numpy(float))
        rows.append(dict(param=param, axis=axis, size=size, lr_opt=lr, at_edge=edge, best_loss=float(g.loss.min())))
    return pd.DataFrame(rows)


def _grid_ratio(lrs: np.ndarray) -> float:
    u = np.unique(lrs)
    return float(np.exp(np.median(np.diff(np.log(u))))) if len(u) > 1 else 2.0


def _shift_and_slope(optima: pd.DataFrame, ratio: float) -> tuple[float, float]:
    log_opt = np.log(optima.lr_opt.to_numpy(float))
    shift = (log_opt.max() - log_opt.min()) / math.log(ratio)
    slope = float(np.polyfit(np.log2(optima["size"].to_numpy(float)), np.log2(optima.lr_opt.to_numpy(float)), 1)[0])
    return float(shift), slope


@dataclasses.dataclass
class TransferResult:
    curves: pd.DataFrame
    optima: pd.DataFrame
    summary: pd.DataFrame  # param, axis, sizes, shift_steps (+ci), slope per doubling (+ci), edge optima
    grid_ratio: float

    def to_json(self) -> dict[str, Any]:
        return dict(curves=self.curves.to_dict(orient="records"), optima=self.optima.to_dict(orient="records"),
                    summary=self.summary.to_dict(orient="records"), grid_ratio=self.grid_ratio)


def transfer_summary(df: pd.DataFrame, loss: str = "loss", *, n_bootstrap: int = 1000, seed: int = 0) -> TransferResult:
    """Curves, optima and per (param, axis) the optimum's spread in grid steps and its slope, with bootstrap intervals."""
    if n_bootstrap < 0:
        raise AnalysisError(f"bootstrap {n_bootstrap}: the number of resamples must be >= 0")
    runs = run_table(df, loss)
    curves = transfer_curves(runs)
    optima = lr_optima(curves)
    if optima.empty:
        raise AnalysisError("transfer analysis: no curve has >= 3 learning rates")
    ratio = _grid_ratio(runs.lr.to_numpy())
    rng = np.random.default_rng(seed)
    rows = []
    for (param, axis), opt in optima.groupby(["param", "axis"]):
        if len(opt) < 2:
            continue
        shift, slope = _shift_and_slope(opt, ratio)
        boot = _bootstrap(runs, param, axis, ratio, n_bootstrap, rng)
        ci = (lambda a: [float(np.percentile(a, 2.5)), float(np.percentile(a, 97.5))] if len(a) >= 20 else None)
        rows.append(dict(param=param, axis=axis, sizes=[float(s) for s in opt["size"]],
                         lr_opt=[float(v) for v in opt.lr_opt], shift_steps=shift,
                         shift_ci95=ci(boot[:, 0]) if len(boot) else None, slope_per_doubling=slope,
                         slope_ci95=ci(boot[:, 1]) if len(boot) else None, edge_optima=int(opt.at_edge.sum()),
                         within_one_step=bool(shift <= 1.0 + 1e-9)))
    return TransferResult(curves, optima, pd.DataFrame(rows), ratio)


def _bootstrap(runs: pd.DataFrame, param: str, axis: str, ratio: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """(shift, slope) refitted on runs resampled with replacement within each (size, lr) point."""
    sel = dict(_axes(runs[runs.param == param]))[axis]
    curves = []
    for size, g in sel.groupby("size"):
        by_lr = [(lr, h.loss.to_numpy(float)) for lr, h in g.groupby("lr")]
        if len(by_lr) >= 3:
            curves.append((size, np.array([lr for lr, _ in by_lr]), [y for _, y in by_lr]))
    out = []
    for _ in range(n if len(curves) >= 2 else 0):
        opt = [(size, log_vertex(lrs, np.array([y[rng.integers(0, len(y), len(y))].mean() for y in ys]))[0])
               for size, lrs, ys in curves]
        out.append(_shift_and_slope(pd.DataFrame(opt, columns=["size", "lr_opt"]), ratio))
    return np.asarray(out).reshape(-1, 2)


def synthetic_transfer_table(
    widths=(16, 32, 64, 128), lrs=tuple(1.5e-3 * 2.0**k for k in range(6)), *, sp_exponent: float = -1.0,
    lr_base: float = 6e-3, width_base: int = 32, depth: int = 2, seeds: int = 2, noise: float = 0.0, seed: int = 0,
) -> pd.DataFrame:
    """Known answers: loss = 3 + 0.1 log2(lr / lr*)^2 with lr* = lr_base under CompleteP and
    lr_base (width / width_base)^sp_exponent under the standard parameterisation."""
    rng = np.random.default_rng(seed)
    rows = []
    for completep in (False, True):
        for w in widths:
            lr_star = lr_base if completep else lr_base * (w / width_base) ** sp_exponent
            for lr in lrs:
                for s in range(seeds):
                    rows.append({"model.width": w, "model.depth": depth, "optim.completep": completep, "optim.lr": lr,
                                 "seed": s, "loss": 3 + 0.1 * math.log2(lr / lr_star) ** 2 + noise * rng.standard_normal(),
                                 "status": "complete"})
    return pd.DataFrame(rows)
