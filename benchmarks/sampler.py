"""Sampler benchmark: 16 x 256-token generations on the bench-small shape vs a bare forward pass.

Shape: unified vocab 4096, 4 layers, width 256, 4 heads, SwiGLU MLP 1024 (preset "bench-small").
Measures, in one process: the fp32 matmul peak (jit jnp.dot, 2048^2, median), a bare jitted forward
pass over the same [16, 256] batch, and full ancestral generations with 64 and 256 steps.

Figures (wall-clock medians; CPU-time medians alongside, which stay comparable on a shared machine):
seconds per denoising step (generation time / forward passes run), `overhead_vs_forward`
(step time / forward time; target <= 1.10), output tokens/s, and `fraction_of_peak` = forward FLOPs
per step (2 N_matmul + 4 L D S per token) / step time / measured peak (target >= 0.30; md4 ~0.19).
The last stdout line is one JSON object. `--quick` runs a tiny shape once (a smoke test).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mdiff.data.layout import layout_example, pack
from mdiff.vocab import UnifiedVocab
from mdiff.diffusion.sampling import Sampler, SamplerSettings
from mdiff.diffusion.schedules import get_schedule
from mdiff.eval.restore import model_logits_fn
from mdiff.model import build_model
from mdiff.model.scaling import matmul_params, resolve_shape

from bench_common import machine, matmul_peak


def timed(fn, repeats: int, warmup: bool = True) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of `repeats` calls, after one untimed call (compile + warm-up)."""
    if warmup:
        jax.block_until_ready(fn())
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def median_times(fn, repeats: int, warmup: bool = True) -> tuple[float, float]:
    """(wall, process CPU) medians: the CPU-time ratio stays meaningful on a shared machine."""
    wall, cpu = timed(fn, repeats, warmup)
    return statistics.median(wall), statistics.median(cpu)



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny shape, one repeat (smoke test)")
    parser.add_argument("--steps", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--method", default="ancestral", choices=["ancestral", "confidence"])
    parser.add_argument("--repeats", type=int, default=None, help="timed generations per step count (default 3; quick 1)")
    args = parser.parse_args()

    batch_size, seq_len = (4, 64) if args.quick else (16, 256)
    model_cfg = dict(width=64, depth=2, heads=2, mlp_hidden=128) if args.quick else dict(size="bench-small")
    vocab = UnifiedVocab(text_size=4096 - 15 - 2, image_size=1, audio_size=1)  # size 4096
    repeats = args.repeats or (1 if args.quick else 3)

    peak = matmul_peak(512 if args.quick else 2048, 3 if args.quick else 20)
    print(f"fp32 matmul peak: {peak / 1e9:.1f} GFLOP/s", flush=True)

    model = build_model(model_cfg, vocab, seq_len, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    logits_fn = model_logits_fn(graphdef)
    example = layout_example(vocab, "text", np.full(seq_len - 1, vocab.range("text")[0]))
    row = pack(vocab, [example], seq_len)
    batch = {k: jnp.asarray(np.repeat(v[None], batch_size, 0)) for k, v in row.items()}
    targets = int(np.sum(row["loss_mask"])) * batch_size

    shape = resolve_shape(model_cfg)
    forward_flops = batch_size * seq_len * (2 * matmul_params(shape, vocab.size) + 4 * shape.depth * shape.width * seq_len)
    forward = jax.jit(logits_fn)
    forward_s, forward_cpu = median_times(lambda: forward(state, batch["tokens"], batch), 3 if args.quick else 20)
    print(f"bare forward: {forward_s * 1e3:.1f} ms ({forward_flops / forward_s / 1e9:.1f} GFLOP/s)", flush=True)

    alpha = get_schedule("linear").alpha
    results = {}
    for steps in args.steps:
        settings = SamplerSettings(steps=steps, method=args.method)
        sampler = Sampler(logits_fn, alpha, settings, vocab.range("text"), vocab.mask_id, conditional=False)
        key = jax.random.key(steps)
        nfe = int(sampler(state, batch, key)["nfe"])  # compiles; also the warm-up call
        gen_s, gen_cpu = median_times(lambda: sampler(state, batch, key)["tokens"], repeats, warmup=False)
        step_s = gen_s / nfe
        results[f"steps_{steps}"] = {
            "generation_s": round(gen_s, 4),
            "forward_passes": nfe,
            "s_per_step": round(step_s, 5),
            "overhead_vs_forward": round(step_s / forward_s, 4),
            "overhead_vs_forward_cpu_time": round(gen_cpu / nfe / forward_cpu, 4),
            "tokens_per_s": round(targets / gen_s, 2),
            "fraction_of_peak": round(forward_flops / step_s / peak, 4),
        }
        print(f"steps={steps}: {json.dumps(results[f'steps_{steps}'])}", flush=True)

    worst = max(r["overhead_vs_forward"] for r in results.values())
    summary = {
        "benchmark": "sampler",
        "quick": args.quick,
        "method": args.method,
        "batch": batch_size,
        "seq_len": seq_len,
        "vocab": vocab.size,
        "model": model_cfg,
        "peak_fp32_flops": round(peak),
        "forward_s": round(forward_s, 5),
        "forward_cpu_s": round(forward_cpu, 5),
        "forward_flops": forward_flops,
        **results,
        "overhead_vs_forward": worst,
        "fraction_of_peak": min(r["fraction_of_peak"] for r in results.values()),
        "machine": machine(),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
