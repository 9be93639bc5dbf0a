"""CLI hooks for `mdiff fit {scaling,isoflop,batch,mixing,schedules}` and `mdiff report DIR`.

Bad input (a missing file or column, bad values, too few points, data that cannot identify the law, an --out
that is a file) is one line on stderr and exit code 2, and nothing is written: a `fit` subcommand builds its
JSON and figures (PNG + PDF) in a staging folder beside --out and moves them into --out only on success.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
import tempfile
from typing import Any

from mdiff.errors import EXIT_BAD_INPUT


def _common(parser: argparse.ArgumentParser, *, loss: bool = True) -> None:
    parser.add_argument("--results", required=True, help="CSV with one row per run (a sweep's results.csv or a published table)")
    parser.add_argument("--out", required=True, help="output directory (JSON and figures)")
    if loss:
        parser.add_argument("--loss", default="loss", help="loss column to fit (default: loss)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def _bound(text: str) -> tuple[str, tuple[float | None, float | None]]:
    try:
        name, rng = text.split("=", 1)
        lo, hi = rng.split(":", 1)
        return name.strip(), (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bound {text!r}: expected NAME=LO:HI, e.g. alpha=0:2 or E=:2.5") from None


def _fixed(text: str) -> tuple[str, float]:
    try:
        name, value = text.split("=", 1)
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"fixed value {text!r}: expected NAME=VALUE, e.g. E=1.69") from None


def _weights(text: str) -> dict[str, float]:
    try:
        return {k.strip(): float(v) for k, v in (item.split("=", 1) for item in text.split(",") if item.strip())}
    except ValueError:
        raise argparse.ArgumentTypeError(f"weights {text!r}: expected COLUMN=W,..., e.g. loss_text=1,loss_image=0.5") from None


def configure_fit(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="analysis", required=True, metavar="{scaling,isoflop,batch,mixing,schedules}")
    p = sub.add_parser("scaling", help="parametric L(N, D) = E + A/N^alpha + B/D^beta with bootstrap intervals")
    _common(p)
    p.add_argument("--huber-delta", type=float, default=1e-3, help="Huber delta on log-loss residuals (default 1e-3)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over runs (default 1000; 0: none)")
    p.add_argument("--workers", type=int, default=None, help="processes for the bootstrap (default: up to 2)")
    p.add_argument("--starts", type=int, default=16, help="best grid initialisations refined by L-BFGS-B (default 16)")
    p.add_argument("--bound", type=_bound, action="append", default=[], metavar="NAME=LO:HI",
                   help="bound a parameter (E, A, B, alpha, beta), e.g. --bound alpha=0:2; repeatable")
    p.add_argument("--fix", type=_fixed, action="append", default=[], metavar="NAME=VALUE",
                   help="hold a parameter fixed, e.g. --fix E=1.69 (labelled in the output with --fix-source)")
    p.add_argument("--fix-source", default=None, help="where the fixed value comes from (recorded in fit.json)")
    p.add_argument("--weights", default=None, metavar="COLUMN", help="column of per-run observation weights")
    p.add_argument("--params", choices=("non-embedding", "total", "both"), default=None,
                   help="N with or without embedding parameters (default: non-embedding, and total too when the "
                        "embeddings are a large share of the models)")
    p.add_argument("--per-modality", action="store_true", help="also fit loss_text, loss_image, loss_audio (those present)")
    p.add_argument("--shared-exponents", action="store_true",
                   help="with --per-modality: also one joint fit in which the modalities share alpha and beta")
    p = sub.add_parser("isoflop", help="Chinchilla approach 2: parabolas per compute budget, power laws N*(C), D*(C)")
    _common(p)
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (default 1000; 0: none)")
    p.add_argument("--params", choices=("non-embedding", "total"), default="non-embedding",
                   help="N with or without embedding parameters (default non-embedding)")
    p.add_argument("--budget-tolerance", type=float, default=0.25, help="relative FLOP difference within one budget")
    p = sub.add_parser("batch", help="loss vs physical batch (naive vs reparameterised), B_crit / S_crit, gamma")
    _common(p)
    p.add_argument("--alpha", type=float, default=0.05,
                   help="one-sided test level at which a batch's loss counts as above the flat level (default 0.05)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over seeds for gamma (default 1000)")
    p.add_argument("--seq-len", type=float, default=None, help="sequence length for S_crit (default: data.seq_len column)")
    p = sub.add_parser("mixing", help="per-modality loss over the mixing simplex and the best mix")
    _common(p, loss=False)
    p.add_argument("--weights", type=_weights, default=None, metavar="COL=W,...",
                   help="objective weights per loss column (default: equal over loss_text/image/audio present)")
    p.add_argument("--raw", action="store_true", help="do not divide each loss by its grid minimum in the objective")
    p = sub.add_parser("schedules", help="per-modality loss by noise schedule with intervals across seeds")
    _common(p, loss=False)


def _write_json(path: pathlib.Path, payload: dict[str, Any]) -> None:
    from analysis.report import _json_default

    path.write_text(json.dumps(payload, indent=2, default=_json_default))


def conventions(df, choice: str | None) -> list[str]:
    """The N conventions to fit: the one asked for, or non-embedding plus total for embedding-heavy models."""
    from analysis import scaling

    if choice == "both":
        return list(scaling.N_CONVENTIONS)
    if choice:
        return [choice]
    return list(scaling.N_CONVENTIONS) if scaling.embedding_heavy(df) else ["non-embedding"]


def _fit_scaling(args: argparse.Namespace, df, out: pathlib.Path) -> str:
    from analysis import plots, scaling
    from analysis.report import MODALITY_LOSSES

    if args.shared_exponents and not args.per_modality:
        from analysis.errors import AnalysisError

        raise AnalysisError("--shared-exponents needs --per-modality (the modalities are what share alpha and beta)")
    options = dict(delta=args.huber_delta, n_bootstrap=args.bootstrap, seed=args.seed, workers=args.workers,
                   n_starts=args.starts, bounds=dict(args.bound) or None, fixed=dict(args.fix) or None,
                   fixed_source=args.fix_source)
    kept, _ = table_keep(df)
    lines = []
    for i, convention in enumerate(conventions(df, args.params)):
        suffix = "" if i == 0 else "_total" if convention == "total" else f"_{convention}"
        fit = scaling.fit_scaling_law(df, args.loss, params=convention, weights_column=args.weights, **options)
        _write_json(out / f"fit{suffix}.json", fit.to_json())
        data = plot_columns(kept, convention, args.loss)
        plots.loss_vs_compute(*data, fit, out / f"loss_vs_compute{suffix}", compute=compute_of(kept, data))
        plots.fitted_vs_observed(*data, fit, out / f"fitted_vs_observed{suffix}")
        lines.append(f"{fit.n_label}: {summary_line(fit)}")
        if args.per_modality and i == 0:
            columns = [c for c in MODALITY_LOSSES if c in df.columns]
            fits = {c: scaling.fit_scaling_law(df, c, params=convention, **options) for c in columns}
            if fits:
                _write_json(out / "per_modality.json", {c: f.to_json() for c, f in fits.items()})
                plots.per_modality(fits, {c: plot_columns(kept, convention, c) for c in fits}, out / "per_modality")
            if args.shared_exponents and len(columns) >= 2:
                shared = scaling.fit_table(df, columns, params=convention, shared=("alpha", "beta"), **options)
                _write_json(out / "per_modality_shared.json", {c: f.to_json() for c, f in shared.items()})
                plots.per_modality(shared, {c: plot_columns(kept, convention, c) for c in shared},
                                   out / "per_modality_shared")
    return "\n".join(lines) + f"\n-> {out}"


def table_keep(df):
    from analysis import table

    return table.keep_complete(df)


def plot_columns(kept, convention: str, loss: str):
    """(N, D, loss) of the complete runs for the plots, N in the given convention."""
    from analysis import scaling

    column, _ = scaling.params_column(kept, convention)
    return tuple(kept[c].astype(float).to_numpy() for c in (column, "tokens", loss))


def compute_of(kept, data):
    """Each run's training compute as logged (`scaling.table_compute`)."""
    from analysis import scaling

    return scaling.table_compute(kept, data[0], data[1])[1]


def summary_line(fit) -> str:
    """One line per fit: the law and its verdict (a fit that is not identifiable is never printed as a finding)."""
    p = fit.params
    law = f"L = {p['E']:.3g} + {p['A']:.3g}/N^{p['alpha']:.3g} + {p['B']:.3g}/D^{p['beta']:.3g}"
    if fit.identifiable:
        return f"{fit.loss_column}: {law} (identified)"
    return f"{fit.loss_column}: NOT IDENTIFIABLE, not a finding ({fit.reasons[0]}); point fit {law}"


def _fit_isoflop(args, df, out: pathlib.Path) -> str:
    from analysis import isoflop, plots, scaling

    fit = isoflop.fit_isoflop(df, args.loss, n_bootstrap=args.bootstrap, seed=args.seed, rel_tol=args.budget_tolerance,
                              params=args.params)
    _write_json(out / "isoflop.json", fit.to_json())
    kept, _ = table_keep(df)
    column, _ = scaling.params_column(df, args.params)
    n = kept[column].astype(float)
    _, compute = scaling.table_compute(kept, n.to_numpy(), kept.tokens.astype(float).to_numpy())
    plots.isoflop_curves(n, kept[args.loss].astype(float), compute, fit, out / "isoflop")
    verdict = "" if fit.identifiable else f" NOT IDENTIFIABLE ({fit.reasons[0]})"
    return f"a={fit.a:.4f} b={fit.b:.4f} over {len(fit.budgets)} budgets{verdict} -> {out / 'isoflop.json'}"


def _fit_batch(args, df, out: pathlib.Path) -> str:
    from analysis import batch, plots

    result = batch.analyse(df, args.loss, seq_len=args.seq_len, alpha=args.alpha, n_bootstrap=args.bootstrap, seed=args.seed)
    plots.batch_curves(result.curves, result.critical, out / "batch_curves")
    if result.gamma is not None:
        plots.gamma_fit(result.gamma, out / "gamma_fit")
    _write_json(out / "batch.json", result.to_json())
    return f"{len(result.curves)} (horizon, mode, batch) points; B_crit per curve in {out / 'batch.json'}"


def _fit_mixing(args, df, out: pathlib.Path) -> str:
    from analysis import mixing, plots

    result = mixing.analyse_mixing(df, args.weights, normalise=not args.raw)
    _write_json(out / "mixing.json", result.to_json())
    plots.mixing(result, out / "mixing")
    return f"best observed mix {result.best_observed} -> {out / 'mixing.json'}"


def _fit_schedules(args, df, out: pathlib.Path) -> str:
    from analysis import plots, schedules

    summary = schedules.schedule_summary(df)
    _write_json(out / "schedules.json", dict(summary=summary.to_dict(orient="records")))
    plots.schedules(summary, out / "schedules")
    return f"{summary.schedule.nunique()} schedules -> {out / 'schedules.json'}"


FITS = dict(scaling=_fit_scaling, isoflop=_fit_isoflop, batch=_fit_batch, mixing=_fit_mixing, schedules=_fit_schedules)


def _bad_input(command: str, error: Exception) -> int:
    message = " ".join(str(error).split())
    print(f"mdiff {command}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _existing_ancestor(path: pathlib.Path) -> pathlib.Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def run_fit(args: argparse.Namespace) -> int:
    """Run one analysis into a staging folder; move its files into --out only when it succeeded."""
    import numpy as np

    from analysis import table
    from analysis.errors import AnalysisError

    out = pathlib.Path(args.out)
    staging = None
    try:
        if out.exists() and not out.is_dir():
            raise AnalysisError(f"--out {str(out)!r} exists and is not a directory")
        df = table.read_table(args.results)
        parent = _existing_ancestor(out.parent)
        if not parent.is_dir():
            raise AnalysisError(f"--out {str(out)!r}: {str(parent)!r} is not a directory")
        try:
            staging = pathlib.Path(tempfile.mkdtemp(prefix=".mdiff-fit-", dir=parent))
        except OSError as e:
            raise AnalysisError(f"--out {str(out)!r}: cannot write in {str(parent)!r} ({e.strerror})") from None
        message = FITS[args.analysis](args, df, staging)
        out.mkdir(parents=True, exist_ok=True)
        for item in sorted(staging.iterdir()):
            target = out / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            item.replace(target)
        print(message.replace(str(staging), str(out)))
    except AnalysisError as e:
        return _bad_input("fit", e)
    except (OverflowError, FloatingPointError, np.linalg.LinAlgError) as e:
        return _bad_input("fit", f"the fit failed on this data ({type(e).__name__}: {e})")
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return 0


def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="sweep directory (sweep.json, runs/, results.csv)")
    parser.add_argument("--loss", default="loss", help="loss column for the scaling fits (default: loss)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per fit (default 1000; 0: none)")
    parser.add_argument("--seed", type=int, default=0)


def run_report(args: argparse.Namespace) -> int:
    from analysis.errors import AnalysisError
    from analysis.report import build_report

    try:
        page = build_report(args.dir, loss=args.loss, n_bootstrap=args.bootstrap, seed=args.seed)
    except AnalysisError as e:
        return _bad_input("report", e)
    print(page)
    return 0
