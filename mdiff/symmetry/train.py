"""Two-stage SGM training with the project's run-directory contract.

Stage 1 trains q(eta | x) with the invariance loss; stage 2 freezes it and trains p(eta | prototype) by maximum
likelihood. One global step counter runs over both stages (stage 1: steps [0, S1), stage 2: [S1, S1 + S2)), so
one orbax checkpoint (all parameters and optimiser states) resumes either stage. Batches are drawn with an RNG
seeded by (seed, step), so a resumed run sees exactly the batches an uninterrupted one would have seen.

Run directory: config.json, metrics.jsonl (one record per logged step, `stage` 1 or 2), eval.jsonl (end of each
stage, keys prefixed `eval/`), summary.json (atomic, last), checkpoints/ (orbax).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import nnx

from mdiff import rundir
from mdiff.symmetry import losses
from mdiff.symmetry.data import ImageSet, load
from mdiff.symmetry.flow import ConditionalFlow
from mdiff.symmetry.nets import InferenceNet, NoiseScale
from mdiff.symmetry.transforms import Bounds, Family


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
def family_and_bounds(config) -> tuple[Family, Bounds]:
    family = Family(config.transform.family)
    return family, Bounds.create(family, config.transform.bounds, config.transform.offset, config.transform.squash)


def build_models(config, image_shape: tuple[int, int, int]) -> tuple[InferenceNet, ConditionalFlow]:
    _, bounds = family_and_bounds(config)
    q, f = config.inference, config.flow
    inf = InferenceNet(image_shape, bounds, arch=q.arch, hidden=tuple(q.hidden), conv_features=tuple(q.conv_features),
                       sigma_init=q.sigma_init, rngs=nnx.Rngs(config.seed))
    flow = ConditionalFlow(image_shape, bounds, hidden=tuple(f.hidden), num_flows=f.num_flows, num_bins=f.num_bins,
                           spline_range=f.spline_range, conditioner_hidden=tuple(f.conditioner_hidden),
                           dropout=f.dropout, conditioner_dropout=f.conditioner_dropout,
                           rngs=nnx.Rngs(config.seed + 1))
    return inf, flow


def lr_schedule(cfg, steps: int) -> optax.Schedule:
    return optax.warmup_cosine_decay_schedule(
        init_value=cfg.lr * cfg.init_mult, peak_value=cfg.lr, warmup_steps=max(int(steps * cfg.warmup), 1),
        decay_steps=max(steps, 2), end_value=cfg.lr * cfg.final_mult)


def clipped_adamw(cfg, steps: int) -> optax.GradientTransformation:
    return optax.chain(optax.clip_by_global_norm(cfg.clip),
                       optax.adamw(lr_schedule(cfg, steps), weight_decay=cfg.weight_decay))


def noise_optimiser(cfg, steps: int) -> optax.GradientTransformation:
    """Plain Adam for sigma: warm-up from sigma_lr to 3 sigma_lr, cosine decay to sigma_lr / 3 (digest §3.6)."""
    sched = optax.warmup_cosine_decay_schedule(
        init_value=cfg.sigma_lr, peak_value=3 * cfg.sigma_lr, warmup_steps=max(int(steps * cfg.warmup), 1),
        decay_steps=max(steps, 2), end_value=cfg.sigma_lr / 3)
    return optax.adam(sched)


def blur_sigma(step, cfg, steps: int):
    end = cfg.blur_end * steps
    if cfg.blur_sigma_init <= 0 or end <= 0:
        return None
    return cfg.blur_sigma_init * jnp.clip(1.0 - step / end, 0.0, 1.0)


def aug_mult(step, cfg, steps: int):
    """Augmentation-range multiplier of stage 1: aug_init_mult at step 0, linearly to 1 at aug_end.

    Why (an early-training trick like the blur schedule, not in the paper): with two augmentations uniform on the
    whole circle (symmetric loss), "q ignores the rotation" is a stationary point of the expected invariance loss
    for a shape without rotational symmetry: the residual rotation r1 - r2 is then uniform on the circle whatever
    q's constant output, so the expected gradient towards tracking the rotation vanishes. Measured on dSprites
    `known`: q's rotation has slope ~0.0 on the hearts' known rotation after 2k and 6k steps (0.69 when the
    range grows over the first half of stage 1, 0.88 when it grows over all of it); small augmentations first let
    q learn the local pose, which the wider range then extends.
    """
    end = cfg.aug_end * steps
    if end <= 0 or cfg.aug_init_mult >= 1:
        return 1.0
    return cfg.aug_init_mult + (1.0 - cfg.aug_init_mult) * jnp.clip(step / end, 0.0, 1.0)


def _or_zero(value):
    return 0.0 if value is None else value


@dataclasses.dataclass
class Trainer:
    """Pure functions of the two stages plus their initial state (a pytree of arrays)."""

    config: Any
    family: Family
    bounds: Bounds
    inf_graph: Any
    flow_graph: Any
    state: dict

    @classmethod
    def create(cls, config, image_shape) -> "Trainer":
        family, bounds = family_and_bounds(config)
        inf, flow = build_models(config, image_shape)
        inf_graph, noise, main = nnx.split(inf, NoiseScale, nnx.Param)
        flow_graph, flow_params = nnx.split(flow, nnx.Param)
        s1, s2 = config.inference.steps, config.flow.steps
        state = dict(
            inf_main=main, inf_noise=noise, flow=flow_params,
            opt_main=clipped_adamw(config.inference, s1).init(main),
            opt_noise=noise_optimiser(config.inference, s1).init(noise),
            opt_flow=clipped_adamw(config.flow, s2).init(flow_params),
        )
        trainer = cls(config, family, bounds, inf_graph, flow_graph, state)
        trainer._compile()
        return trainer

    # -- models from state --------------------------------------------------------------------
    def inference_net(self, state=None) -> InferenceNet:
        state = state or self.state
        return nnx.merge(self.inf_graph, state["inf_noise"], state["inf_main"])

    def flow(self, state=None) -> ConditionalFlow:
        state = state or self.state
        return nnx.merge(self.flow_graph, state["flow"])

    # -- jitted steps -------------------------------------------------------------------------
    def _compile(self) -> None:
        cfg, q, f = self.config, self.config.inference, self.config.flow
        s1, s2 = q.steps, f.steps
        tx_main, tx_noise, tx_flow = clipped_adamw(q, s1), noise_optimiser(q, s1), clipped_adamw(f, s2)
        order = cfg.transform.order
        fam, bounds = self.family, self.bounds

        def stage1_loss(main, noise, x, key, step, train=True):
            model = nnx.merge(self.inf_graph, noise, main)
            sigma = blur_sigma(step, q, s1) if train else None
            return losses.invariance_loss(model, fam, bounds, x, key, n_samples=q.n_samples, symmetric=q.symmetric,
                                          invertibility=q.invertibility, order=order, blur_sigma=sigma,
                                          aug_mult=aug_mult(step, q, s1) if train else 1.0)

        def stage1_step(state, x, key, step):
            (loss, metrics), (g_main, g_noise) = jax.value_and_grad(stage1_loss, argnums=(0, 1), has_aux=True)(
                state["inf_main"], state["inf_noise"], x, key, step)
            upd, opt_main = tx_main.update(g_main, state["opt_main"], state["inf_main"])
            upd_n, opt_noise = tx_noise.update(g_noise, state["opt_noise"], state["inf_noise"])
            new = dict(state, inf_main=optax.apply_updates(state["inf_main"], upd), opt_main=opt_main,
                       inf_noise=optax.apply_updates(state["inf_noise"], upd_n), opt_noise=opt_noise)
            sigma = jax.nn.softplus(jax.tree.leaves(state["inf_noise"])[0])
            return new, dict(metrics, loss=loss, grad_norm=optax.global_norm(g_main), sigma=jnp.mean(sigma),
                             lr=lr_schedule(q, s1)(step), blur_sigma=_or_zero(blur_sigma(step, q, s1)),
                             aug_mult=aug_mult(step, q, s1))

        def stage2_loss(flow_params, state, x, key, train=True):
            flow = nnx.merge(self.flow_graph, flow_params)
            inf = nnx.merge(self.inf_graph, state["inf_noise"], state["inf_main"])
            return losses.flow_loss(flow, inf, fam, bounds, x, key, n_samples=f.n_samples,
                                    bounds_mult=f.bounds_mult, consistency=f.consistency, order=order, train=train)

        def stage2_step(state, x, key, step):
            (loss, metrics), grads = jax.value_and_grad(stage2_loss, has_aux=True)(state["flow"], state, x, key)
            upd, opt_flow = tx_flow.update(grads, state["opt_flow"], state["flow"])
            new = dict(state, flow=optax.apply_updates(state["flow"], upd), opt_flow=opt_flow)
            return new, dict(metrics, loss=loss, grad_norm=optax.global_norm(grads), lr=lr_schedule(f, s2)(step - s1))

        self.stage1_step = jax.jit(stage1_step, donate_argnums=0)
        self.stage2_step = jax.jit(stage2_step, donate_argnums=0)
        self.stage1_eval = jax.jit(lambda state, x, key: stage1_loss(
            state["inf_main"], state["inf_noise"], x, key, 0, train=False))
        self.stage2_eval = jax.jit(lambda state, x, key: stage2_loss(state["flow"], state, x, key, train=False))

    # -- evaluation ---------------------------------------------------------------------------
    def evaluate(self, stage: int, images: np.ndarray, seed: int) -> dict[str, float]:
        """Mean validation loss/metrics of a stage over `images` (fixed keys: comparable across runs)."""
        fn = self.stage1_eval if stage == 1 else self.stage2_eval
        bs = self.config.train.eval_batch
        totals: dict[str, float] = {}
        count = 0
        for i in range(0, len(images), bs):
            x = jnp.asarray(images[i : i + bs])
            loss, metrics = fn(self.state, x, jax.random.fold_in(jax.random.key(seed), i))
            for k, v in dict(metrics, loss=loss).items():
                totals[k] = totals.get(k, 0.0) + float(v) * len(x)
            count += len(x)
        return {f"eval/stage{stage}/{k}": v / count for k, v in totals.items()}


# ---------------------------------------------------------------------------------------------
# Learned distributions and recovery of known symmetries
# ---------------------------------------------------------------------------------------------
def prototype_and_samples(trainer: Trainer, x: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """eta ~ q(eta | x), prototypes, and n samples eta' ~ p(eta | prototype) for each image ([n, B, dim])."""
    order = trainer.config.transform.order
    inf, flow = trainer.inference_net(), trainer.flow()
    k1, k2 = jax.random.split(jax.random.key(seed))

    @jax.jit
    def run(xb):
        eta, x_hat = losses.prototypes(inf, trainer.family, xb, k1, order)
        return eta, x_hat, flow.sample(k2, x_hat, n)

    eta, x_hat, samples = run(jnp.asarray(x))
    return {"eta": np.asarray(eta), "prototype": np.asarray(x_hat), "samples": np.asarray(samples)}


def unwrap(samples: np.ndarray, period: float | None, axis: int = 0) -> np.ndarray:
    """Periodic values (the hue, in turns) centred at their circular mean and wrapped into [-period/2, period/2)
    along `axis`, so a distribution straddling the wrap-around point is not mistaken for a wide one."""
    samples = np.asarray(samples, np.float64)
    if period is None:
        return samples
    angle = 2 * np.pi * samples / period
    centre = period * np.arctan2(np.sin(angle).mean(axis, keepdims=True), np.cos(angle).mean(axis, keepdims=True))
    return np.mod(samples - centre / (2 * np.pi) + period / 2, period) - period / 2


def uniform_w1(samples: np.ndarray, half_width: float, period: float | None = None) -> float:
    """W1 between the median-centred empirical distribution and U(-a, a) (a = 0: a point mass at 0)."""
    s = unwrap(samples, period)
    s = np.sort(s - np.median(s))
    q = (np.arange(len(s)) + 0.5) / len(s)
    return float(np.mean(np.abs(s - half_width * (2 * q - 1))))


def recovery_metrics(trainer: Trainer, test: ImageSet, seed: int) -> dict[str, float]:
    """Per eta dimension: learned vs known spread of p(eta | prototype) on test examples.

    The known distribution of an example of class c is U(-hw*s_c, hw*s_c) (zero width when nothing was added);
    the learned one is centred at its median first, because a prototype's pose is only defined up to the
    canonical pose the inference net picked. Keys `recovery/<dim>/...` average over all examples;
    `recovery/class<c>/<dim>/...` per class, with `w1_rel` = W1 / true half-width and `q_slope`, the least-squares
    slope of q's inferred eta on the known one (1 when the prototypes are invariant to that dimension, 0 when q
    ignores it: then the prototypes keep the pose and p(eta | prototype) cannot see the spread).
    """
    cfg = trainer.config
    n_ex = min(cfg.train.eval_examples, len(test))
    out = prototype_and_samples(trainer, test.images[:n_ex], cfg.train.eval_samples, seed)
    dim = trainer.family.dim
    hw = np.asarray(cfg.data.known_half_width or (0.0,) * dim, np.float64)
    scales = np.asarray(cfg.data.known_class_scale or (1.0,), np.float64)
    labels = test.labels[:n_ex]
    true_hw = hw[None, :] * scales[labels % len(scales)][:, None]  # [B, dim]
    eta_q = np.asarray(jax.jit(trainer.inference_net().mode)(jnp.asarray(test.images)))  # all test examples
    metrics: dict[str, float] = {}
    for d, name in enumerate(trainer.family.names):
        period = 1.0 if name == "hue" else None  # hue shifts are modulo one turn
        w1 = np.array([uniform_w1(out["samples"][:, i, d], true_hw[i, d], period) for i in range(n_ex)])
        std = unwrap(out["samples"][:, :, d], period).std(axis=0)  # [B]
        metrics[f"recovery/{name}/w1"] = float(np.mean(w1))
        metrics[f"recovery/{name}/std_learned"] = float(np.mean(std))
        metrics[f"recovery/{name}/std_true"] = float(np.mean(true_hw[:, d] / math.sqrt(3)))
        for c in np.unique(labels):
            mask, key = labels == c, f"recovery/class{int(c)}/{name}"
            metrics[f"{key}/w1"] = float(np.mean(w1[mask]))
            metrics[f"{key}/half_width_true"] = float(true_hw[mask, d][0])
            metrics[f"{key}/std_learned"] = float(np.mean(std[mask]))
            if true_hw[mask, d][0] > 0:
                metrics[f"{key}/w1_rel"] = metrics[f"{key}/w1"] / true_hw[mask, d][0]
                full = test.labels == c
                if np.ptp(test.eta_true[full, d]) > 0:  # a slope needs two distinct known values
                    q_eta = unwrap(eta_q[full, d], period)
                    metrics[f"{key}/q_slope"] = float(np.polyfit(test.eta_true[full, d], q_eta, 1)[0])
    return metrics


# ---------------------------------------------------------------------------------------------
# Checkpoints: the state pytree is saved as a flat dict of its leaves (structure comes from the config)
# ---------------------------------------------------------------------------------------------
def _flat(state: dict) -> dict[str, np.ndarray]:
    return {f"leaf{i:05d}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}


def _unflat(template: dict, flat: dict) -> dict:
    leaves, treedef = jax.tree.flatten(template)
    if len(flat) != len(leaves):
        raise rundir.WorkdirError(
            f"checkpoint holds {len(flat)} arrays, this config's model has {len(leaves)}: the model shape changed"
        )
    restored = [jnp.asarray(flat[f"leaf{i:05d}"], dtype=leaf.dtype) for i, leaf in enumerate(leaves)]
    for i, (a, b) in enumerate(zip(restored, leaves)):
        if a.shape != b.shape:
            raise rundir.WorkdirError(f"checkpoint array {i} has shape {a.shape}, the model needs {b.shape}")
    return jax.tree.unflatten(treedef, restored)


def checkpoint_manager(workdir: str | pathlib.Path, keep: int) -> ocp.CheckpointManager:
    path = pathlib.Path(workdir).absolute() / rundir.CHECKPOINT_DIR
    return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def restore_latest(trainer: Trainer, manager: ocp.CheckpointManager) -> int:
    """Load the newest checkpoint into trainer.state; return its step (0 when there is none)."""
    step = manager.latest_step()
    if step is None:
        return 0
    template = _flat(trainer.state)
    flat = manager.restore(step, args=ocp.args.StandardRestore(template))
    trainer.state = _unflat(trainer.state, flat)
    return int(step)


def save(trainer: Trainer, manager: ocp.CheckpointManager, step: int) -> None:
    """Save `step` unless it is already on disk (a stop right after a scheduled save)."""
    if step in manager.all_steps():
        return
    manager.save(step, args=ocp.args.StandardSave(_flat(trainer.state)), force=True)
    manager.wait_until_finished()


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------
def batch_indices(seed: int, step: int, n: int, batch: int) -> np.ndarray:
    rng = np.random.default_rng([seed, step, 7])
    return rng.choice(n, batch, replace=n < batch)


def train_and_evaluate(config, workdir: str | pathlib.Path, *, resume: bool = False, overwrite: bool = False,
                       log=print) -> dict[str, Any]:
    """Train both stages (and the VAEs of `config.vae.models`) in `workdir`; return the summary."""
    workdir = pathlib.Path(workdir)
    mode = rundir.prepare_workdir(workdir, config, resume=resume, overwrite=overwrite)
    workdir.mkdir(parents=True, exist_ok=True)
    rundir.write_config(workdir, config)
    family, _ = family_and_bounds(config)
    splits = load(config.data, family, config.seed)
    train_set = splits["train"]
    trainer = Trainer.create(config, train_set.images.shape[1:])
    manager = checkpoint_manager(workdir, config.train.keep_checkpoints)
    start = restore_latest(trainer, manager) if mode == "resume" else 0
    s1, s2 = config.inference.steps, config.flow.steps
    total = s1 + s2
    metrics_file = rundir.MetricsWriter(workdir / rundir.METRICS_FILE, keep_until_step=start)
    eval_file = rundir.JsonlWriter(workdir / rundir.EVAL_FILE, keep_until_step=start)
    evals: dict[str, float] = {}
    for record in rundir.read_jsonl(workdir / rundir.EVAL_FILE):  # stage-1 results of a resumed run
        evals.update({k: v for k, v in record.items() if k.startswith("eval/")})
    root = jax.random.key(config.seed)
    t0 = time.time()
    step = start
    rates = {1: [], 2: []}
    status = "failed"
    if start:
        log(f"resuming from step {start}")
    stop = rundir.StopRequest().__enter__()  # SIGTERM: checkpoint, status preempted (exit 75)
    try:
        window_t, window_steps = time.time(), 0
        while step < total:
            stage = 1 if step < s1 else 2
            bs = config.inference.batch if stage == 1 else config.flow.batch
            x = jnp.asarray(train_set.images[batch_indices(config.seed, step, len(train_set), bs)])
            fn = trainer.stage1_step if stage == 1 else trainer.stage2_step
            trainer.state, metrics = fn(trainer.state, x, jax.random.fold_in(root, step), step)
            step += 1
            window_steps += 1
            boundary = step == s1 or step == total
            if step % config.train.log_every == 0 or boundary:
                metrics = {k: float(v) for k, v in metrics.items()}
                elapsed = time.time() - window_t
                rate = window_steps / max(elapsed, 1e-9)
                rates[stage].append(rate)
                window_t, window_steps = time.time(), 0
                if not all(math.isfinite(v) for v in metrics.values()):
                    raise FloatingPointError(f"non-finite metrics at step {step}: {metrics}")
                metrics_file.write(dict(step=step, stage=stage, wall_s=time.time() - t0, steps_per_s=rate, **metrics))
                if config.train.progress:
                    log(f"step {step}/{total} stage {stage} loss {metrics['loss']:.4f} ({rate:.1f} steps/s)")
            if boundary:
                ev = trainer.evaluate(stage, splits["valid"].images, config.seed + 99)
                evals.update(ev)
                eval_file.write(dict(step=step, stage=stage, **ev))
            if boundary or (config.train.checkpoint_every and step % config.train.checkpoint_every == 0):
                save(trainer, manager, step)
            if stop.requested and step < total:
                save(trainer, manager, step)
                status = "preempted"
                log(f"preempted at step {step}: checkpoint saved; resume with --resume")
                break
        if status != "preempted":
            evals.update(recovery_metrics(trainer, splits["test"], config.seed + 7))
            if config.vae.models:
                from mdiff.symmetry.vae import run_vaes

                evals.update(run_vaes(config, trainer, splits, log=log))
            eval_file.write(dict(step=step, stage=3, **evals))
            status = "complete"
    except KeyboardInterrupt:
        save(trainer, manager, step)
        status = "preempted"
        raise
    finally:
        stop.__exit__(None, None, None)
        metrics_file.close()
        eval_file.close()
        summary = dict(status=status, steps=step, steps_stage1=min(step, s1), steps_stage2=max(step - s1, 0),
                       wall_s=time.time() - t0, family=family.name, eta_names=list(family.names),
                       steps_per_s_stage1=float(np.median(rates[1])) if rates[1] else None,
                       steps_per_s_stage2=float(np.median(rates[2])) if rates[2] else None, **evals)
        rundir.write_summary(workdir, summary)
        manager.close()
    return summary


def load_run(workdir: str | pathlib.Path):
    """(config, splits, trainer) of a finished or checkpointed run, for plotting and analysis."""
    from mdiff.config import from_dict

    workdir = pathlib.Path(workdir)
    raw = rundir.read_config(workdir)
    if raw is None:
        raise rundir.WorkdirError(f"{str(workdir)!r} holds no {rundir.CONFIG_FILE}: not a symmetry run directory")
    if raw.get("kind") != "symmetry":
        raise rundir.WorkdirError(f"{str(workdir)!r}: config.kind={raw.get('kind')!r}, expected 'symmetry'")
    config = from_dict(raw)
    family, _ = family_and_bounds(config)
    splits = load(config.data, family, config.seed)
    trainer = Trainer.create(config, splits["train"].images.shape[1:])
    manager = checkpoint_manager(workdir, config.train.keep_checkpoints)
    if restore_latest(trainer, manager) == 0:
        raise rundir.WorkdirError(f"{str(workdir)!r} has no checkpoint yet")
    manager.close()
    return config, splits, trainer
