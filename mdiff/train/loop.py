"""`train_and_evaluate(config, workdir)`: the whole run, resumable, writing the run-directory contract.

Order of work: check everything that can be wrong (plan, mesh, batch layout, checkpoint shape) before
compiling anything; restore the newest readable checkpoint or initialise sharded; then loop, dispatching
step n+1 before reading step n's metrics. SIGTERM saves a checkpoint and ends with status `preempted`;
a non-finite loss ends with status `failed`, naming the step, and leaves the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mdiff import rundir
from mdiff.config import ConfigDict, ConfigError
from mdiff.data.pipeline import make_pipeline, open_corpus
from mdiff.diffusion.loss import per_token_metrics
from mdiff.model import build_model
from mdiff.model import scaling
from mdiff.optim import completep, sde
from mdiff.optim.adamw import Hyperparameters, hyperparameters, make_optimizer
from mdiff.optim.schedule import host_lr
from mdiff.train import distributed, mfu, sharding, step as step_lib
from mdiff.train.checkpoint import Checkpointer
from mdiff.train.defaults import check_batch_layout, eval_batch_size
from mdiff.train.progress import Progress
from mdiff.vocab import UnifiedVocab

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Set-up: everything derived from the config before any compilation
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Model:
    """The model as training builds it: shape, mesh, structure and sharded abstract parameters."""

    config: ConfigDict
    vocab: UnifiedVocab
    shape: scaling.ModelShape
    mesh: Mesh
    graphdef: nnx.GraphDef
    abstract_params: nnx.State  # the merge template (nnx.replace_by_pure_dict)
    param_sharding: dict  # pure-dict tree of NamedShardings

    def abstract_pure(self) -> dict:
        """ShapeDtypeStructs of the parameters' pure dict, with their shardings (a restore target)."""
        return jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
            nnx.to_pure_dict(self.abstract_params),
            self.param_sharding,
        )


@dataclasses.dataclass
class Run:
    """Everything a training run derives from its config before compiling."""

    model: Model
    workdir: pathlib.Path
    plan: sde.OptimPlan
    optimizer: Callable[[Hyperparameters], optax.GradientTransformation]  # the update rule for these values
    hyperparameters: Hyperparameters  # the plan's values (numpy): the train step's third argument
    state_sharding: dict  # {"params", "opt_state", "step", "rng"} -> NamedShardings
    abstract_state: dict  # the same tree of ShapeDtypeStructs with shardings
    batch_sharding: NamedSharding
    counts: dict[str, int]
    flops_per_token: float

    # The model's fields, read often enough by the loop to be named here.
    config = property(lambda self: self.model.config)
    vocab = property(lambda self: self.model.vocab)
    shape = property(lambda self: self.model.shape)
    mesh = property(lambda self: self.model.mesh)
    graphdef = property(lambda self: self.model.graphdef)
    abstract_params = property(lambda self: self.model.abstract_params)
    tx = property(lambda self: self.optimizer(self.hyperparameters))  # for the state's structure and init


def model_setup(config: ConfigDict, vocab: UnifiedVocab, devices: list | None = None) -> Model:
    """The model's shape, mesh and sharded abstract parameters (no optimiser): what a reader of a run needs."""
    mesh = sharding.make_mesh(config, devices)
    shape = scaling.resolve_shape(config.model)
    overrides = completep.model_overrides(shape.width, shape.depth, config.optim)

    def make_model():
        return build_model(config.model, vocab, config.data.seq_len, rngs=nnx.Rngs(config.seed), **overrides)

    graphdef, abstract_params = nnx.split(nnx.eval_shape(make_model))
    param_sharding = sharding.param_shardings(abstract_params, mesh, config)
    return Model(config, vocab, shape, mesh, graphdef, abstract_params, param_sharding)


def setup(config: ConfigDict, workdir: pathlib.Path, vocab: UnifiedVocab, devices: list | None = None) -> Run:
    """Everything derived from the config before compiling; the mesh spans `devices` (default: all)."""
    plan = sde.plan(config)
    model = model_setup(config, vocab, devices)
    mesh, shape = model.mesh, model.shape
    check_batch_layout(config, sharding.data_parallel_size(mesh, config))
    abstract_pure = nnx.to_pure_dict(model.abstract_params)

    def optimizer(hp: Hyperparameters | None = None) -> optax.GradientTransformation:
        return make_optimizer(config.optim, plan, abstract_pure, model_width=shape.width, model_depth=shape.depth, hp=hp)

    tx = optimizer()
    replicated = NamedSharding(mesh, P())
    abstract_opt = jax.eval_shape(tx.init, abstract_pure)
    # Moments shard like their parameters; counts and masked-out slots (multi_transform) are replicated.
    masked = optax.transforms.MaskedNode
    opt_sh = optax.tree_map_params(
        tx,
        lambda leaf, sh: leaf if isinstance(leaf, masked) else sh,
        abstract_opt,
        model.param_sharding,
        transform_non_params=lambda _: replicated,
        is_leaf=lambda x: isinstance(x, (NamedSharding, masked)),
    )
    state_sh = {"params": model.param_sharding, "opt_state": opt_sh, "step": replicated, "rng": replicated}
    shapes = {
        "params": abstract_pure,
        "opt_state": abstract_opt,
        "step": jax.ShapeDtypeStruct((), jnp.int32),
        "rng": jax.ShapeDtypeStruct((2,), jnp.uint32),
    }
    abstract_state = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, state_sh)
    return Run(
        model=model,
        workdir=workdir,
        plan=plan,
        optimizer=optimizer,
        hyperparameters=hyperparameters(plan),
        state_sharding=state_sh,
        abstract_state=abstract_state,
        batch_sharding=sharding.batch_sharding(mesh, config),
        counts=scaling.param_counts(shape, vocab.size),
        flops_per_token=scaling.flops_per_token(shape, vocab.size, config.data.seq_len),
    )


def init_state(run: Run) -> dict:
    """Initialise parameters and optimiser state directly in their shardings (never on one device). The seed is
    an argument, not a constant, so runs that differ only in their seed compile one program (and share it
    through the persistent compilation cache)."""
    with sharding.activation_mesh(run.mesh, run.config):
        init = jax.jit(lambda seed: fresh_state(run, seed), out_shardings=run.state_sharding)
        return init(np.int32(run.config.seed))


def fresh_state(run: Run, seed: Any) -> dict:
    """The initial train state for `seed` (an int or a traced array: packed training vmaps over seeds)."""
    config = run.config
    overrides = completep.model_overrides(run.shape.width, run.shape.depth, config.optim)
    model = build_model(config.model, run.vocab, config.data.seq_len, rngs=nnx.Rngs(jax.random.key(seed)), **overrides)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {
        "params": params,
        "opt_state": run.tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "rng": jax.random.key_data(jax.random.key(seed + 1)).astype(jnp.uint32),
    }


class NonFiniteLoss(FloatingPointError):
    def __init__(self, step: int, loss: float, grad_norm: float):
        super().__init__(f"non-finite loss at step {step} (loss {loss}, grad norm {grad_norm})")
        self.step = step


def all_processes(obj: Any) -> list[Any]:
    """Every process's JSON-able `obj`, in process order (orbax writes the JSON item from process 0)."""
    if jax.process_count() == 1:
        return [obj]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray(len(raw)))
    padded = np.zeros(int(np.max(lengths)), np.uint8)
    padded[: len(raw)] = raw
    everyone = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(everyone, lengths)]


def own_data_state(saved: list[Any]) -> Any:
    if len(saved) != jax.process_count():
        raise ConfigError(
            f"the checkpoint's data-iterator state is from {len(saved)} processes; this run has "
            f"{jax.process_count()}: resume with {len(saved)} processes"
        )
    return saved[jax.process_index()]


def param_shapes(abstract_params: Any) -> dict[str, list[int]]:
    return {completep.path_name(p): list(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(abstract_params)}


def shape_checker(model: Model, workdir: pathlib.Path):
    """`check(meta)`: a checkpoint whose parameter shapes differ from `model`'s is a config error."""
    want = param_shapes(nnx.to_pure_dict(model.abstract_params))

    def check(meta: dict) -> None:
        have = meta.get("param_shapes")
        if have is None or have == want:
            return
        diffs = [f"{k}: {have.get(k)} -> {want.get(k)}" for k in sorted(set(have) | set(want)) if have.get(k) != want.get(k)]
        raise ConfigError(
            f"config.model: the checkpoint in {workdir / rundir.CHECKPOINT_DIR} holds a model of another shape "
            f"({'; '.join(diffs[:3])}{'; ...' if len(diffs) > 3 else ''}); resume with the model config it was "
            "trained with, or start afresh with --overwrite"
        )

    return check


def jit_train_step(run: Run):
    """The sharded train step, state donated: (state, global batch, hyperparameters) -> (state, summed
    metrics); pass `device_hyperparameters(run)`."""
    setup_train = step_lib.loss_setup(run.config, run.graphdef, run.abstract_params, run.vocab)
    fn = step_lib.make_train_step(setup_train, run.optimizer, run.config.train.microbatches)
    replicated = run.state_sharding["step"]
    return jax.jit(fn, in_shardings=(run.state_sharding, run.batch_sharding, replicated),
                   out_shardings=(run.state_sharding, None), donate_argnums=0)


def device_hyperparameters(run: Run) -> dict:
    """The run's optimiser values placed (replicated) as the train step takes them."""
    return jax.device_put(run.hyperparameters, run.state_sharding["step"])


def abstract_hyperparameters(run: Run) -> dict:
    return {k: jax.ShapeDtypeStruct((), jnp.float32, sharding=run.state_sharding["step"]) for k in run.hyperparameters}


def abstract_batch(run: Run) -> dict[str, jax.ShapeDtypeStruct]:
    from mdiff.data.layout import BATCH_KEYS

    shape = (run.config.train.batch, run.config.data.seq_len)
    return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=run.batch_sharding) for k in BATCH_KEYS}


# ---------------------------------------------------------------------------------------------
# Evaluation: fixed seed, fixed t, the start of the validation split
# ---------------------------------------------------------------------------------------------
def jit_eval_step(run: Run):
    """The sharded eval step: (params, global batch, key) -> summed metrics."""
    setup_eval = step_lib.loss_setup(run.config, run.graphdef, run.abstract_params, run.vocab, train=False)
    return jax.jit(step_lib.make_eval_step(setup_eval), in_shardings=(run.state_sharding["params"], run.batch_sharding, None))


def make_evaluator(run: Run, eval_step: Any = None):
    """`evaluate(params)` over the validation split; `eval_step` (from jit_eval_step) may be shared by
    runs of one shape (packed sweep points) so that it compiles once."""
    config = run.config
    rows = eval_batch_size(config)
    eval_step = eval_step or jit_eval_step(run)
    corpus = []  # opened on first use, then reused

    def evaluate(params: dict) -> dict[str, float]:
        if not corpus:
            corpus.append(open_corpus(config, "validation"))
        pipeline = make_pipeline(config, "validation", corpus=corpus[0], batch=rows)
        totals: dict[str, float] = {}
        try:
            for b in range(config.train.eval_batches):
                batch = sharding.global_batch(next(pipeline), run.batch_sharding, rows)
                key = jax.random.fold_in(jax.random.key(config.train.eval_seed), b)
                sums = jax.device_get(eval_step(params, batch, key))
                for k, v in sums.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        finally:
            pipeline.close()
        return per_token_metrics(totals, prefix="eval/") if totals else {}

    return evaluate


# ---------------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------------
class Preemption(rundir.StopRequest):
    """SIGTERM as a flag (rundir.StopRequest), checked so that every process stops at the same step."""

    def reached(self, checkpointer: Checkpointer, step: int, *, sync: bool) -> bool:
        """Single process: the flag. Several: JAX's preemption sync point, or (every `sync` step) any
        process's flag, so that all processes stop at the same step."""
        if jax.process_count() == 1:
            return self.requested
        if checkpointer.reached_preemption(step):
            return True
        if sync:
            from jax.experimental import multihost_utils

            return bool(np.any(multihost_utils.process_allgather(np.asarray(self.requested))))
        return False


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def train_and_evaluate(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
    """Train `config` in `workdir` (resuming from its checkpoints); return the summary."""
    distributed.initialize()
    with Preemption() as preemption:  # from the start: a SIGTERM while compiling still ends cleanly
        started = time.time()
        workdir = pathlib.Path(workdir)
        pipeline = make_pipeline(config, "train")
        checkpointer = None
        try:
            run = setup(config, workdir, pipeline.vocab)
            sde.log_plan(run.plan)
            checkpointer = Checkpointer(
                workdir / rundir.CHECKPOINT_DIR, keep=config.train.keep_checkpoints, use_async=config.train.checkpoint_async
            )
            restored = checkpointer.restore(run.abstract_state, check_meta=shape_checker(run.model, workdir))
            if restored is not None:
                start, state, meta = restored
                pipeline.set_state(own_data_state(meta["data"]))
                resume = dict(wall_before=float(meta.get("wall_s", 0.0)), window=meta.get("window_sums", {}))
                log.info("resuming from step %d", start)
            else:
                start, state, resume = 0, init_state(run), {}
            rundir.write_config(workdir, config)
            loop = _Loop(run, pipeline, checkpointer, start=start, started=started, **resume)
            with sharding.activation_mesh(run.mesh, config):  # the model's activation constraints
                return loop.run(state, preemption)
        finally:
            if checkpointer is not None:
                checkpointer.close()
            pipeline.close()


class _Loop:
    def __init__(
        self,
        run: Run,
        pipeline,
        checkpointer: Checkpointer,
        *,
        start: int,
        started: float,
        wall_before: float = 0.0,
        window: dict[str, float] | None = None,
    ):
        self.run_ = run
        self.config = run.config
        self.pipeline = pipeline
        self.checkpointer = checkpointer
        self.start = start
        self.wall_before = wall_before
        self.started = started
        self.tokens_per_step = run.plan.batch * run.plan.seq_len  # processed (what the model computes on)
        self.data_tokens_per_step = self.tokens_per_step // pipeline.repeat  # distinct data tokens (anti-masking: half)
        t = self.config.train
        self.metrics = rundir.JsonlWriter(run.workdir / rundir.METRICS_FILE, keep_until_step=start)
        self.evals = rundir.JsonlWriter(run.workdir / rundir.EVAL_FILE, keep_until_step=start)
        self.progress = Progress(run.plan.steps, start, enabled=t.progress)
        self.peak = t.peak_flops or mfu.peak_flops_per_device(jax.devices()[0], self.config.model.dtype)
        self.evaluate = make_evaluator(run)
        self.last_eval: dict[str, float] = {}
        self.sums: dict[str, float] = {k: float(v) for k, v in (window or {}).items()}
        self.window = (time.time(), start)

    # -- helpers ---------------------------------------------------------------------------------
    def wall(self) -> float:
        return self.wall_before + time.time() - self.started

    def meta(self, step: int) -> dict[str, Any]:
        return {
            "data": all_processes(self.pipeline.get_state()),
            "param_shapes": param_shapes(nnx.to_pure_dict(self.run_.abstract_params)),
            "wall_s": self.wall(),
            "step": step,
            "window_sums": dict(self.sums),  # metrics of steps since the last record (exact resume)
        }

    def save(self, state: dict, step: int) -> None:
        self.checkpointer.save(step, state, self.meta(step))

    def compile_step(self):
        return jit_train_step(self.run_)

    def next_batch(self) -> dict:
        return sharding.global_batch(next(self.pipeline), self.run_.batch_sharding, self.config.train.batch)

    # -- records ---------------------------------------------------------------------------------
    def record(self, step: int, sums: dict) -> dict[str, Any] | None:
        """Accumulate step metrics; write a metrics.jsonl record every log_every steps and at the end."""
        sums = jax.device_get(sums)
        for k, v in sums.items():
            if k != "grad_norm":
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
        loss = float(sums["nelbo_sum"]) / max(float(sums["count"]), 1.0)
        if not math.isfinite(loss) or not math.isfinite(float(sums["grad_norm"])):
            raise NonFiniteLoss(step, loss, float(sums["grad_norm"]))
        if step % self.config.train.log_every and step != self.run_.plan.steps:
            return None
        now = time.time()
        elapsed = max(now - self.window[0], 1e-9)
        tokens_per_s = (step - self.window[1]) * self.tokens_per_step / elapsed
        self.window = (now, step)
        losses = per_token_metrics(self.sums)
        self.sums = {}
        flops_per_s = tokens_per_s * self.run_.flops_per_token
        rec = {
            "step": step,
            "tokens": step * self.data_tokens_per_step,
            "tokens_processed": step * self.tokens_per_step,
            "flops": step * self.tokens_per_step * self.run_.flops_per_token,
            "wall_s": self.wall(),
            **losses,  # loss, bits and (fill targets only) fill_share, overall and per modality
            "lr": host_lr(self.run_.plan, self.config.optim.schedule, self.config.optim.final_lr_fraction, step - 1),
            "grad_norm": float(sums["grad_norm"]),
            "tokens_per_s": tokens_per_s,
        }
        utilisation = mfu.mfu(flops_per_s, jax.device_count(), self.peak)
        if utilisation is not None:
            rec["mfu"] = utilisation
        self.metrics.write(rec)
        self.progress.update(step, rec["loss"])
        return rec

    def run_eval(self, state: dict, step: int) -> None:
        result = self.evaluate(state["params"])
        self.last_eval = result
        self.evals.write({"step": step, "tokens": step * self.data_tokens_per_step, **result})

    def summary(self, status: str, step: int, **extra) -> dict[str, Any]:
        plan, counts = self.run_.plan, self.run_.counts
        out = {
            "status": status,
            "name": self.config.get("name", ""),
            "params": counts["non_embedding"],  # = params_nonembedding (kept for older readers)
            "params_nonembedding": counts["non_embedding"],
            "params_total": counts["total"],
            "params_embedding": counts["embedding"],
            "flops_per_token": self.run_.flops_per_token,  # per processed token: flops = tokens_processed x this
            "tokens": step * self.data_tokens_per_step,
            "tokens_processed": step * self.tokens_per_step,
            "flops": step * self.tokens_per_step * self.run_.flops_per_token,
            "steps": step,
            "steps_planned": plan.steps,
            "batch_physical": plan.batch,
            "batch_logical": plan.batch_logical,
            "kappa": plan.kappa,
            "lr": plan.lr,
            "plan": plan.to_dict(),
            **self.last_eval,
            "wall_s": self.wall(),
            **extra,
        }
        rundir.write_summary(self.run_.workdir, out)
        return out

    def should(self, every: int, step: int) -> bool:
        return every > 0 and step % every == 0 and step != self.run_.plan.steps

    # -- main loop -----------------------------------------------------------------------------------
    def run(self, state: dict, preemption: Preemption) -> dict[str, Any]:
        t, total = self.config.train, self.run_.plan.steps
        train_step, hp = self.compile_step(), device_hyperparameters(self.run_)
        pending: tuple[int, Any] | None = None  # (step, device metrics) not yet read
        step = self.start
        try:
            while step < total:
                state, metrics = train_step(state, self.next_batch(), hp)
                step += 1
                if pending is not None:
                    self.record(*pending)
                pending = (step, metrics)
                boundary = self.should(t.checkpoint_every, step) or self.should(t.eval_every, step)
                stop = preemption.reached(self.checkpointer, step, sync=step % t.log_every == 0)
                if boundary or stop or step == total:
                    self.record(*pending)
                    pending = None
                if self.should(t.eval_every, step):
                    self.run_eval(state, step)
                if self.should(t.checkpoint_every, step) or (stop and step < total):
                    self.save(state, step)
                if stop and step < total:
                    self.checkpointer.wait()
                    log.warning("preempted at step %d: checkpoint saved", step)
                    self.progress.close()
                    return self.summary("preempted", step)
            self.save(state, step)
            self.run_eval(state, step)
            self.checkpointer.wait()
            self.progress.close()
            return self.summary("complete", step)
        except NonFiniteLoss as e:
            log.error("%s; stopping, the last good checkpoint is kept", e)
            self.progress.close()
            return self.summary("failed", e.step - 1, error=str(e), failed_step=e.step)
        except BaseException as e:
            if not isinstance(e, (KeyboardInterrupt, SystemExit)):
                self.summary("failed", step, error=f"{type(e).__name__}: {e}")
            raise
        finally:
            self.metrics.close()
            self.evals.close()
