"""Training-step benchmark of the bench-small shape (the md4 baseline's shape, BENCHMARKS.md), f32 and bf16.

One step is the step `mdiff train` runs (mdiff.train.step built from a config by mdiff.train.loop.setup:
MDM NELBO forward + backward, gradient clipping, AdamW update, state donated). Shape: vocab 4096
(unified vocabulary of exactly 4096 ids), seq 256, batch 16, 4 layers, width 256, 4 heads, SwiGLU
hidden 1024. FLOPs are analytic (mdiff.model.scaling.flops_per_token: 6 N + 12 L D S). The "peak" is a
jitted f32 2048x2048 matmul measured in the same run; fraction_of_peak = achieved FLOP/s / peak.

    python benchmarks/train_step.py            # full: 30 timed steps per precision
    python benchmarks/train_step.py --quick    # a few steps, to check it runs

The last stdout line is one JSON object with the figures and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mdiff.vocab import Modality, UnifiedVocab  # noqa: E402
from mdiff.model.scaling import PRESETS, flops_per_token  # noqa: E402
from bench_common import machine, matmul_peak, real_train_step  # noqa: E402

SEQ, BATCH, VOCAB_SIZE = 256, 16, 4096


def timed(fn, calls: int, cpu: list[float] | None = None) -> list[float]:
    """Wall seconds per call; process CPU seconds go to `cpu` (a contention-robust second view)."""
    out = []
    for _ in range(calls):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - start)
        if cpu is not None:
            cpu.append(time.process_time() - start_cpu)
    return out



def make_batches(vocab: UnifiedVocab, count: int = 8) -> list[dict[str, jax.Array]]:
    rs = np.random.RandomState(0)
    lo, hi = vocab.range("text")
    ones = np.ones((BATCH, SEQ), np.int32)
    positions = np.broadcast_to(np.arange(SEQ, dtype=np.int32), (BATCH, SEQ))
    return [
        {
            "tokens": jnp.asarray(rs.randint(lo, hi, (BATCH, SEQ)).astype(np.int32)),
            "modality": jnp.asarray(ones * int(Modality.TEXT)),
            "loss_mask": jnp.asarray(ones),
            "cond_mask": jnp.asarray(ones * 0),
            "segment_ids": jnp.asarray(ones),
            "positions": jnp.asarray(positions),
        }
        for _ in range(count)
    ]


def run_precision(vocab: UnifiedVocab, dtype: str, batches, steps: int, warmup: int) -> dict:
    """Time the training step `mdiff train` runs (built from a config) at one compute precision."""
    compile_step, initial, put = real_train_step(dict(size="bench-small", dtype=dtype), vocab, SEQ, BATCH)
    batches = [put(b) for b in batches]
    start = time.perf_counter()
    compiled = compile_step()
    compile_s = time.perf_counter() - start
    state = [initial]
    losses = []

    def one(i: int):
        state[0], metrics = compiled(state[0], batches[i % len(batches)])
        losses.append(metrics["nelbo_sum"] / metrics["count"])
        return state[0]

    counter = iter(range(10**9))
    timed(lambda: one(next(counter)), warmup)
    cpu: list[float] = []
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    times = timed(lambda: one(next(counter)), steps, cpu)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before) / steps
    median = statistics.median(times)
    flops_step = flops_per_token(PRESETS["bench-small"], vocab.size, SEQ) * BATCH * SEQ
    return {
        "ms_per_step": 1e3 * median,
        "p10_ms": 1e3 * float(np.percentile(times, 10)),
        "p90_ms": 1e3 * float(np.percentile(times, 90)),
        "steps_per_s": 1 / median,
        "tokens_per_s": BATCH * SEQ / median,
        "flops_per_step": flops_step,
        "flops_per_s": flops_step / median,
        "cpu_ms_per_step": 1e3 * statistics.median(cpu),
        "minor_page_faults_per_step": faults,
        "compile_s": compile_s,
        "first_loss": float(losses[0]),
        "last_loss": float(losses[-1]),
        "steps_run": len(losses),
    }



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 timed steps, 1 warm-up (checks it runs)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--precisions", default="float32,bfloat16")
    args = parser.parse_args()
    steps, warmup, peak_calls = (3, 1, 5) if args.quick else (args.steps, 3, 20)
    vocab = UnifiedVocab(VOCAB_SIZE - 15 - 2, 1, 1)
    assert vocab.size == VOCAB_SIZE
    batches = make_batches(vocab)
    peak_before = matmul_peak(2048, peak_calls)
    print(f"matmul peak (f32 2048^2): {peak_before / 1e9:.1f} GFLOP/s", flush=True)
    results = {}
    for dtype in args.precisions.split(","):
        r = run_precision(vocab, dtype, batches, steps, warmup)
        results[dtype] = r
        print(f"{dtype}: {r['ms_per_step']:.1f} ms/step, {r['tokens_per_s']:.0f} tok/s, "
              f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s, loss {r['first_loss']:.4f} -> {r['last_loss']:.4f}", flush=True)
    peak_after = matmul_peak(2048, peak_calls)
    peak = max(peak_before, peak_after)
    for r in results.values():
        r["fraction_of_peak"] = r["flops_per_s"] / peak
    best = max(results, key=lambda k: results[k]["fraction_of_peak"])
    out = {
        "benchmark": "train_step",
        "shape": {"vocab": VOCAB_SIZE, "seq": SEQ, "batch": BATCH, "preset": "bench-small",
                  **{k: getattr(PRESETS["bench-small"], k) for k in ("width", "depth", "heads", "mlp_hidden", "mlp_type")}},
        "peak_flops_per_s": peak,
        "peak_flops_per_s_before_after": [peak_before, peak_after],
        "results": results,
        "best_precision": best,
        "fraction_of_peak": results[best]["fraction_of_peak"],
        "quick": args.quick,
        "machine": machine(),
    }
    if {"float32", "bfloat16"} <= set(results):
        out["first_loss_rel_diff_bf16_vs_f32"] = abs(results["bfloat16"]["first_loss"] - results["float32"]["first_loss"]) / results["float32"]["first_loss"]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
