"""Reading and checking results tables (any CSV: a sweep's results.csv or a published table).

Rows are reported by their CSV line number (the header is line 1), so an error points at the file.
Runs whose `status` is not `complete` are dropped with a note rather than an error: a sweep in progress
can still be fitted.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.errors import AnalysisError

COMPLETE = "complete"


def read_table(path: str | pathlib.Path) -> pd.DataFrame:
    """Read a CSV; the index holds CSV line numbers (header = line 1)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise AnalysisError(f"results file {str(path)!r} does not exist")
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AnalysisError(f"results file {str(path)!r} is not a readable CSV: {first}") from None
    if df.empty:
        raise AnalysisError(f"results file {str(path)!r} has a header but no rows")
    df.index = pd.RangeIndex(2, 2 + len(df))
    df.attrs["source"] = str(path)
    return df


def keep_complete(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Drop runs whose `status` column is not `complete`; return the kept rows and a note per exclusion."""
    if "status" not in df.columns:
        return df, []
    status = df["status"].astype(str).str.strip()
    bad = df[status != COMPLETE]
    if bad.empty:
        return df, []
    label = bad["name"].astype(str) if "name" in bad.columns else pd.Series([f"line {i}" for i in bad.index], index=bad.index)
    listed = ", ".join(f"{n} ({s})" for n, s in zip(label, status[bad.index]))
    note = f"excluded {len(bad)} run(s) whose status is not '{COMPLETE}': {listed}"
    return df[status == COMPLETE], [note]


def _source(df: pd.DataFrame) -> str:
    return df.attrs.get("source", "results table")


def require_columns(df: pd.DataFrame, columns: Iterable[str], *, what: str = "") -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        need = f" (needed for {what})" if what else ""
        raise AnalysisError(
            f"{_source(df)}: missing column(s) {', '.join(repr(c) for c in missing)}{need}; "
            f"columns present: {', '.join(map(str, df.columns))}"
        )


def _lines(index: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in list(index)[:limit])
    return shown + (f" and {len(index) - limit} more" if len(index) > limit else "")


def positive_column(df: pd.DataFrame, column: str) -> np.ndarray:
    """The column as float64, rejecting non-numeric, non-finite and non-positive cells (naming the lines)."""
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values <= 0)
    if bad.any():
        raise AnalysisError(
            f"{_source(df)}: column {column!r} must hold finite positive numbers; "
            f"bad value(s) at CSV line(s) {_lines(df.index[bad])}"
        )
    return values


def finite_column(df: pd.DataFrame, column: str) -> np.ndarray:
    values = pd.to_numeric(df[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise AnalysisError(
            f"{_source(df)}: column {column!r} must hold finite numbers; bad value(s) at CSV line(s) {_lines(df.index[bad])}"
        )
    return values


def require_points(n: int, n_params: int, what: str, df: pd.DataFrame | None = None) -> None:
    if n <= n_params:
        where = f"{_source(df)}: " if df is not None else ""
        raise AnalysisError(f"{where}{what} needs more than {n_params} points (one per parameter), got {n}")


def first_present(df: pd.DataFrame, candidates: Sequence[str]) -> str | None:
    """The first candidate column name that the table has."""
    return next((c for c in candidates if c in df.columns), None)


def varying(df: pd.DataFrame, column: str | None) -> bool:
    return column is not None and column in df.columns and df[column].dropna().nunique() > 1
