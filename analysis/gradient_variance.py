"""Variance of the training gradient at fixed parameters, with and without anti-masking.

    python -m analysis.gradient_variance SWEEP_DIR [--run NAME] [--draws 48] [--rows 8] [--seed 0]

Loads one trained run of an anti-masking sweep (default: the first complete run without anti-masking),
keeps its parameters fixed and draws the gradient of the training loss (nats per target token, exactly as
the train step computes it) many times, for three estimators:

* `plain`: `rows` distinct data rows, one mask each;
* `anti`: the same `rows` distinct rows, each as a mask and its complement (2 x rows computed): equal
  distinct data tokens;
* `plain_2x`: 2 x `rows` distinct rows, one mask each: equal computed rows.

in two regimes: `data+mask` (fresh data rows and fresh noise per draw) and `mask` (one fixed batch, fresh
noise per draw: the masking noise anti-masking targets). For each it reports the total variance
tr Cov(g) = E||g - E g||^2 with a 95% bootstrap interval over draws, the ratios to `plain`, and a bias
check: ||mean_anti - mean_plain||^2 against the size the draws' noise alone gives it (about 1 or below
when both estimate the same gradient). The result is written to SWEEP_DIR/gradient_variance.json, where
`mdiff report` finds it. Nothing in the run directory is changed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
from typing import Any

import numpy as np

from analysis import table
from analysis.errors import AnalysisError

OUTPUT = "gradient_variance.json"
ESTIMATORS = ("plain", "anti", "plain_2x")


def _capture_gradients():
    """An optax transformation that stores the gradient in its state and applies no update."""
    import jax
    import jax.numpy as jnp
    import optax

    def init(params):
        return jax.tree.map(jnp.zeros_like, params)

    def update(grads, state, params=None):
        return jax.tree.map(jnp.zeros_like, grads), grads

    return optax.GradientTransformation(init, update)


def pick_run(sweep_dir: pathlib.Path, name: str | None) -> pathlib.Path:
    """The run to measure: `name`, or the first complete run whose anti-masking is off."""
    df, _ = table.keep_complete(table.read_table(sweep_dir / "results.csv"))
    if name is None:
        column = "diffusion.anti_masking"
        off = df[df[column].astype(str).str.lower().isin(["false", "0"])] if column in df.columns else df
        if off.empty:
            raise AnalysisError(f"{sweep_dir}: no complete run without anti-masking to measure; pass --run NAME")
        name = str(off.sort_values("name").iloc[0]["name"])
    elif name not in set(df["name"].astype(str)):
        raise AnalysisError(f"{sweep_dir}: no complete run named {name!r}")
    return sweep_dir / "runs" / name


def _estimator_steps(loaded, rows: int):
    """{estimator: jitted (params, batch, step) -> flat gradient} and the config each uses."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mdiff.train import step as step_lib

    tx = _capture_gradients()
    out = {}
    for name, anti in (("plain", False), ("anti", True), ("plain_2x", False)):
        config = loaded.config.copy_and_resolve_references()
        with config.unlocked():
            config.diffusion.anti_masking = anti
        setup = step_lib.loss_setup(config, loaded.graphdef, loaded.state, loaded.vocab)
        train_step = step_lib.make_train_step(setup, lambda hp: tx, 1)
        rng = jax.random.key_data(jax.random.key(0)).astype(jnp.uint32)

        def grad(params, batch, step, train_step=train_step, rng=rng):
            state = dict(params=params, opt_state=tx.init(params), step=step, rng=rng)
            new_state, _ = train_step(state, batch, {})
            return jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(new_state["opt_state"])])

        out[name] = jax.jit(grad)
    return out, nnx.to_pure_dict(loaded.state)


def _rows_for(name: str, batch: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """The estimator's batch from 2 x rows distinct rows: the first `rows` (each twice, as pairs 2g, 2g+1,
    for anti-masking) or all of them."""
    if name == "plain":
        return {k: v[:rows] for k, v in batch.items()}
    if name == "anti":
        return {k: np.repeat(v[:rows], 2, axis=0) for k, v in batch.items()}
    return batch


def _variance(g: np.ndarray) -> float:
    return float(g.var(axis=0, ddof=1).sum())


def measure(run_dir: pathlib.Path, *, draws: int = 48, rows: int = 8, seed: int = 0, n_bootstrap: int = 500) -> dict[str, Any]:
    """Draw each estimator's gradient `draws` times in both regimes; return the summary (see the module docstring)."""
    import jax.numpy as jnp

    from mdiff.data.pipeline import make_pipeline
    from mdiff.eval.restore import load_run

    if draws < 4 or rows < 1:
        raise AnalysisError(f"--draws {draws} / --rows {rows}: need >= 4 draws and >= 1 row")
    started = time.time()
    loaded = load_run(run_dir)
    grads, params = _estimator_steps(loaded, rows)
    data_config = loaded.config.copy_and_resolve_references()
    with data_config.unlocked():
        data_config.diffusion.anti_masking = False
        data_config.train.batch = 2 * rows
        data_config.seed = seed
    pipeline = make_pipeline(data_config, "train")
    try:
        batches = [{k: np.asarray(v) for k, v in next(pipeline).items()} for _ in range(draws)]
    finally:
        pipeline.close()
    rng = np.random.default_rng(seed)
    result: dict[str, Any] = dict(run=run_dir.name, step=loaded.step, draws=draws, rows=rows, seed=seed, regimes={})
    for regime in ("data+mask", "mask"):
        g = {}
        for name in ESTIMATORS:
            fn = grads[name]
            g[name] = np.stack([
                np.asarray(fn(params, {k: jnp.asarray(v) for k, v in _rows_for(name, batches[k if regime == "data+mask" else 0], rows).items()},
                              jnp.int32(1_000_003 * (regime == "mask") + k)))
                for k in range(draws)
            ])  # fmt: skip
        result["regimes"][regime] = _summarise(g, rows, rng, n_bootstrap)
    result["seconds"] = time.time() - started
    return result


def _summarise(g: dict[str, np.ndarray], rows: int, rng: np.random.Generator, n_bootstrap: int) -> dict[str, Any]:
    k = len(g["plain"])
    var = {name: _variance(x) for name, x in g.items()}
    boot = {name: [] for name in g}
    for _ in range(n_bootstrap):  # draws resampled together: the estimators share each draw's data
        idx = rng.integers(0, k, k)
        v = {name: _variance(x[idx]) for name, x in g.items()}
        for name in g:
            boot[name].append(v[name] / v["plain"] if name != "plain" else v[name])
    ci = {name: [float(np.percentile(b, 2.5)), float(np.percentile(b, 97.5))] for name, b in boot.items()}
    distinct = dict(plain=rows, anti=rows, plain_2x=2 * rows)
    computed = dict(plain=rows, anti=2 * rows, plain_2x=2 * rows)
    diff = float(np.sum((g["anti"].mean(0) - g["plain"].mean(0)) ** 2))
    noise = (var["anti"] + var["plain"]) / k
    return dict(
        estimators={name: dict(distinct_rows=distinct[name], computed_rows=computed[name], variance=var[name],
                               ratio_to_plain=var[name] / var["plain"],
                               ratio_ci95=None if name == "plain" else ci[name]) for name in g},
        variance_ci95_plain=ci["plain"],
        bias_check=dict(mean_difference_sq=diff, noise_level=noise, ratio=diff / noise),
    )


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="an anti-masking sweep directory (results.csv, runs/)")
    parser.add_argument("--run", default=None, help="run name (default: the first complete run without anti-masking)")
    parser.add_argument("--draws", type=int, default=48, help="gradient draws per estimator and regime (default 48)")
    parser.add_argument("--rows", type=int, default=8, help="distinct data rows per plain estimate (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="data and bootstrap seed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.gradient_variance", description=__doc__.split("\n\n")[0])
    configure(parser)
    args = parser.parse_args(argv)
    from mdiff.rundir import WorkdirError

    sweep_dir = pathlib.Path(args.sweep_dir)
    try:
        result = measure(pick_run(sweep_dir, args.run), draws=args.draws, rows=args.rows, seed=args.seed)
    except (AnalysisError, WorkdirError) as e:
        print(f"gradient_variance: error: {e}", file=sys.stderr)
        return 2
    out = sweep_dir / OUTPUT
    tmp = out.with_name(f".{OUTPUT}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(out)
    for regime, r in result["regimes"].items():
        ratios = {n: round(e["ratio_to_plain"], 3) for n, e in r["estimators"].items()}
        print(f"{regime}: variance ratio to plain {ratios}; bias check {r['bias_check']['ratio']:.2f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
