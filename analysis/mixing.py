"""Modality-mixing analysis: per-modality loss across a simplex grid of mixing fractions.

Mix columns are found by name (`data.mix.<m>` from sweeps, or `mix_<m>`). The objective to minimise is a
weighted sum of per-modality losses, each optionally divided by its best value over the grid so modalities
with different loss scales count alike. Besides the best observed mix, a Scheffe quadratic mixture model
(sum b_i x_i + sum_{i<j} b_ij x_i x_j) is fitted to the objective when there are enough points and minimised
over a fine simplex grid: the predicted best mix, which may lie between grid points.

The trade-off curves put each modality's loss against its own share of the tokens (mean and 95% t-interval
over seeds). Training's own evaluation scores each run on validation batches drawn with that run's mix;
`common_token_losses` substitutes the `mdiff nelbo --mix ...` scores, which put every run on the same tokens.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from analysis import table
from analysis.errors import AnalysisError

MODALITY_LOSSES = ("loss_text", "loss_image", "loss_audio")
_MIX = re.compile(r"^(?:data\.mix\.|mix_)(\w+)$")


def mix_columns(df: pd.DataFrame) -> dict[str, str]:
    """modality -> mix column, for the columns that vary."""
    out = {}
    for column in df.columns:
        m = _MIX.match(str(column))
        if m and df[column].dropna().nunique() > 1:
            out[m.group(1)] = column
    return out


def mixture_table(df: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str], list[str]]:
    """Complete runs with fractions normalised to sum to one, averaged over repeats of the same mix."""
    columns = mix_columns(df)
    if len(columns) < 2:
        raise AnalysisError(
            "mixing analysis needs at least two varying mix columns (data.mix.<modality> or mix_<modality>); "
            f"columns present: {', '.join(map(str, df.columns))}"
        )
    df, notes = table.keep_complete(df)
    fractions = np.stack([table.finite_column(df, c) for c in columns.values()], axis=1)
    if (fractions < 0).any() or (fractions.sum(axis=1) <= 0).any():
        raise AnalysisError("mix fractions must be non-negative and not all zero")
    fractions = fractions / fractions.sum(axis=1, keepdims=True)
    losses = [c for c in MODALITY_LOSSES if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any()]
    frame = pd.DataFrame(np.round(fractions, 6), columns=list(columns), index=df.index)
    for c in losses + (["loss"] if "loss" in df.columns else []):
        frame[c] = pd.to_numeric(df[c], errors="coerce")
    grouped = frame.groupby(list(columns), as_index=False).mean(numeric_only=True)
    return grouped, columns, notes


def objective(frame: pd.DataFrame, weights: Mapping[str, float], normalise: bool = True) -> np.ndarray:
    """Weighted sum of the per-modality loss columns named in `weights` (each / its grid minimum if normalise)."""
    missing = [c for c in weights if c not in frame.columns]
    if missing:
        raise AnalysisError(f"mixing objective: loss column(s) {missing} do not exist; have {list(frame.columns)}")
    total = np.zeros(len(frame))
    for column, w in weights.items():
        values = frame[column].to_numpy(dtype=float)
        total += w * (values / np.nanmin(values) if normalise else values)
    return total


def _scheffe_features(x: np.ndarray) -> np.ndarray:
    pairs = [x[:, i] * x[:, j] for i, j in itertools.combinations(range(x.shape[1]), 2)]
    return np.column_stack([x, *pairs]) if pairs else x


def simplex_grid(k: int, divisions: int = 60) -> np.ndarray:
    """All points of the k-simplex with coordinates in multiples of 1/divisions."""
    pts = [c for c in itertools.product(range(divisions + 1), repeat=k - 1) if sum(c) <= divisions]
    return np.array([[*c, divisions - sum(c)] for c in pts], dtype=float) / divisions


@dataclasses.dataclass
class MixingResult:
    frame: pd.DataFrame  # per mix: fractions, per-modality losses, objective
    modalities: list[str]
    weights: dict[str, float]
    best_observed: dict[str, float]
    best_predicted: dict[str, float] | None
    notes: list[str]

    def to_json(self) -> dict[str, Any]:
        return dict(modalities=self.modalities, weights=self.weights, best_observed=self.best_observed,
                    best_predicted=self.best_predicted, grid=self.frame.to_dict(orient="records"), notes=self.notes)


def analyse_mixing(
    df: pd.DataFrame, weights: Mapping[str, float] | None = None, *, normalise: bool = True
) -> MixingResult:
    frame, columns, notes = mixture_table(df)
    modalities = list(columns)
    if weights is None:
        weights = {c: 1.0 for c in MODALITY_LOSSES if c in frame.columns} or {"loss": 1.0}
    frame = frame.assign(objective=objective(frame, weights, normalise))
    valid = frame[np.isfinite(frame.objective)]
    if valid.empty:
        raise AnalysisError("mixing objective is not finite for any mix (per-modality loss columns empty?)")
    best = valid.loc[valid.objective.idxmin()]
    best_observed = {**{m: float(best[m]) for m in modalities}, "objective": float(best.objective)}
    predicted = None
    x = valid[modalities].to_numpy()
    features = _scheffe_features(x)
    if len(valid) > features.shape[1]:
        coef, *_ = np.linalg.lstsq(features, valid.objective.to_numpy(), rcond=None)
        grid = simplex_grid(len(modalities))
        values = _scheffe_features(grid) @ coef
        i = int(np.argmin(values))
        predicted = {**{m: float(v) for m, v in zip(modalities, grid[i])}, "objective": float(values[i])}
    else:
        notes.append(f"{len(valid)} mixes: too few for the quadratic mixture model ({features.shape[1]} terms)")
    return MixingResult(frame, modalities, dict(weights), best_observed, predicted, notes)


# ---------------------------------------------------------------------------------------------
# Trade-off curves: each modality's loss against its own share, with intervals over seeds
# ---------------------------------------------------------------------------------------------
def tradeoff(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per (mix, modality): the modality's own fraction, its loss's mean and t-interval over seeds."""
    from analysis.schedules import t_interval

    columns = mix_columns(df)
    if len(columns) < 2:
        raise AnalysisError("trade-off curves need at least two varying mix columns (data.mix.<modality>)")
    done, _ = table.keep_complete(df)
    fractions = np.stack([table.finite_column(done, c) for c in columns.values()], axis=1)
    fractions = np.round(fractions / fractions.sum(axis=1, keepdims=True), 6)
    keys = pd.DataFrame(fractions, columns=list(columns), index=done.index)
    rows = []
    for mix, group in done.groupby([keys[m] for m in columns]):
        for modality in columns:
            column = f"loss_{modality}"
            if column not in group.columns:
                continue
            mean, lo, hi = t_interval(pd.to_numeric(group[column], errors="coerce").to_numpy(float), level)
            rows.append(dict(zip(columns, mix), modality=modality, own_fraction=dict(zip(columns, mix))[modality],
                             mean=mean, ci_lo=lo, ci_hi=hi, n_seeds=len(group)))
    return pd.DataFrame(rows)


def common_token_losses(sweep_dir: str | pathlib.Path, df: pd.DataFrame) -> pd.DataFrame:
    """results.csv rows with loss_<modality> replaced by each run's `mdiff nelbo` estimate (reference schedule),
    i.e. every run scored on the same validation tokens; runs without that file are left out."""
    from mdiff.eval.nelbo import NELBO_FILE

    out = []
    for _, row in df.iterrows():
        path = pathlib.Path(sweep_dir, "runs", str(row["name"]), NELBO_FILE)
        if not path.is_file():
            continue
        d = json.loads(path.read_text())
        values = {r["modality"]: r["mean"] for r in d["results"] if r["schedule"] == d["reference"]}
        new = row.copy()
        for modality, value in values.items():
            new["loss" if modality == "all" else f"loss_{modality}"] = value
        new["eval_mix"] = json.dumps(d.get("mix"), sort_keys=True)
        out.append(new)
    return pd.DataFrame(out)


def plot_tradeoff(curves: pd.DataFrame, out: str | pathlib.Path, *, title: str = "") -> list[pathlib.Path]:
    """One panel per modality: its loss against its own token share (every mix, 95% interval over seeds),
    the line joining the mean at each share."""
    from analysis import plots

    with plots.plt.rc_context(plots.STYLE):
        modalities = list(dict.fromkeys(curves.modality))
        fig, axes = plots._figure(ncols=len(modalities), width=2.8 * len(modalities) + 0.6, height=3.0)
        for ax, modality in zip(axes[0], modalities):
            g = curves[curves.modality == modality].sort_values("own_fraction")
            color = plots.COLORS.get(f"loss_{modality}")
            ax.errorbar(g.own_fraction, g["mean"], yerr=np.vstack([g["mean"] - g.ci_lo, g.ci_hi - g["mean"]]),
                        fmt="o", ms=3.5, capsize=2, color=color, alpha=0.8)
            line = g.groupby("own_fraction")["mean"].mean()
            ax.plot(line.index, line.values, color=color, lw=1)
            ax.set(xlabel=f"{modality} share of training tokens", title=f"loss_{modality}")
        axes[0, 0].set_ylabel("validation NELBO (nats/token)")
        if title:
            fig.suptitle(title, fontsize=9)
        return plots.save(fig, out)
