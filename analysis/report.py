"""`mdiff report DIR`: one self-contained HTML page (plus summary.md) for any sweep directory.

The report runs the analyses that the sweep's columns allow (the sweep directory: sweep.json,
runs/<name>/, results.csv; see mdiff.sweeps.state):
* scaling (parametric fit, frontier, fitted vs observed) when `params` and `tokens` both vary;
* per-modality fits for each `loss_<modality>` column with enough values;
* IsoFLOP when there are >= 2 compute budgets with >= 3 model sizes each;
* batch size when a batch column varies (B_crit from seeds; gamma from a kappa grid or the naive optima);
* hyperparameter transfer when the learning rate varies with the width or the depth;
* anti-masking when `diffusion.anti_masking` varies (with DIR/gradient_variance.json when measured);
* mixing when >= 2 `data.mix.<modality>` columns vary;
* schedules when a `diffusion.schedule...` column varies (with `mdiff nelbo` / `mdiff eval` files in runs/<name>/:
  the trained schedules on one estimator, and sample quality);
* schedule invariance when runs/<name>/ hold `mdiff nelbo` files with two or more schedules;
* sampling quality vs steps when a sampling-steps column varies;
* symmetry model: recovery of a known distribution per stage-1 recipe (dSprites runs), and the VAE data-efficiency
  table and figure (runs that trained VAEs), both from runs/<name>/summary.json.
An analysis that cannot run on this table becomes a short note, never a crash of the whole report.

Other code (the quickstart) adds its own sections: `build_report(dir, extra_sections=[Section(...)])`,
with `body_html` built from `image_tag`, `audio_tag` and `table_html` (paths relative to DIR/report/).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import html
import json
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis import batch as batch_analysis
from analysis import antimasking, transfer
from analysis import isoflop, mixing, plots, scaling, schedules, table
from analysis import sampling as sampling_study
from analysis import symmetry
from analysis.errors import AnalysisError

MODALITY_LOSSES = ("loss_text", "loss_image", "loss_audio")
SAMPLING_STEPS = ("sampling.steps", "sample.steps", "sampling_steps", "num_steps")
SAMPLING_METRICS = ("fid", "fid_inception", "clip_score", "wer", "cer", "quality", "sample_loss")


@dataclasses.dataclass
class Section:
    """One report section. `body_html` is inserted as is (trusted: it comes from our own code)."""

    title: str
    body_html: str = ""
    images: Sequence[str] = ()  # PNG paths relative to the report directory (a PDF beside it is linked)
    tables: Sequence[tuple[str, pd.DataFrame]] = ()
    notes: Sequence[str] = ()
    markdown: str = ""  # extra text for summary.md


# ---------------------------------------------------------------------------------------------
# HTML helpers (also for callers that add sections)
# ---------------------------------------------------------------------------------------------
def image_tag(src: str, alt: str = "", width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}"{size}>'


def audio_tag(src: str, caption: str = "") -> str:
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><audio controls preload="none" src="{html.escape(src)}"></audio>{cap}</figure>'


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "–"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (float, int, np.floating)) for v in value):
        return "[" + ", ".join(_fmt(float(v)) for v in value) + "]"
    return "–" if value is None else str(value)


def table_html(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def table_markdown(df: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0}td,th{border:1px solid #ccc;padding:.2em .5em;text-align:right}
th{background:#f4f4f4}figure{display:inline-block;margin:.5em}img{max-width:100%}.note{color:#775;font-size:.9em}
.unidentified{color:#999;opacity:.75}.verdict{color:#a33;font-weight:600}
nav a{margin-right:1em}
"""


def render_html(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p>",
             "<nav>" + "".join(f'<a href="#s{i}">{html.escape(s.title)}</a>' for i, s in enumerate(sections)) + "</nav>"]
    for i, s in enumerate(sections):
        parts.append(f'<h2 id="s{i}">{html.escape(s.title)}</h2>')
        parts += [f'<p class="note">{html.escape(n)}</p>' for n in s.notes]
        for img in s.images:
            pdf = str(pathlib.PurePosixPath(img).with_suffix(".pdf"))
            parts.append(f'<figure>{image_tag(img, s.title)}<figcaption><a href="{html.escape(pdf)}">PDF</a></figcaption></figure>')
        for caption, df in s.tables:
            parts.append(f"<h3>{html.escape(caption)}</h3>{table_html(df)}")
        parts.append(s.body_html)
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(title: str, sections: Sequence[Section], subtitle: str = "") -> str:
    out = [f"# {title}", "", subtitle, ""]
    for s in sections:
        out += [f"## {s.title}", ""]
        out += [f"- {n}" for n in s.notes] + ([""] if s.notes else [])
        out += [f"![{s.title}]({img})" for img in s.images] + ([""] if s.images else [])
        for caption, df in s.tables:
            out += [f"**{caption}**", "", table_markdown(df), ""]
        if s.markdown:
            out += [s.markdown, ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Analyses -> sections
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Context:
    df: pd.DataFrame  # complete runs only
    report_dir: pathlib.Path
    loss: str
    n_bootstrap: int
    seed: int
    outputs: dict[str, Any] = dataclasses.field(default_factory=dict)  # name -> JSON written beside the page

    def figure(self, name: str) -> pathlib.Path:
        return self.report_dir / "figures" / name

    def rel(self, paths: Sequence[pathlib.Path]) -> list[str]:
        return [str(p.relative_to(self.report_dir)) for p in paths if p.suffix == ".png"]

    @functools.cached_property
    def symmetry_runs(self) -> list[symmetry.Run]:
        """The sweep's complete symmetry-model runs, read once for both symmetry sections."""
        return symmetry.complete_runs(self.report_dir.parent, self.df["name"].astype(str))


def _finite_rows(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    values = df[list(columns)].apply(pd.to_numeric, errors="coerce")
    ok = np.isfinite(values.to_numpy(float)).all(axis=1) & (values.to_numpy(float) > 0).all(axis=1)
    return df[ok]


def _interval(ci: list[float] | None) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "–"


def fit_table(fit: scaling.ScalingFit) -> pd.DataFrame:
    """Parameters with 95% bootstrap intervals and the range the data allow (95% profile). For a fit that is
    not identifiable the point estimates are withheld: only the ranges are shown."""
    ci, ranges = fit.intervals(), fit.diagnostics.get("allowed_ranges", {})
    fixed = fit.constraints.get("fixed", {})
    opt = fit.compute_optimal()
    rows = []
    for name, value in [*fit.params.items(), ("a", opt["a"]), ("b", opt["b"])]:
        if name in fixed:
            estimate = f"{_fmt(value)} (fixed: {fixed[name]['source']})"
        else:
            estimate = _fmt(value) if fit.identifiable else "not identified"
        rows.append(dict(parameter=name, estimate=estimate, ci95=_interval(ci.get(name)) if fit.identifiable else "–",
                         data_allow=_interval(ranges.get(name))))
    return pd.DataFrame(rows)


def diagnostics_table(fit: scaling.ScalingFit) -> pd.DataFrame:
    """The evidence behind the verdict, one row per check."""
    dg = fit.diagnostics
    conv = dg.get("convergence", {})
    rows = [dict(check="verdict", result="identified" if fit.identifiable else "NOT IDENTIFIABLE: not a finding"),
            dict(check="optimiser", result=f"{conv.get('converged')} of {conv.get('starts')} L-BFGS-B starts converged; "
                                             f"best start converged: {conv.get('best_converged')}"),
            dict(check="span (decades)", result=", ".join(f"{k} {v:.2f}" for k, v in dg.get("span_decades", {}).items())),
            dict(check="at a bound", result="; ".join(f"{b['parameter']} ({b['side']})" for b in dg.get("at_bounds", [])) or "none"),
            dict(check="near-tied optima that disagree", result=str(len(dg.get("near_ties", []))))]
    for name, prof in dg.get("profiles", {}).items():
        edge = f", reaches the {' and '.join(prof['reaches_edge'])} edge" if prof.get("reaches_edge") else ""
        rows.append(dict(check=f"profile of {name} (95% threshold x{dg.get('profile_threshold_ratio', 1):.4f})",
                         result=f"flat over {_interval(prof.get('flat_range'))}{edge}"))
    rows += [dict(check="reason", result=r) for r in fit.reasons] + [dict(check="warning", result=w) for w in dg.get("warnings", [])]
    v = fit.validation or {}
    if v.get("skipped"):
        rows.append(dict(check="validation by extrapolation", result=v["skipped"]))
    elif v:
        band = f"; {v['inside_prediction_band']} of {v['held_out']} inside the 95% prediction band" if "inside_prediction_band" in v else ""
        rows.append(dict(check="validation by extrapolation",
                         result=f"{v['rule']}: mean abs error {100 * v['mean_abs_rel_error']:.2f}% "
                                f"{_interval([100 * x for x in v['mean_abs_rel_error_ci']]) + '%' if 'mean_abs_rel_error_ci' in v else ''}"
                                f"{band}" + ("" if v.get("train_identifiable", True) else " (the reduced fit is not identifiable)")))
    return pd.DataFrame(rows)


def fit_html(fit: scaling.ScalingFit, caption: str) -> str:
    """A fit's parameter table (greyed out when not identifiable) and its diagnostics."""
    cls = "fit" if fit.identifiable else "fit unidentified"
    verdict = ("" if fit.identifiable else
               f"<p class='verdict'>Not identifiable: these data do not pin the law down; not a finding. "
               f"{html.escape(' '.join(fit.reasons))}</p>")
    return (f"<h3>{html.escape(caption)}</h3>{verdict}<div class='{cls}'>{table_html(fit_table(fit))}</div>"
            f"<details><summary>diagnostics</summary>{table_html(diagnostics_table(fit))}</details>")


def fit_markdown(fit: scaling.ScalingFit, caption: str) -> str:
    verdict = "" if fit.identifiable else f"**Not identifiable: not a finding.** {' '.join(fit.reasons)}\n\n"
    return f"**{caption}**\n\n{verdict}{table_markdown(fit_table(fit))}\n\n{table_markdown(diagnostics_table(fit))}\n"


def _conventions(df: pd.DataFrame) -> list[str]:
    """Non-embedding N, and total N too when the embeddings are a large share of the models."""
    return list(scaling.N_CONVENTIONS) if scaling.embedding_heavy(df) else ["non-embedding"]


def _fit_inputs(ctx: Context, convention: str, losses: Sequence[str]) -> pd.DataFrame | None:
    """The complete runs with finite positive N (in the convention), tokens and losses, if N and D both vary."""
    try:
        column, _ = scaling.params_column(ctx.df, convention)
    except AnalysisError:
        return None
    needed = [column, "tokens", *losses]
    if not set(needed) <= set(ctx.df.columns):
        return None
    df = _finite_rows(ctx.df, needed)
    if len(df) <= scaling.N_PARAMS or not (table.varying(df, column) and table.varying(df, "tokens")):
        return None
    return df


def _plot_data(df: pd.DataFrame, convention: str, loss: str) -> tuple[np.ndarray, ...]:
    column, _ = scaling.params_column(df, convention)
    n, d = df[column].to_numpy(float), df.tokens.to_numpy(float)
    return n, d, df[loss].to_numpy(float), scaling.table_compute(df, n, d)[1]


def scaling_section(ctx: Context) -> Section | None:
    html_parts, markdown, images, notes = [], [], [], []
    for convention in _conventions(ctx.df):
        df = _fit_inputs(ctx, convention, [ctx.loss])
        if df is None:
            continue
        fit = scaling.fit_scaling_law(df, ctx.loss, params=convention, n_bootstrap=ctx.n_bootstrap, seed=ctx.seed)
        if len(df) < len(ctx.df):
            fit.notes.append(f"{len(ctx.df) - len(df)} complete run(s) without a finite positive {ctx.loss}/N/tokens left out")
        key = "scaling_fit" if convention == "non-embedding" else f"scaling_fit_{convention}"
        ctx.outputs[key] = fit.to_json()
        n, d, y, compute = _plot_data(df, convention, ctx.loss)
        suffix = "" if convention == "non-embedding" else f"_{convention}"
        images += ctx.rel(plots.loss_vs_compute(n, d, y, fit, ctx.figure(f"loss_vs_compute{suffix}"), compute=compute,
                                                title=f"Loss vs compute, N = {fit.n_label}"))
        images += ctx.rel(plots.fitted_vs_observed(n, d, y, fit, ctx.figure(f"fitted_vs_observed{suffix}")))
        caption = f"{ctx.loss}, N = {fit.n_label}"
        html_parts.append(fit_html(fit, caption))
        markdown.append(fit_markdown(fit, caption))
        notes += [f"{caption}: L(N, D) = E + A/N^alpha + B/D^beta fitted to {fit.n_points} runs (Huber delta "
                  f"{fit.huber_delta:g} on log loss; {len(fit.bootstrap)} bootstrap refits; 95% percentile intervals; "
                  f"compute {fit.flops.describe()}, {fit.flops.source})."] + fit.notes
    if not html_parts:
        return None
    if len(html_parts) > 1:
        notes.append("The embeddings are a large share of these models, so the law is fitted with N both without and "
                     "with embedding parameters: the exponents depend on the convention.")
    return Section("Scaling law", images=images, notes=notes, body_html="".join(html_parts), markdown="\n".join(markdown))


def per_modality_section(ctx: Context) -> Section | None:
    html_parts, markdown, images, notes = [], [], [], []
    for convention in _conventions(ctx.df):
        fits, data = {}, {}
        for column in MODALITY_LOSSES:
            df = _fit_inputs(ctx, convention, [column]) if column in ctx.df.columns else None
            if df is None:
                continue
            try:
                fits[column] = scaling.fit_scaling_law(df, column, params=convention, n_bootstrap=ctx.n_bootstrap, seed=ctx.seed)
            except AnalysisError as e:
                notes.append(f"{column}: {e}")
                continue
            data[column] = _plot_data(df, convention, column)
        if not fits:
            continue
        suffix = "" if convention == "non-embedding" else f"_{convention}"
        ctx.outputs[f"per_modality_fits{suffix}"] = {c: f.to_json() for c, f in fits.items()}
        images += ctx.rel(plots.per_modality(fits, data, ctx.figure(f"per_modality{suffix}")))
        label = next(iter(fits.values())).n_label
        for column, fit in fits.items():
            html_parts.append(fit_html(fit, f"{column}, N = {label}"))
            markdown.append(fit_markdown(fit, f"{column}, N = {label}"))
        columns = list(fits)
        both = _fit_inputs(ctx, convention, columns) if len(columns) >= 2 else None
        if both is not None:
            try:
                shared = scaling.fit_table(both, columns, params=convention, shared=("alpha", "beta"),
                                           n_bootstrap=ctx.n_bootstrap, seed=ctx.seed)
            except AnalysisError as e:
                notes.append(f"shared-exponent fit: {e}")
                shared = {}
            if shared:
                ctx.outputs[f"per_modality_shared_fits{suffix}"] = {c: f.to_json() for c, f in shared.items()}
                images += ctx.rel(plots.per_modality(shared, {c: _plot_data(both, convention, c) for c in shared},
                                                     ctx.figure(f"per_modality_shared{suffix}")))
                for column, fit in shared.items():
                    caption = f"{column}, N = {label}, {fit.label()}"
                    html_parts.append(fit_html(fit, caption))
                    markdown.append(fit_markdown(fit, caption))
    if not html_parts:
        return None
    notes.insert(0, "Each modality's loss fitted on its own, then jointly with alpha and beta shared across modalities "
                    "(fewer parameters where the data cannot pin every one down). Grey tables are not findings.")
    return Section("Per-modality scaling", images=images, notes=notes, body_html="".join(html_parts),
                   markdown="\n".join(markdown))


def isoflop_section(ctx: Context) -> Section | None:
    df = _fit_inputs(ctx, "non-embedding", [ctx.loss])
    if df is None:
        return None
    fit = isoflop.fit_isoflop(df, ctx.loss, n_bootstrap=ctx.n_bootstrap, seed=ctx.seed)
    ctx.outputs["isoflop_fit"] = fit.to_json()
    n, _, y, compute = _plot_data(df, "non-embedding", ctx.loss)
    images = ctx.rel(plots.isoflop_curves(n, y, compute, fit, ctx.figure("isoflop")))
    shown = (lambda v: v) if fit.identifiable else (lambda v: "not identified")
    summary = pd.DataFrame([dict(quantity="a (N* ~ C^a)", estimate=shown(fit.a), ci95=fit.ci95.get("a")),
                            dict(quantity="b (D* ~ C^b)", estimate=shown(fit.b), ci95=fit.ci95.get("b"))])
    verdict = [] if fit.identifiable else [f"NOT IDENTIFIABLE, not a finding: {'; '.join(fit.reasons)}"]
    notes = verdict + [f"N = {fit.n_label}; D* = C / F(N*) with {fit.flops.describe()} ({fit.flops.source})."] + fit.notes
    return Section("IsoFLOP analysis", images=images, notes=notes,
                   tables=[("Power laws", summary),
                           ("Optimum per budget", fit.budgets[["compute", "n_opt", "d_opt", "loss_opt", "n_runs", "interior"]])])


def batch_section(ctx: Context) -> Section | None:
    column = table.first_present(ctx.df, batch_analysis.BATCH_COLUMNS)
    if not table.varying(ctx.df, column) or ctx.loss not in ctx.df.columns or antimasking.applies(ctx.df):
        return None  # (an anti-masking sweep doubles the batch of one arm: not a batch study)
    result = batch_analysis.analyse(_finite_rows(ctx.df, [ctx.loss]), ctx.loss, n_bootstrap=max(ctx.n_bootstrap, 200), seed=ctx.seed)
    ctx.outputs["batch"] = result.to_json()
    images = ctx.rel(plots.batch_curves(result.curves, result.critical, ctx.figure("batch_curves")))
    tables = [("Loss per (horizon, mode, batch): mean over seeds, 95% t-interval", result.curves)]
    if not result.critical.empty:
        tables.append((f"B_crit per reparameterised horizon (first batch whose runs lie above the flat level, one-sided "
                       f"Welch test at {batch_analysis.ALPHA}); bracket = (last flat, first rising]", result.critical))
    if not result.naive.empty:
        tables.append(("Naive curves: loss-optimal batch (no B_crit is defined for them)", result.naive))
    if result.gamma is not None:
        images += ctx.rel(plots.gamma_fit(result.gamma, ctx.figure("gamma_fit")))
        tables.append(("gamma fit", pd.DataFrame([dict(source=result.gamma.source, gamma=result.gamma.gamma,
                                                       ci95=result.gamma.ci95, bootstrap=result.gamma.n_bootstrap)])))
    if not result.comparison.empty:
        tables.append(("Configured starting values vs measured", result.comparison))
    return Section("Batch size", images=images, tables=tables, notes=result.notes)


def transfer_section(ctx: Context) -> Section | None:
    if not transfer.applies(ctx.df) or ctx.loss not in ctx.df.columns:
        return None
    result = transfer.transfer_summary(_finite_rows(ctx.df, [ctx.loss]), ctx.loss, n_bootstrap=max(ctx.n_bootstrap, 200), seed=ctx.seed)
    ctx.outputs["transfer"] = result.to_json()
    images = ctx.rel(plots.transfer_curves(result.curves, result.optima, ctx.figure("transfer_curves")))
    notes = [f"lr grid steps of x{result.grid_ratio:.3g}; the optimum per curve is the vertex of a parabola in log lr through "
             "the best point and its neighbours; intervals are percentile bootstraps over seeds. Claim under test: under "
             "CompleteP the optimum moves by at most one grid step across sizes, under the standard parameterisation it drifts."]
    if result.optima.at_edge.any():
        notes.append(f"{int(result.optima.at_edge.sum())} curve optimum(s) at the edge of the lr grid: only a bound, so the "
                     "movement involving them is a lower bound")
    tables = [("Movement of the loss-optimal lr across sizes (grid steps; slope = log2 change per doubling)", result.summary),
              ("Loss-optimal lr per curve", result.optima), ("Loss per lr: mean over seeds, 95% t-interval", result.curves)]
    return Section("Hyperparameter transfer", images=images, tables=tables, notes=notes)


def antimasking_section(ctx: Context) -> Section | None:
    if not antimasking.applies(ctx.df):
        return None
    summary = antimasking.loss_summary(ctx.df)
    raw, variance = antimasking.read_gradient_variance(ctx.report_dir.parent)
    ctx.outputs["antimasking"] = dict(loss=summary.to_dict(orient="records"), gradient_variance=raw)
    images = ctx.rel(plots.antimasking(summary, variance, ctx.figure("antimasking")))
    tables = [("Final loss, anti-masking off vs on (mean over seeds, 95% t-interval; paired difference by seed)", summary)]
    notes = ["Both arms train on the same number of distinct data tokens; with anti-masking each row is computed twice "
             "(a mask and its complement). Evaluation never uses anti-masking."]
    if raw is None:
        notes.append(f"no {antimasking.OUTPUT} in the sweep directory: run `python -m analysis.gradient_variance DIR` "
                     "to measure the gradient variance")
    else:
        notes.append(f"gradient variance of run {raw['run']} (step {raw['step']}) over {raw['draws']} draws, "
                     f"{raw['rows']} distinct rows per plain estimate; intervals: bootstrap over draws")
        bias = pd.DataFrame([dict(regime=k, **r["bias_check"]) for k, r in raw["regimes"].items()])
        tables += [("Gradient variance by estimator", variance),
                   ("Bias check: squared distance of the anti / plain mean gradients vs its noise level", bias)]
    return Section("Anti-masking", images=images, tables=tables, notes=notes)


def mixing_section(ctx: Context) -> Section | None:
    if len(mixing.mix_columns(ctx.df)) < 2:
        return None
    result = mixing.analyse_mixing(ctx.df)
    ctx.outputs["mixing"] = result.to_json()
    images = ctx.rel(plots.mixing(result, ctx.figure("mixing")))
    best = [dict(which="best observed", **result.best_observed)]
    if result.best_predicted:
        best.append(dict(which="quadratic-model optimum", **result.best_predicted))
    notes = [f"objective: sum of {', '.join(result.weights)} (each divided by its best value over the grid), weights {result.weights}"] + result.notes
    tables = [("Best mix", pd.DataFrame(best)), ("Grid", result.frame)]
    curves = mixing.tradeoff(ctx.df)
    ctx.outputs["mixing_tradeoff"] = curves.to_dict(orient="records")
    images += ctx.rel(mixing.plot_tradeoff(curves, ctx.figure("mixing_tradeoff"), title="training's own evaluation (each run's mix)"))
    tables.append(("Trade-off: loss per modality against its share (training's evaluation; 95% t-interval over seeds)", curves))
    common = mixing.common_token_losses(ctx.report_dir.parent, ctx.df)
    if not common.empty:
        curves = mixing.tradeoff(common)
        ctx.outputs["mixing_tradeoff_common"] = curves.to_dict(orient="records")
        title = f"every run on the same validation tokens (mix {common.eval_mix.iloc[0]})"
        images += ctx.rel(mixing.plot_tradeoff(curves, ctx.figure("mixing_tradeoff_common"), title=title))
        tables.append((f"Trade-off, {title}: `mdiff nelbo` estimates, 95% t-interval over seeds", curves))
    return Section("Modality mixing", images=images, tables=tables, notes=notes)


def schedules_section(ctx: Context) -> Section | None:
    if not schedules.schedule_columns(ctx.df):
        return None
    summary = schedules.schedule_summary(ctx.df)
    ctx.outputs["schedules"] = summary.to_dict(orient="records")
    images = ctx.rel(plots.schedules(summary, ctx.figure("schedules")))
    tables = [("Loss by schedule: training's evaluation, each run under its own schedule (95% t-interval over seeds)", summary)]
    common = schedules.common_estimate(ctx.report_dir.parent, ctx.df)
    if not common.empty:
        ctx.outputs["schedules_common_estimator"] = common.to_dict(orient="records")
        frame = common.assign(schedule=common.trained, loss_column=["loss" if m == "all" else f"loss_{m}" for m in common.modality])
        images += ctx.rel(plots.schedules(frame, ctx.figure("schedules_common_estimator")))
        tables.append(("NELBO of each trained model under one estimator (`mdiff nelbo` reference schedule, same tokens "
                       "and noise for every run; 95% t-interval over seeds, mc_se = Monte Carlo error)", common))
    quality = schedules.sample_quality(ctx.report_dir.parent, ctx.df)
    if not quality.empty:
        ctx.outputs["schedules_sample_quality"] = quality.to_dict(orient="records")
        images += ctx.rel(schedules.plot_sample_quality(quality, ctx.figure("schedules_sample_quality")))
        tables.append(("Sample quality by trained schedule (`mdiff eval`; 95% t-interval over seeds)", quality))
    return Section("Noise schedules", images=images, tables=tables)


def schedule_invariance_section(ctx: Context) -> Section | None:
    inv = schedules.invariance_table(ctx.report_dir.parent)
    if inv.empty or inv.schedule.nunique() < 2:
        return None
    ctx.outputs["schedule_invariance"] = inv.to_dict(orient="records")
    images = ctx.rel(schedules.plot_invariance(inv, ctx.figure("schedule_invariance")))
    notes = ["At a fixed trained model the continuous-time bound does not depend on the schedule: each schedule's "
             "estimate (mean +- SE over independent draws of t and masks, same validation tokens) should agree with "
             "the reference's.", schedules.invariance_verdict(inv)]
    return Section("Schedule invariance at a fixed model", images=images, notes=notes,
                   tables=[("NELBO per estimating schedule (nats/token); diff = paired difference from the reference", inv)])


def sampling_section(ctx: Context) -> Section | None:
    if sampling_study.tasks_in(ctx.df):
        return per_task_sampling_section(ctx)
    steps = table.first_present(ctx.df, SAMPLING_STEPS)
    metrics = [m for m in SAMPLING_METRICS if m in ctx.df.columns]
    if not table.varying(ctx.df, steps) or not metrics:
        return None
    summary = schedules.sampling_summary(ctx.df, steps, metrics)
    ctx.outputs["sampling"] = summary.to_dict(orient="records")
    images = ctx.rel(plots.sampling_quality(summary, ctx.figure("sampling_quality"), ylabel=", ".join(metrics)))
    return Section("Sampling quality vs steps", images=images, tables=[("Sampling summary", summary)])


def per_task_sampling_section(ctx: Context) -> Section:
    """A sampling sweep (`sampling.<task>.<key>` axes, `eval/<task>/<score>` results): curves and chosen defaults."""
    chosen = sampling_study.chosen_defaults(ctx.df)
    overrides = sampling_study.default_overrides(chosen)
    (ctx.report_dir / "sampling_defaults.json").write_text(json.dumps(overrides, indent=2, sort_keys=True))
    ctx.outputs["sampling_defaults"] = overrides
    curves = sampling_study.quality_vs_steps(ctx.df)
    images: list[str] = []
    tables = [("Chosen defaults per task (best observed primary score)", chosen.assign(settings=chosen.settings.astype(str)))]
    if not curves.empty:
        ctx.outputs["sampling"] = curves.to_dict(orient="records")
        images = ctx.rel(plots.sampling_quality(curves, ctx.figure("sampling_quality"), ylabel="primary score per task"))
        tables.append(("Quality vs steps", curves))
    flags = " ".join(f"--config.{k}={v}" for k, v in overrides.items())
    notes = [f"chosen settings as config overrides (also in sampling_defaults.json): {flags}"]
    return Section("Sampling defaults", images=images, tables=tables, notes=notes)


def symmetry_recovery_section(ctx: Context) -> Section | None:
    groups = symmetry.recovery_summary(ctx.symmetry_runs)
    if not groups:
        return None
    ctx.outputs["symmetry_recovery"] = groups
    images = ctx.rel(symmetry.recovery_plot(groups, ctx.figure("symmetry_recovery")))
    notes = ["W1 = Wasserstein-1 distance between each test prototype's learned p(eta | prototype) and the known "
             "distribution of its shape, relative to the known half-width (0 = exact; a shape with no known rotation "
             "is reported in degrees); q slope = slope of the inferred prototype's rotation against the applied one "
             "(1 = invariant prototypes). Mean and 95% t-interval over seeds, per stage-1 recipe."]
    return Section("Symmetry model: recovery of a known distribution", images=images, notes=notes,
                   tables=[("Recovery per recipe (values per seed)", symmetry.recovery_frame(groups))])


def symmetry_vae_section(ctx: Context) -> Section | None:
    result = symmetry.vae_summary(ctx.symmetry_runs)
    if not result["by_model"]:
        return None
    ctx.outputs["symmetry_vae"] = result
    bounds, differences = symmetry.vae_frames(result)
    images = ctx.rel(symmetry.vae_plot(result, ctx.figure("vae_loglik_vs_size")))
    notes = ["Test importance-weighted bound on log p(x) in nats per image, the same test images for every "
             "training-set size and seed; each VAE keeps its best validation checkpoint. The InvVAE weight bounds a "
             "density over (prototype, eta), not log p(x) of the test pixels, so it is not paired with the others."]
    return Section("Symmetry model: VAE data efficiency", images=images, notes=notes,
                   tables=[("Test bound per model and training-set size (mean, 95% t-interval over seeds)", bounds),
                           ("Paired differences by seed", differences)])


ANALYSES: tuple[tuple[str, Callable[[Context], Section | None]], ...] = (
    ("scaling", scaling_section),
    ("per-modality", per_modality_section),
    ("isoflop", isoflop_section),
    ("batch", batch_section),
    ("transfer", transfer_section),
    ("anti-masking", antimasking_section),
    ("mixing", mixing_section),
    ("schedules", schedules_section),
    ("schedule invariance", schedule_invariance_section),
    ("sampling", sampling_section),
    ("symmetry recovery", symmetry_recovery_section),
    ("symmetry vae", symmetry_vae_section),
)


def _overview(df_all: pd.DataFrame, df: pd.DataFrame, spec: dict[str, Any] | None, notes: list[str]) -> Section:
    status = df_all["status"].astype(str).value_counts().to_dict() if "status" in df_all.columns else {"(no status column)": len(df_all)}
    lines = [f"{len(df_all)} runs in results.csv; {len(df)} complete.", f"status counts: {status}"]
    if spec:
        lines.append(f"sweep: {_sweep_name(spec) or '?'}; base config: {spec.get('config', '?')}; axes: {', '.join(spec.get('axes', [])) or '(none)'}")
    show = [c for c in df_all.columns if c not in ("params_total",)]
    return Section("Overview", notes=lines + notes, tables=[("results.csv", df_all[show])])


def build_report(
    sweep_dir: str | pathlib.Path,
    *,
    extra_sections: Sequence[Section] = (),
    loss: str = "loss",
    n_bootstrap: int = scaling.DEFAULT_BOOTSTRAP,
    seed: int = 0,
    title: str | None = None,
) -> pathlib.Path:
    """Write DIR/report/index.html, DIR/report/summary.md, DIR/report/analyses.json and figures; return the page."""
    sweep_dir = pathlib.Path(sweep_dir)
    results = sweep_dir / "results.csv"
    if n_bootstrap < 0:
        raise AnalysisError(f"bootstrap replicates must be >= 0, got {n_bootstrap}")
    if not results.is_file():
        raise AnalysisError(f"{str(sweep_dir)!r} has no results.csv: not a sweep directory (run `mdiff sweep` first)")
    spec = None
    if (sweep_dir / "sweep.json").is_file():
        try:
            spec = json.loads((sweep_dir / "sweep.json").read_text())
        except json.JSONDecodeError as e:
            raise AnalysisError(f"{str(sweep_dir / 'sweep.json')!r} is not valid JSON: {e.msg} at line {e.lineno}") from None
    df_all = table.read_table(results)
    df, notes = table.keep_complete(df_all)
    report_dir = sweep_dir / "report"
    (report_dir / "figures").mkdir(parents=True, exist_ok=True)
    ctx = Context(df, report_dir, loss, n_bootstrap, seed)
    sections = [_overview(df_all, df, spec, notes)]
    skipped = []
    for name, analyse in ANALYSES:
        try:
            section = analyse(ctx)
        except (AnalysisError, np.linalg.LinAlgError) as e:
            skipped.append(f"{name}: {e}")
            continue
        if section is not None:
            sections.append(section)
    if skipped:
        sections[0].notes = [*sections[0].notes, *(f"analysis skipped, {s}" for s in skipped)]
    sections += list(extra_sections)
    title = title or f"mdiff report: {_sweep_name(spec) or sweep_dir.name}"
    stamp = f"generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC from {results}"
    (report_dir / "analyses.json").write_text(json.dumps(ctx.outputs, indent=2, default=_json_default))
    (report_dir / "summary.md").write_text(render_markdown(title, sections, stamp))
    page = report_dir / "index.html"
    page.write_text(render_html(title, sections, stamp))
    return page


def _sweep_name(spec: dict[str, Any] | None) -> str | None:
    """The sweep's name as sweep.json records it (the runner writes `sweep`; older files `name`)."""
    return (spec or {}).get("sweep") or (spec or {}).get("name")


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.bool_,)):
        return bool(value)
    return str(value)
