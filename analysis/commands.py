"""CLI hooks for `mdiff fit {scaling,isoflop,batch,mixing,schedules}` and `mdiff report DIR`.

Bad input (a missing file or column, bad values, too few points) is one line on stderr and exit code 2.
Each `fit` subcommand writes its JSON (and figures, PNG + PDF) under --out.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

EXIT_BAD_INPUT = 2


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
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples over runs (default 1000)")
    p.add_argument("--workers", type=int, default=None, help="processes for the bootstrap (default: up to 2)")
    p.add_argument("--starts", type=int, default=16, help="best grid initialisations refined by L-BFGS-B (default 16)")
    p.add_argument("--bound", type=_bound, action="append", default=[], metavar="NAME=LO:HI",
                   help="bound a parameter (E, A, B, alpha, beta), e.g. --bound alpha=0:2; repeatable")
    p.add_argument("--weights", default=None, metavar="COLUMN", help="column of per-run observation weights")
    p.add_argument("--use-flops", action="store_true", help="C = k N D with k from the logged flops column (default k = 6)")
    p.add_argument("--per-modality", action="store_true", help="also fit loss_text, loss_image, loss_audio (those present)")
    p = sub.add_parser("isoflop", help="Chinchilla approach 2: parabolas per compute budget, power laws N*(C), D*(C)")
    _common(p)
    p.add_argument("--bootstrap", type=int, default=1000)
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


def _fit_scaling(args: argparse.Namespace, df, out: pathlib.Path) -> str:
    from analysis import plots, scaling
    from analysis.report import MODALITY_LOSSES

    options = dict(delta=args.huber_delta, n_bootstrap=args.bootstrap, seed=args.seed, workers=args.workers,
                   n_starts=args.starts, bounds=dict(args.bound) or None)
    fit = scaling.fit_scaling_law(df, args.loss, weights_column=args.weights, use_flops=args.use_flops, **options)
    _write_json(out / "fit.json", fit.to_json())
    kept = df[df["status"].astype(str) == "complete"] if "status" in df.columns else df
    n, d, y = (kept[c].astype(float) for c in ("params", "tokens", args.loss))
    plots.loss_vs_compute(n, d, y, fit, out / "loss_vs_compute")
    plots.fitted_vs_observed(n, d, y, fit, out / "fitted_vs_observed")
    if args.per_modality:
        fits, data = {}, {}
        for column in (c for c in MODALITY_LOSSES if c in df.columns):
            fits[column] = scaling.fit_scaling_law(df, column, use_flops=args.use_flops, **options)
            data[column] = tuple(kept[c].astype(float) for c in ("params", "tokens", column))
        if fits:
            _write_json(out / "per_modality.json", {c: f.to_json() for c, f in fits.items()})
            plots.per_modality(fits, data, out / "per_modality")
    p = fit.params
    return f"E={p['E']:.4g} A={p['A']:.4g} B={p['B']:.4g} alpha={p['alpha']:.4f} beta={p['beta']:.4f} -> {out / 'fit.json'}"


def _fit_isoflop(args, df, out: pathlib.Path) -> str:
    from analysis import isoflop, plots

    fit = isoflop.fit_isoflop(df, args.loss, n_bootstrap=args.bootstrap, seed=args.seed, rel_tol=args.budget_tolerance)
    _write_json(out / "isoflop.json", fit.to_json())
    kept = df[df["status"].astype(str) == "complete"] if "status" in df.columns else df
    compute = kept.flops.astype(float) if "flops" in kept.columns else 6.0 * kept.params * kept.tokens
    plots.isoflop_curves(kept.params.astype(float), kept[args.loss].astype(float), compute, fit, out / "isoflop")
    return f"a={fit.a:.4f} b={fit.b:.4f} over {len(fit.budgets)} budgets -> {out / 'isoflop.json'}"


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


def run_fit(args: argparse.Namespace) -> int:
    from analysis import table
    from analysis.errors import AnalysisError

    try:
        df = table.read_table(args.results)
        out = pathlib.Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        print(FITS[args.analysis](args, df, out))
    except AnalysisError as e:
        return _bad_input("fit", e)
    return 0


def configure_report(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="sweep directory (sweep.json, runs/, results.csv)")
    parser.add_argument("--loss", default="loss", help="loss column for the scaling fits (default: loss)")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per fit (default 200)")
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
