"""Modality-mixing analysis: per-modality loss across a simplex grid of mixing fractions.

Mix columns are found by name (`data.mix.<m>` from sweeps, or `mix_<m>`). The objective to minimise is a
weighted sum of per-modality losses, each optionally divided by its best value over the grid so modalities
with different loss scales count alike. Besides the best observed mix, a Scheffe quadratic mixture model
(sum b_i x_i + sum_{i<j} b_ij x_i x_j) is fitted to the objective when there are enough points and minimised
over a fine simplex grid: the predicted best mix, which may lie between grid points.
"""

from __future__ import annotations

import dataclasses
import itertools
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
