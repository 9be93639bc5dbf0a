"""Whole-loop throughput vs the bare train step on bench-small, and what checkpoints cost.

    python benchmarks/train_loop.py [--quick] [--steps N]

Bare step: the compiled sharded step on one fixed batch, timed over N steps. Loop:
`train_and_evaluate` over N steps (synthetic data, metrics every 10 steps, one checkpoint half-way);
its throughput is the tokens/s of metrics.jsonl after the first (compiling) window. Checkpoint cost:
a save of the same state timed blocking (async start) and to completion, and the step-time ratio of the
window holding the checkpoint. Last stdout line: one JSON object (key `ratio_to_train_step`).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
os.environ.setdefault("MDIFF_PROGRESS", "0")

from mdiff.runtime import tune_malloc  # noqa: E402

tune_malloc()  # as `mdiff train` does, for the loop and the bare step alike

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402

from mdiff import rundir  # noqa: E402
from mdiff.config import load_config  # noqa: E402
from mdiff.data.pipeline import make_pipeline  # noqa: E402
from mdiff.train import loop, sharding  # noqa: E402
from mdiff.train.checkpoint import Checkpointer  # noqa: E402


def bench_config(steps: int, quick: bool):
    batch, seq_len = (8, 64) if quick else (16, 256)
    log_every = 5 if quick else 10
    overrides = [
        f"model.size={'cpu-xs' if quick else 'bench-small'}",
        f"data.seq_len={seq_len}",
        f"train.batch={batch}",
        f"train.tokens={batch * seq_len * steps}",
        f"train.log_every={log_every}",
        f"train.checkpoint_every={steps // 2}",
        "train.eval_every=0",
        "train.eval_batches=1",
        "optim.steps_critical=1",
    ]
    return load_config("experiments/quickstart.py:test", overrides)


def bare_step(config, workdir: pathlib.Path, steps: int) -> float:
    pipeline = make_pipeline(config, "train")
    run = loop.setup(config, workdir, pipeline.vocab)
    state = loop.init_state(run)
    batch = sharding.global_batch(next(pipeline), run.batch_sharding, config.train.batch)
    step, hyperparameters = loop.jit_train_step(run), loop.device_hyperparameters(run)
    for _ in range(2):
        state, metrics = step(state, batch, hyperparameters)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch, hyperparameters)
    jax.block_until_ready(metrics)
    elapsed = time.perf_counter() - t0
    ck = Checkpointer(workdir / "ck", keep=1)
    t1 = time.perf_counter()
    ck.save(1, state, {"data": {}})
    blocking = time.perf_counter() - t1
    ck.wait()
    total = time.perf_counter() - t1
    ck.close()
    return steps * config.train.batch * config.data.seq_len / elapsed, blocking, total


def whole_loop(config, workdir: pathlib.Path) -> tuple[float, float]:
    loop.train_and_evaluate(config, workdir)
    records = rundir.read_jsonl(workdir / rundir.METRICS_FILE)[1:]  # the first window holds the compile
    ckpt_step = config.train.checkpoint_every
    with_ckpt = [r for r in records if r["step"] - config.train.log_every < ckpt_step <= r["step"]]
    others = [r["tokens_per_s"] for r in records if r not in with_ckpt]
    mean = sum(r["tokens_per_s"] for r in records) / len(records)
    slowdown = (sum(others) / len(others)) / with_ckpt[0]["tokens_per_s"] if with_ckpt and others else float("nan")
    return mean, slowdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny model and few steps (checks the script runs)")
    parser.add_argument("--steps", type=int, default=0)
    args = parser.parse_args()
    steps = args.steps or (20 if args.quick else 200)
    config = bench_config(steps, args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        step_tps, save_blocking, save_total = bare_step(config, tmp / "bare", steps)
        print(f"bare step: {step_tps:.0f} tokens/s; checkpoint save {save_blocking:.3f} s blocking, {save_total:.3f} s total")
        loop_tps, slowdown = whole_loop(config, tmp / "loop")
        print(f"whole loop: {loop_tps:.0f} tokens/s; window with a checkpoint is {slowdown:.2f}x slower")
    result = {
        "benchmark": "train_loop",
        "model": config.model.size,
        "batch": config.train.batch,
        "seq_len": config.data.seq_len,
        "steps": steps,
        "train_step_tokens_per_s": step_tps,
        "loop_tokens_per_s": loop_tps,
        "ratio_to_train_step": loop_tps / step_tps,
        "checkpoint_save_blocking_s": save_blocking,
        "checkpoint_save_total_s": save_total,
        "checkpoint_window_slowdown": slowdown,
        "device": jax.devices()[0].device_kind,
        "num_devices": jax.device_count(),
        "machine": platform.node(),
        "quick": args.quick,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
