"""Transfer analysis on tables whose optimal learning rates are known by construction (analysis/transfer.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis import transfer
from analysis.errors import AnalysisError


def _row(result, param, axis="width"):
    s = result.summary
    return s[(s.param == param) & (s.axis == axis)].iloc[0]


def test_optimal_lr_recovered_per_width():
    # lr* = 6e-3 (w / 32)^-1 under SP: 12e-3, 6e-3, 3e-3, 1.5e-3 for widths 16 ... 128; CompleteP keeps 6e-3.
    df = transfer.synthetic_transfer_table(lrs=tuple(0.75e-3 * 2.0**k for k in range(7)))
    result = transfer.transfer_summary(df, n_bootstrap=0)
    opt = result.optima.set_index(["param", "size"]).lr_opt
    for w in (16, 32, 64, 128):
        assert opt[(transfer.COMPLETEP, w)] == pytest.approx(6e-3, rel=1e-6)
        assert opt[(transfer.SP, w)] == pytest.approx(6e-3 * 32 / w, rel=1e-6)
    assert result.grid_ratio == pytest.approx(2.0)
    sp, cp = _row(result, transfer.SP), _row(result, transfer.COMPLETEP)
    assert sp.shift_steps == pytest.approx(3.0) and sp.slope_per_doubling == pytest.approx(-1.0)  # 8x = 3 doublings
    assert cp.shift_steps == pytest.approx(0.0, abs=1e-9) and cp.within_one_step and not sp.within_one_step


def test_edge_optima_are_flagged():
    # The grid stops at 6e-3: the SP optimum of width 16 (1.2e-2) lies beyond it.
    df = transfer.synthetic_transfer_table(lrs=(1.5e-3, 3e-3, 6e-3))
    result = transfer.transfer_summary(df, n_bootstrap=0)
    edge = result.optima[result.optima.at_edge]
    assert (transfer.SP, 16) in set(zip(edge.param, edge["size"]))
    assert _row(result, transfer.SP).edge_optima >= 1


@pytest.mark.slow  # ~30 s on a busy 2-core machine
def test_bootstrap_interval_covers_the_known_slope():
    """Nominal 95% percentile intervals over 4 seeds (a little narrow at n = 4): most of 10 cover the truth."""
    hits = 0
    for trial in range(10):
        df = transfer.synthetic_transfer_table(lrs=tuple(0.75e-3 * 2.0**k for k in range(7)), seeds=4, noise=0.02, seed=trial)
        result = transfer.transfer_summary(df, n_bootstrap=200, seed=trial)
        (sp_lo, sp_hi), (cp_lo, cp_hi) = _row(result, transfer.SP).slope_ci95, _row(result, transfer.COMPLETEP).slope_ci95
        hits += (sp_lo <= -1.0 <= sp_hi) + (cp_lo <= 0.0 <= cp_hi)
    assert hits >= 14  # of 20 intervals


def test_depth_axis_uses_the_common_width():
    rows = []
    for depth in (2, 4, 8):
        for lr in (1e-3, 2e-3, 4e-3, 8e-3):
            for s in range(2):
                rows.append({"model.width": 32, "model.depth": depth, "optim.completep": True, "optim.lr": lr,
                             "seed": s, "loss": 3 + (math.log2(lr) - math.log2(2e-3 * 2 ** (depth / 4))) ** 2, "status": "complete"})
    import pandas as pd

    result = transfer.transfer_summary(pd.DataFrame(rows), n_bootstrap=0)
    assert set(result.summary.axis) == {"depth"}
    assert np.allclose(sorted(result.optima.lr_opt), [2e-3 * 2 ** (d / 4) for d in (2, 4, 8)], rtol=1e-6)


def test_needs_columns_and_curves():
    df = transfer.synthetic_transfer_table()
    with pytest.raises(AnalysisError, match="loss"):
        transfer.transfer_summary(df.drop(columns=["loss"]))
    with pytest.raises(AnalysisError, match=">= 3 learning rates"):
        transfer.transfer_summary(df[df["optim.lr"] < 3.1e-3], n_bootstrap=0)
    assert transfer.applies(df) and not transfer.applies(df[df["model.width"] == 32])
