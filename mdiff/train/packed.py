"""Packed training: several same-shape sweep points in one compiled program.

Points that differ only in what can be an array or a data stream (PER_POINT_KEYS: the seed, which
fixes the initial parameters, the noise stream and the data order; the data mixture; and the
optimiser's values, lr, betas, eps, weight decay and warm-up, which the train step takes as data,
mdiff.optim.adamw) train together: their states and hyperparameters are stacked along a leading axis
and one `jax.vmap` of the ordinary train step updates them all, each from its own batch.
Everything else about a point stays as when it trains alone (mdiff.train.loop): its own run
directory, config.json, metrics.jsonl, eval.jsonl, checkpoints (at the same steps, so a killed job
resumes exactly), summary.json and hence its results.csv row. A point whose loss turns non-finite
is recorded as failed and left out of every later record and checkpoint; the others go on.

    python -m mdiff.train.packed SPEC.json

SPEC.json is a list of {"config": "FILE[:VARIANT]", "workdir": DIR, "overrides": [--config.KEY=VALUE ...]}.
One process, one device (its first; a pod trains each point with the ordinary, sharded loop).
"""

from __future__ import annotations

import json
import logging
import pathlib
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from mdiff import rundir
from mdiff.config import ConfigError
from mdiff.data.pipeline import make_pipeline
from mdiff.optim import sde
from mdiff.train import loop as loop_lib
from mdiff.train import sharding, step as step_lib
from mdiff.train.checkpoint import Checkpointer

log = logging.getLogger(__name__)

# Config keys a packed point may set on its own: everything the compiled step sees as data.
PER_POINT_KEYS = ("name", "seed", "data.mix", "data.i2t_fraction", "data.s2t_fraction", "optim.lr", "optim.b1",
                  "optim.b2", "optim.eps", "optim.weight_decay", "optim.warmup", "optim.warmup_tokens",
                  "optim.warmup_steps_max")


def _per_point(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in PER_POINT_KEYS)


def _shared(config: Any) -> dict[str, Any]:
    """What packed points must agree on: the config without its per-point keys, plus the update rule's
    structure, which the per-point values can change (whether weight decay is on, and its form)."""
    shared = {k: v for k, v in rundir.flatten_dict(rundir.config_dict(config)).items() if not _per_point(k)}
    plan = sde.plan(config)
    shared["optimiser structure (weight decay on, decoupled)"] = [bool(plan.weight_decay), plan.decoupled_decay]
    return shared


def pack_key(config: Any) -> str:
    """Points with equal keys can train packed."""
    return json.dumps(_shared(config), sort_keys=True, default=str)


def unpackable_reason(configs: Sequence[Any]) -> str | None:
    """Why these configs cannot train packed (one line), or None when they can."""
    if len(configs) < 2:
        return "fewer than two points"
    if jax.process_count() > 1:
        return f"{jax.process_count()} processes (packing runs in one process, on one device)"
    first = _shared(configs[0])
    for c in configs[1:]:
        other = _shared(c)
        diff = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if diff:
            return f"{c.get('name', '?')} differs from {configs[0].get('name', '?')} in {', '.join(diff[:3])}"
    return None


def _stack(trees: Sequence[Any]) -> Any:
    return jax.tree.map(lambda *xs: jax.numpy.stack(xs), *trees)


def _point(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


class _Point:
    """One point's run directory, data stream and records (the ordinary loop's bookkeeping)."""

    def __init__(self, config: Any, workdir: pathlib.Path, started: float):
        self.config, self.workdir = config, workdir
        self.pipeline = make_pipeline(config, "train")
        self.run = loop_lib.setup(config, workdir, self.pipeline.vocab, devices=jax.devices()[:1])
        self.checkpointer = Checkpointer(
            workdir / rundir.CHECKPOINT_DIR, keep=config.train.keep_checkpoints, use_async=config.train.checkpoint_async
        )
        self.started = started
        self.active = True
        self.loop: Any = None

    def restore(self, step: int) -> tuple[Any, dict]:
        check = loop_lib.shape_checker(self.run.model, self.run.workdir)
        state, meta = self.checkpointer.restore_step(step, self.run.abstract_state, check_meta=check)
        self.pipeline.set_state(loop_lib.own_data_state(meta["data"]))
        return state, dict(wall_before=float(meta.get("wall_s", 0.0)), window=meta.get("window_sums", {}))

    def close(self) -> None:
        self.checkpointer.close()
        self.pipeline.close()
        if self.loop is not None:
            self.loop.metrics.close()
            self.loop.evals.close()


def _common_step(points: list[_Point]) -> int | None:
    """The newest checkpoint step every point has (points save at the same steps), or None."""
    common = set(points[0].checkpointer.steps())
    for p in points[1:]:
        common &= set(p.checkpointer.steps())
    return max(common) if common else None


def train_packed(configs: Sequence[Any], workdirs: Sequence[str | pathlib.Path]) -> list[dict[str, Any]]:
    """Train the points packed (see the module docstring); return each point's summary, in order."""
    reason = unpackable_reason(configs)
    if reason:
        raise ConfigError(f"these points cannot train packed: {reason}")
    started = time.time()
    points: list[_Point] = []
    try:
        for config, workdir in zip(configs, workdirs):
            points.append(_Point(config, pathlib.Path(workdir), started))
        with loop_lib.Preemption() as preemption:
            return _train(points, preemption)
    finally:
        for p in points:
            p.close()


def _train(points: list[_Point], preemption: loop_lib.Preemption) -> list[dict[str, Any]]:
    base = points[0].run
    sde.log_plan(base.plan)
    common = _common_step(points)
    if common is None:  # one compiled initialisation for every seed
        seeds = jax.numpy.asarray([int(p.config.seed) for p in points], jax.numpy.int32)
        state = jax.jit(jax.vmap(lambda s: loop_lib.fresh_state(base, s)))(seeds)
        resumes = [{} for _ in points]
    else:
        restored = [p.restore(common) for p in points]
        state = _stack([s for s, _ in restored])
        resumes = [r for _, r in restored]
        del restored
    # One sharding for the stacked state in and out of the step (replicated on the job's one device): an
    # initial state laid out otherwise would make the second step retrace the whole program (seconds of Python).
    replicated = jax.sharding.NamedSharding(base.mesh, jax.sharding.PartitionSpec())
    state = jax.device_put(state, replicated)
    start = common or 0
    if common:
        log.info("packed: resuming %d points from step %d", len(points), common)
    eval_step = loop_lib.jit_eval_step(base)  # compiled once, used by every point
    for p, resume in zip(points, resumes):
        rundir.write_config(p.workdir, p.config)
        p.loop = loop_lib._Loop(p.run, p.pipeline, p.checkpointer, start=start, started=p.started, **resume)
        p.loop.evaluate = loop_lib.make_evaluator(p.run, eval_step)
    setup = step_lib.loss_setup(base.config, base.graphdef, base.abstract_params, base.vocab)
    packed_step = jax.jit(jax.vmap(step_lib.make_train_step(setup, base.optimizer, base.config.train.microbatches)),
                          in_shardings=(replicated, None, None), out_shardings=(replicated, None), donate_argnums=0)
    hyperparameters = _stack([p.run.hyperparameters for p in points])  # each point's own optimiser values
    t, total = base.config.train, base.plan.steps
    summaries: dict[int, dict] = {}
    pending: tuple[int, Any] | None = None
    step = start
    with sharding.activation_mesh(base.mesh, base.config):
        try:
            while step < total and any(p.active for p in points):
                rows = [next(p.pipeline) for p in points]
                batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
                state, metrics = packed_step(state, batch, hyperparameters)
                step += 1
                if pending is not None:
                    _record(points, *pending, summaries)
                pending = (step, metrics)
                boundary = p_should(base, t.checkpoint_every, step) or p_should(base, t.eval_every, step)
                stop = preemption.requested
                if boundary or stop or step == total:
                    _record(points, *pending, summaries)
                    pending = None
                live = [(i, p) for i, p in enumerate(points) if p.active]
                if p_should(base, t.eval_every, step):
                    for i, p in live:
                        p.loop.run_eval(_point(state, i), step)
                if p_should(base, t.checkpoint_every, step) or (stop and step < total):
                    for i, p in live:
                        p.loop.save(_point(state, i), step)
                if stop and step < total:
                    for i, p in live:
                        p.checkpointer.wait()
                        p.loop.progress.close()
                        summaries[i] = p.loop.summary("preempted", step, packed=len(points))
                    log.warning("preempted at step %d: checkpoints saved", step)
                    return [summaries[i] for i in range(len(points))]
            for i, p in enumerate(points):
                if p.active:
                    p.loop.save(_point(state, i), step)
                    p.loop.run_eval(_point(state, i), step)
                    p.checkpointer.wait()
                    p.loop.progress.close()
                    summaries[i] = p.loop.summary("complete", step, packed=len(points))
            return [summaries[i] for i in range(len(points))]
        except BaseException as e:
            if not isinstance(e, (KeyboardInterrupt, SystemExit)):
                for i, p in enumerate(points):
                    if p.active and i not in summaries:
                        p.loop.summary("failed", step, error=f"{type(e).__name__}: {e}", packed=len(points))
            raise


def p_should(run: loop_lib.Run, every: int, step: int) -> bool:
    return every > 0 and step % every == 0 and step != run.plan.steps


def _record(points: list[_Point], step: int, metrics: Any, summaries: dict[int, dict]) -> None:
    """Each live point's record of `step`; a non-finite point is summarised as failed and dropped."""
    host = jax.device_get(metrics)
    for i, p in enumerate(points):
        if not p.active:
            continue
        try:
            p.loop.record(step, {k: v[i] for k, v in host.items()})
        except loop_lib.NonFiniteLoss as e:
            log.error("%s: %s; this point stops, the others go on; its last good checkpoint is kept", p.workdir.name, e)
            p.active = False
            p.loop.progress.close()
            summaries[i] = p.loop.summary("failed", e.step - 1, error=str(e), failed_step=e.step, packed=len(points))


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def load_spec(path: str) -> tuple[list[Any], list[str]]:
    """SPEC.json -> (configs, workdirs); a bad spec is a ConfigError naming the entry."""
    from mdiff.config import load_config

    try:
        entries = json.loads(pathlib.Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"packed spec {path!r}: {e}") from None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"packed spec {path!r}: expected a non-empty list of points")
    configs, workdirs = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"config", "workdir"} <= set(entry):
            raise ConfigError(f"packed spec {path!r}: entry {i} needs 'config' and 'workdir'")
        configs.append(load_config(entry["config"], list(entry.get("overrides", []))))
        workdirs.append(entry["workdir"])
    return configs, workdirs


def main(argv: Sequence[str] | None = None) -> int:
    from mdiff import runtime

    runtime.use_compilation_cache()  # (malloc tuning, as `mdiff` has it, is not measured for packed jobs yet)
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m mdiff.train.packed SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        configs, workdirs = load_spec(argv[0])
        for config, workdir in zip(configs, workdirs):  # as `mdiff train` does: refusals before any work
            rundir.prepare_workdir(workdir, config)
        summaries = train_packed(configs, workdirs)
    except (ConfigError, rundir.WorkdirError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    statuses = [s["status"] for s in summaries]
    print(json.dumps({"packed": len(summaries), "statuses": statuses}))
    if "preempted" in statuses:  # resumable: the sweep runner and SLURM requeue it
        return rundir.EXIT_PREEMPTED
    return 0 if all(s == "complete" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
