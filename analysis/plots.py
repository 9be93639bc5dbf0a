"""The paper's plots, in one style (matplotlib Agg; every figure saved as PNG and PDF).

Each function takes analysis results, writes `<out>.png` and `<out>.pdf` and returns their paths.
Axes carry units: parameters and tokens are counts (the N axis names its convention: with or without
embedding parameters), compute is FLOPs (as logged; C = 6ND only for tables without FLOPs), losses are nats
per token. A fit that is not identifiable is drawn grey and dashed and labelled "not a finding". Log scales where the quantity spans decades.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

STYLE = {
    "figure.figsize": (5.2, 3.8),
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 7.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
COLORS = {"loss": "#333333", "loss_text": "#1f77b4", "loss_image": "#2ca02c", "loss_audio": "#d62728"}
LOSS_LABEL = "final eval loss (nats/token)"


def save(fig: plt.Figure, out: str | pathlib.Path) -> list[pathlib.Path]:
    base = pathlib.Path(out)
    base.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [base.with_suffix(".png"), base.with_suffix(".pdf")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths


def _figure(ncols: int = 1, nrows: int = 1, width: float | None = None, height: float | None = None):
    with plt.rc_context(STYLE):
        w, h = STYLE["figure.figsize"]
        return plt.subplots(nrows, ncols, figsize=(width or w * ncols, height or h * nrows), squeeze=False)


def _styled(fn):
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper


def _compute_grid(compute: np.ndarray, pad: float = 3.0) -> np.ndarray:
    return np.geomspace(compute.min() / pad, compute.max() * pad, 80)


def _loss_limits(ax, *values: np.ndarray, margin: float = 0.05) -> None:
    """Y range from the runs' losses: a curve or confidence band the data cannot pin down (it can span
    orders of magnitude) is clipped instead of flattening the runs to a line."""
    finite = np.concatenate([np.asarray(v, float).ravel() for v in values])
    finite = finite[np.isfinite(finite) & (finite > 0)]
    if finite.size:
        ax.set_ylim(finite.min() * (1 - margin), finite.max() * (1 + margin))


NOT_IDENTIFIABLE = dict(color="#999999", ls="--")  # a fit the data cannot pin down: grey, dashed, labelled


def _fit_tag(fit) -> str:
    """'' for an identified fit; otherwise the words every legend and title carry."""
    return "" if fit.identifiable else " [NOT IDENTIFIABLE: not a finding]"


@_styled
def loss_vs_compute(n, d, loss, fit, out, *, compute=None, title: str = "Loss vs compute") -> list[pathlib.Path]:
    """Observed runs at their logged compute (colour = model size) and the fitted compute-optimal frontier with
    95% bands; a fit that is not identifiable is drawn grey and dashed, labelled as such."""
    from analysis.scaling import optimal_allocation

    n, d, loss = (np.asarray(x, float) for x in (n, d, loss))
    compute = fit.flops.compute(n, d) if compute is None else np.asarray(compute, float)
    fig, axes = _figure()
    ax = axes[0, 0]
    sc = ax.scatter(compute, loss, c=np.log10(n), cmap="viridis", s=14, alpha=0.85, label="runs")
    fig.colorbar(sc, ax=ax, label=f"log10 {fit.n_label}")
    grid = _compute_grid(compute)
    n_opt, d_opt = optimal_allocation(fit.params, grid, fit.flops)
    bands = fit.loss_bands(n_opt, d_opt)
    style = dict(color="black") if fit.identifiable else NOT_IDENTIFIABLE
    ax.plot(grid, bands["loss"], lw=1.5, label="compute-optimal frontier L*(C)" + _fit_tag(fit), **style)
    ax.fill_between(grid, bands["conf_lo"], bands["conf_hi"], color=style["color"], alpha=0.25, label="95% confidence band")
    ax.fill_between(grid, bands["pred_lo"], bands["pred_hi"], color=style["color"], alpha=0.08, label="95% prediction band")
    constraint = f" ({fit.label()})" if fit.label() else ""
    ax.set(xscale="log", yscale="log", xlabel=f"training compute, {fit.flops.describe()} (FLOPs)", ylabel=LOSS_LABEL,
           title=title + constraint)
    _loss_limits(ax, loss)
    ax.legend()
    return save(fig, out)


@_styled
def fitted_vs_observed(n, d, loss, fit, out, *, title: str = "Fitted vs observed loss") -> list[pathlib.Path]:
    n, d, loss = (np.asarray(x, float) for x in (n, d, loss))
    predicted = fit.predict(n, d)
    fig, axes = _figure()
    ax = axes[0, 0]
    ax.scatter(loss, predicted, s=12, alpha=0.8, c=np.log10(fit.flops.compute(n, d)), cmap="magma")
    lo, hi = min(loss.min(), predicted.min()), max(loss.max(), predicted.max())
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="y = x")
    p = fit.params
    ax.set(xlabel="observed " + LOSS_LABEL, ylabel="fitted loss (nats/token)", title=title + _fit_tag(fit))
    text = f"E={p['E']:.3g}, A={p['A']:.3g}, B={p['B']:.3g}\nalpha={p['alpha']:.3f}, beta={p['beta']:.3f}\nN: {fit.n_label}"
    ax.text(0.03, 0.97, text if fit.identifiable else text + "\nnot identifiable: parameters not a finding",
            transform=ax.transAxes, va="top", fontsize=7.5, color="black" if fit.identifiable else "#888888")
    ax.legend(loc="lower right")
    return save(fig, out)


@_styled
def per_modality(fits: Mapping[str, object], tables: Mapping[str, tuple], out) -> list[pathlib.Path]:
    """One frontier curve per modality: fitted L*(C) with its confidence band, and that modality's runs.
    tables[column] = (N, D, loss) or (N, D, loss, logged compute)."""
    from analysis.scaling import optimal_allocation

    fig, axes = _figure()
    ax = axes[0, 0]
    labels, shown = [], []
    for column, fit in fits.items():
        n, d, loss = (np.asarray(x, float) for x in tables[column][:3])
        compute = np.asarray(tables[column][3], float) if len(tables[column]) > 3 else fit.flops.compute(n, d)
        color = COLORS.get(column)
        ax.scatter(compute, loss, s=8, alpha=0.5, color=color)
        grid = _compute_grid(compute)
        bands = fit.loss_bands(*optimal_allocation(fit.params, grid, fit.flops))
        ls = "-" if fit.identifiable else "--"
        name = column.removeprefix("loss_")
        label = (f"{name} (alpha={fit.params['alpha']:.2f}, beta={fit.params['beta']:.2f})" if fit.identifiable
                 else f"{name}: not identifiable, not a finding")
        ax.plot(grid, bands["loss"], color=color, lw=1.5, ls=ls, alpha=1.0 if fit.identifiable else 0.5, label=label)
        ax.fill_between(grid, bands["conf_lo"], bands["conf_hi"], color=color, alpha=0.2 if fit.identifiable else 0.08)
        labels.append(fit.label())
        shown.append(loss)
    constraint = next((x for x in labels if x), "")
    any_fit = next(iter(fits.values()))
    ax.set(xscale="log", yscale="log", xlabel=f"training compute, {any_fit.flops.describe()} (FLOPs)",
           ylabel="per-modality eval loss (nats/token)",
           title="Compute-optimal frontier per modality" + (f"\n({constraint})" if constraint else ""))
    _loss_limits(ax, *shown)
    ax.legend()
    return save(fig, out)


@_styled
def isoflop_curves(n, loss, compute, isofit, out) -> list[pathlib.Path]:
    """Left: loss vs N per budget with its parabola and optimum. Right: N*(C) and D*(C) with power laws."""
    from analysis.isoflop import group_budgets

    n, loss, compute = (np.asarray(x, float) for x in (n, loss, compute))
    fig, axes = _figure(ncols=2)
    ax, ax2 = axes[0]
    ids = group_budgets(compute)
    centres = {g: np.log(compute[ids == g]).mean() for g in np.unique(ids)}
    cmap = plt.get_cmap("plasma")
    budgets = isofit.budgets
    for j, row in budgets.reset_index(drop=True).iterrows():
        color = cmap(j / max(1, len(budgets) - 1) * 0.85)
        member = ids == min(centres, key=lambda g: abs(centres[g] - np.log(row.compute)))
        ax.scatter(n[member], loss[member], s=12, color=color)
        x = np.linspace(np.log10(n[member].min()), np.log10(n[member].max()), 50)
        ax.plot(10**x, np.polyval([row.p2, row.p1, row.p0], x), color=color, lw=1, label=f"C={row.compute:.2g}")
        ax.scatter([row.n_opt], [row.loss_opt], marker="*", s=60, color=color, edgecolor="black", zorder=3)
    ax.set(xscale="log", xlabel=isofit.n_label, ylabel=LOSS_LABEL, title="IsoFLOP curves")
    ax.legend(fontsize=6.5)
    c = budgets.compute.to_numpy()
    grid = np.geomspace(c.min() / 2, c.max() * 2, 50)
    ax2.scatter(c, budgets.n_opt, color="#1f77b4", label="N* per budget")
    ax2.plot(grid, isofit.N_coefficient * grid**isofit.a, color="#1f77b4", label=f"N* ~ C^{isofit.a:.3f}")
    ax2.scatter(c, budgets.d_opt, color="#ff7f0e", label="D* per budget")
    ax2.plot(grid, isofit.D_coefficient * grid**isofit.b, color="#ff7f0e", label=f"D* ~ C^{isofit.b:.3f}")
    ax2.set(xscale="log", yscale="log", xlabel="compute C (FLOPs)", ylabel="optimal parameters / tokens (count)",
            title="Compute-optimal allocation")
    ax2.legend()
    return save(fig, out)


@_styled
def batch_curves(curves: pd.DataFrame, crit: pd.DataFrame | None, out) -> list[pathlib.Path]:
    """Final loss vs physical batch (mean over seeds, 95% t-interval), one colour per token horizon; solid
    reparameterised, dashed naive; B_crit of each reparameterised curve dotted, its bracket shaded."""
    fig, axes = _figure(width=6.0)
    ax = axes[0, 0]
    cmap = plt.get_cmap("viridis")
    horizons = sorted(curves.horizon.unique())
    for j, horizon in enumerate(horizons):
        color = cmap(j / max(1, len(horizons) - 1) * 0.85)
        for mode, g in curves[curves.horizon == horizon].groupby("mode"):
            style = "--" if mode == "naive" else "-"
            yerr = np.vstack([g.loss - g.ci_lo, g.ci_hi - g.loss]) if "ci_lo" in g else g.loss_std.fillna(0)
            ax.errorbar(g.batch, g.loss, yerr=yerr, color=color, ls=style, marker="o", ms=3,
                        capsize=2, label=f"D={horizon:.3g} tokens, {mode}")
        if crit is not None and not crit.empty:
            for _, row in crit[crit.horizon == horizon].iterrows():
                if row.b_crit is not None and np.isfinite(row.b_crit):
                    ax.axvline(row.b_crit, color=color, ls=":", lw=1)
                    ax.axvspan(*row.b_crit_bracket, color=color, alpha=0.08)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="physical batch B (sequences)", ylabel=LOSS_LABEL, title="Loss vs batch size (dotted: B_crit)")
    ax.legend(fontsize=6.5)
    return save(fig, out)


@_styled
def gamma_fit(gfit, out) -> list[pathlib.Path]:
    """The log-log pairs gamma was fitted to (loss-optimal kappa or naive batch per horizon) and the line."""
    fig, axes = _figure()
    ax = axes[0, 0]
    x, y = gfit.optima.x.to_numpy(float), gfit.optima.y.to_numpy(float)
    ax.scatter(np.exp(x), np.exp(y), label=f"loss-optimal {'batch (naive runs)' if gfit.source == 'naive' else 'kappa'} per horizon")
    grid = np.linspace(x.min() - 0.3, x.max() + 0.3, 40)
    label = f"gamma = {gfit.gamma:.3f} [{gfit.ci95[0]:.3f}, {gfit.ci95[1]:.3f}]"
    ax.plot(np.exp(grid), np.exp(gfit.intercept + gfit.gamma * grid), label=label)
    if gfit.gamma_configured is not None:
        ax.plot(np.exp(grid), np.exp(y.mean() + gfit.gamma_configured * (grid - x.mean())), ls="--", color="#999",
                label=f"configured gamma = {gfit.gamma_configured:g}")
    if gfit.source == "naive":
        ax.set(xlabel="token horizon D (tokens)", ylabel="loss-optimal physical batch (sequences)",
               title="gamma from the naive optimum: B* ~ D^gamma")
    else:
        ax.set(xlabel="D_base / D (token-horizon ratio)", ylabel="optimal kappa x B_base / B",
               title="gamma from kappa at fixed (B, D)")
    ax.set(xscale="log", yscale="log")
    ax.legend()
    return save(fig, out)


def _ternary_xy(fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric (a, b, c) -> 2-D triangle with a at the left, b at the right and c at the top corner."""
    a, b, c = fractions.T
    return b + 0.5 * c, c * np.sqrt(3) / 2


@_styled
def mixing(result, out) -> list[pathlib.Path]:
    """Small multiples, one panel per loss column and the objective: ternary plots for three modalities,
    loss vs fraction for two."""
    frame, mods = result.frame, result.modalities
    panels = [c for c in ("loss_text", "loss_image", "loss_audio", "loss") if c in frame.columns] + ["objective"]
    fig, axes = _figure(ncols=len(panels), width=3.2 * len(panels), height=3.2)
    for ax, column in zip(axes[0], panels):
        values = frame[column].to_numpy(float)
        if len(mods) == 3:
            x, y = _ternary_xy(frame[mods].to_numpy())
            sc = ax.scatter(x, y, c=values, cmap="viridis_r", s=60, edgecolor="black", lw=0.3)
            if column == "objective":
                bx, by = _ternary_xy(np.array([[result.best_observed[m] for m in mods]]))
                ax.scatter(bx, by, marker="*", s=180, color="red", edgecolor="black", zorder=3, label="best observed")
                ax.legend(loc="upper right", fontsize=6.5)
            ax.plot([0, 1, 0.5, 0], [0, 0, np.sqrt(3) / 2, 0], color="grey", lw=0.8)
            for (tx, ty), name in zip([(0, -0.07), (1, -0.07), (0.5, np.sqrt(3) / 2 + 0.03)], mods):
                ax.text(tx, ty, name, ha="center", fontsize=7.5)
            ax.set_aspect("equal")
            ax.axis("off")
            fig.colorbar(sc, ax=ax, shrink=0.7, label="nats/token" if column != "objective" else "objective")
        else:
            order = np.argsort(frame[mods[0]].to_numpy())
            ax.plot(frame[mods[0]].to_numpy()[order], values[order], marker="o")
            ax.set(xlabel=f"fraction of {mods[0]} tokens", ylabel="nats/token" if column != "objective" else "objective")
        ax.set_title(column, pad=16)
    return save(fig, out)


@_styled
def schedules(summary: pd.DataFrame, out) -> list[pathlib.Path]:
    """Grouped bars: per-modality loss by noise schedule, error bars = 95% interval across seeds."""
    columns = list(dict.fromkeys(summary.loss_column))
    labels = list(dict.fromkeys(summary.schedule))
    fig, axes = _figure(width=max(5.0, 1.1 * len(labels) * max(1, len(columns)) ** 0.5 + 2))
    ax = axes[0, 0]
    width = 0.8 / len(columns)
    for i, column in enumerate(columns):
        g = summary[summary.loss_column == column].set_index("schedule").reindex(labels)
        x = np.arange(len(labels)) + (i - (len(columns) - 1) / 2) * width
        err = np.vstack([g["mean"] - g.ci_lo, g.ci_hi - g["mean"]])
        ax.bar(x, g["mean"], width, yerr=err, capsize=2, color=COLORS.get(column), label=column)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=20, ha="right")
    lo = np.nanmin(summary.ci_lo.to_numpy(float))
    ax.set_ylim(bottom=max(0.0, lo - 0.1 * abs(lo)))
    ax.set(xlabel="noise schedule", ylabel=LOSS_LABEL, title="Loss by noise schedule (95% CI over seeds)")
    ax.legend()
    return save(fig, out)


@_styled
def sampling_quality(summary: pd.DataFrame, out, *, ylabel: str = "quality metric") -> list[pathlib.Path]:
    """Sampling quality vs number of sampling steps, one line per (metric, group)."""
    fig, axes = _figure()
    ax = axes[0, 0]
    for (metric, group), g in summary.groupby(["metric", "group"]):
        g = g.sort_values("steps")
        label = f"{metric} {group}".strip()
        ax.plot(g.steps, g["mean"], marker="o", ms=3, label=label)
        ax.fill_between(g.steps, g.ci_lo, g.ci_hi, alpha=0.15)
    ax.set(xscale="log", xlabel="sampling steps", ylabel=ylabel, title="Sampling quality vs steps")
    ax.legend()
    return save(fig, out)


@_styled
def transfer_curves(curves: pd.DataFrame, optima: pd.DataFrame, out) -> list[pathlib.Path]:
    """Loss vs learning rate, one curve per width (top) or depth (bottom); standard parameterisation left,
    CompleteP right; each curve's loss-optimal lr marked (hollow when it is at the edge of the grid)."""
    axes_present = [a for a in ("width", "depth") if a in set(curves.axis)]
    params = sorted(curves.param.unique(), key=lambda p: p != "standard")
    fig, axes = _figure(ncols=len(params), nrows=len(axes_present), width=5.0 * len(params), height=3.6 * len(axes_present))
    for i, axis in enumerate(axes_present):
        for j, param in enumerate(params):
            ax = axes[i, j]
            sel = curves[(curves.axis == axis) & (curves.param == param)]
            sizes = sorted(sel["size"].unique())
            cmap = plt.get_cmap("viridis")
            for k, size in enumerate(sizes):
                g = sel[sel["size"] == size].sort_values("lr")
                color = cmap(k / max(1, len(sizes) - 1) * 0.85)
                ax.errorbar(g.lr, g.loss, yerr=np.vstack([g.loss - g.ci_lo, g.ci_hi - g.loss]), color=color, marker="o",
                            ms=3, capsize=2, label=f"{axis} {size:g}")
                o = optima[(optima.axis == axis) & (optima.param == param) & (optima["size"] == size)]
                for _, row in o.iterrows():
                    ax.plot(row.lr_opt, row.best_loss, marker="v", ms=8, color=color, mfc="none" if row.at_edge else color)
            ax.set_xscale("log", base=2)
            ax.set(xlabel="peak learning rate", ylabel=LOSS_LABEL, title=f"{param}: loss vs lr across {axis}")
            ax.legend(fontsize=6.5)
    return save(fig, out)


@_styled
def antimasking(summary: pd.DataFrame, variance: pd.DataFrame, out) -> list[pathlib.Path]:
    """Left: final loss per loss column, anti-masking off vs on (mean over seeds, 95% t-interval). Right (when
    measured): gradient variance relative to the plain estimator, per regime, with bootstrap intervals."""
    panels = 2 if not variance.empty else 1
    fig, axes = _figure(ncols=panels, width=5.0 * panels)
    ax = axes[0, 0]
    x = np.arange(len(summary))
    for k, (arm, color) in enumerate((("off", "#777777"), ("on", "#1f77b4"))):
        mean = summary[f"{arm}_mean"].to_numpy(float)
        lo, hi = np.array([c[0] for c in summary[f"{arm}_ci95"]]), np.array([c[1] for c in summary[f"{arm}_ci95"]])
        ax.errorbar(x + (k - 0.5) * 0.2, mean, yerr=np.vstack([mean - lo, hi - mean]), fmt="o", color=color, capsize=3,
                    label=f"anti-masking {arm}")
    ax.set_xticks(x, summary.loss_column)
    ax.set(ylabel=LOSS_LABEL, title="Final loss at equal distinct data tokens")
    ax.legend()
    if panels == 2:
        ax = axes[0, 1]
        regimes = list(dict.fromkeys(variance.regime))
        names = [n for n in dict.fromkeys(variance.estimator) if n != "plain"]
        for k, name in enumerate(names):
            sel = variance[variance.estimator == name].set_index("regime").loc[regimes]
            ratio = sel.ratio_to_plain.to_numpy(float)
            lo, hi = np.array([c[0] for c in sel.ratio_ci95]), np.array([c[1] for c in sel.ratio_ci95])
            label = f"{name} ({int(sel.distinct_rows.iloc[0])} distinct, {int(sel.computed_rows.iloc[0])} computed rows)"
            ax.errorbar(np.arange(len(regimes)) + (k - 0.5) * 0.2, ratio, yerr=np.vstack([ratio - lo, hi - ratio]), fmt="s",
                        capsize=3, label=label)
        ax.axhline(1.0, color="#999", ls="--", lw=1, label="plain (1 mask per distinct row)")
        ax.set_xticks(np.arange(len(regimes)), regimes)
        ax.set(ylabel="gradient variance / plain's", title="Gradient variance at fixed parameters")
        ax.legend(fontsize=6.5)
    return save(fig, out)


def all_plot_names() -> Sequence[str]:
    return ("loss_vs_compute", "fitted_vs_observed", "per_modality", "isoflop_curves", "batch_curves",
            "gamma_fit", "transfer_curves", "antimasking", "mixing", "schedules", "sampling_quality")
