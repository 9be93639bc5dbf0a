"""One-call accelerator check for a session lent a GPU: correctness first, then speed.

    python benchmarks/gpu.py --out $OUT            # on the device machine (JAX + CUDA there), ~5 min
    python benchmarks/gpu.py --smoke --out DIR     # tiny shapes on CPU: checks that the script runs

Sections, each written to OUT/gpu_bench.json as soon as it finishes (a timeout keeps what was done):
  1. correctness: the bench-small training step's first loss on the accelerator (f32 at "highest"
     matmul precision, and bf16 compute) against the same step on the host's CPU backend;
  2. the bench-small training step (benchmarks/train_step.py) on the accelerator: ms/step, tokens/s,
     MFU against the data-sheet peak (mdiff.train.mfu);
  3. bf16 MFU of the ~1B preset (target >= 0.50 on an H100), median of timed steps;
  4. attention paths (model.attention explicit vs fused, jax.nn.dot_product_attention = cuDNN's fused
     kernel for bf16 on NVIDIA GPUs): bench-small at seq 2048, ms/step of each and the loss difference;
  5. the ancestral sampler on bench-small (benchmarks/sampler.py): s/step, overhead_vs_forward.
OUT/gpu_bench.md is the same as a table for BENCHMARKS.md. Nothing is downloaded or installed.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench_common import machine, real_train_step  # noqa: E402
from mdiff.vocab import Modality, UnifiedVocab  # noqa: E402
from mdiff.model.scaling import flops_per_token, resolve_shape  # noqa: E402
from mdiff.model.transformer import DTYPES, fused_attention_implementation  # noqa: E402
from mdiff.train.mfu import peak_flops_per_device  # noqa: E402

SPECIALS = 15  # UnifiedVocab(text, image, audio).size == text + image + audio + SPECIALS


def vocab_of_size(size: int) -> UnifiedVocab:
    vocab = UnifiedVocab(size - SPECIALS - 2, 1, 1)
    assert vocab.size == size, vocab.size
    return vocab


def text_batch(vocab: UnifiedVocab, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    lo, hi = vocab.range("text")
    ones = np.ones((batch, seq), np.int32)
    return {
        "tokens": np.random.RandomState(seed).randint(lo, hi, (batch, seq)).astype(np.int32),
        "modality": ones * int(Modality.TEXT),
        "loss_mask": ones,
        "cond_mask": ones * 0,
        "segment_ids": ones,
        "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
    }


def first_loss(model_cfg: dict, vocab: UnifiedVocab, batch: dict, device: jax.Device) -> float:
    """Loss of the first training step (the real step, config seed 0) computed on `device`."""
    rows, seq = batch["tokens"].shape
    compile_step, state, put = real_train_step(model_cfg, vocab, seq, rows, devices=[device])
    _, metrics = compile_step()(state, put(batch))
    return float(metrics["nelbo_sum"] / metrics["count"])


def correctness(args) -> dict:
    vocab = vocab_of_size(args.bench_vocab)
    batch = text_batch(vocab, args.bench_batch, args.bench_seq)
    accel, host = jax.devices()[0], jax.devices("cpu")[0]
    out = {}
    for dtype in ("float32", "bfloat16"):
        cfg = dict(args.bench_model, dtype=dtype)
        with jax.default_matmul_precision("highest"):
            ref = first_loss(cfg, vocab, batch, host)
            got = first_loss(cfg, vocab, batch, accel)
        rel = abs(got - ref) / abs(ref)
        tol = 1e-4 if dtype == "float32" else 1e-2
        out[dtype] = {"host_cpu": ref, "accelerator": got, "rel_diff": rel, "tolerance": tol, "ok": rel <= tol}
        print(f"[correctness] {dtype}: cpu {ref:.6f} accel {got:.6f} rel {rel:.2e} ({'ok' if rel <= tol else 'FAIL'})",
              flush=True)
    return out


def large_mfu(args) -> dict:
    """bf16 training step of the ~1B preset on one device: median step time, tokens/s, MFU."""
    vocab = vocab_of_size(args.large_vocab)
    cfg = dict(size=args.large_preset, dtype="bfloat16", remat=args.remat)
    device = jax.devices()[0]
    compile_step, state, put = real_train_step(cfg, vocab, args.large_seq, args.large_batch, devices=[device])
    params = int(sum(x.size for x in jax.tree.leaves(state["params"])))
    batches = [put(text_batch(vocab, args.large_batch, args.large_seq, s)) for s in range(2)]
    start = time.perf_counter()
    compiled = compile_step()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    times, losses = [], []
    for i in range(args.large_warmup + args.large_steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batches[i % 2])
        loss = float(metrics["nelbo_sum"] / metrics["count"])  # waits for the step
        times.append(time.perf_counter() - t0)
        losses.append(loss)
    median = statistics.median(times[args.large_warmup:])
    shape = resolve_shape(cfg)
    tokens = args.large_batch * args.large_seq
    flops = flops_per_token(shape, vocab.size, args.large_seq) * tokens
    peak = peak_flops_per_device(device, "bfloat16")
    out = {
        "preset": args.large_preset, "vocab": vocab.size, "seq": args.large_seq, "batch": args.large_batch,
        "remat": args.remat, "params": params,
        "compile_s": compile_s, "ms_per_step": 1e3 * median,
        "p10_ms": 1e3 * float(np.percentile(times[args.large_warmup:], 10)),
        "p90_ms": 1e3 * float(np.percentile(times[args.large_warmup:], 90)),
        "tokens_per_s": tokens / median, "flops_per_step": flops, "flops_per_s": flops / median,
        "peak_bf16_flops": peak, "mfu": (flops / median / peak) if peak else None,
        "first_loss": losses[0], "last_loss": losses[-1],
        "temp_bytes": int(getattr(memory, "temp_size_in_bytes", 0) or 0),
        "argument_bytes": int(getattr(memory, "argument_size_in_bytes", 0) or 0),
    }
    mfu_text = f"{out['mfu']:.3f}" if out["mfu"] is not None else "n/a (no data-sheet peak)"
    print(f"[large] {args.large_preset} bf16: {out['ms_per_step']:.1f} ms/step, {out['tokens_per_s']:.0f} tok/s, "
          f"MFU {mfu_text}", flush=True)
    return out


def attention_paths(args) -> dict:
    """Train step with explicit vs fused attention (model.attention), same weights and batch, interleaved:
    median ms/step of each, the ratio, and the first-step loss difference (the paths compute the same thing)."""
    vocab = vocab_of_size(args.attn_vocab)
    host_batches = [text_batch(vocab, args.attn_batch, args.attn_seq, s) for s in range(2)]
    runs = {}
    for path in ("explicit", "fused"):
        model = dict(args.attn_model, dtype=args.attn_dtype, attention=path)
        compile_step, state, put = real_train_step(model, vocab, args.attn_seq, args.attn_batch, devices=jax.devices()[:1])
        batches = [put(b) for b in host_batches]
        start = time.perf_counter()
        compiled = compile_step()
        compile_s = time.perf_counter() - start
        state, metrics = compiled(state, batches[0])
        runs[path] = dict(fn=compiled, state=state, batches=batches, compile_s=compile_s, times=[],
                          loss=float(metrics["nelbo_sum"] / metrics["count"]))
    for i in range(args.attn_warmup + args.attn_steps):
        for path, r in runs.items():
            t0 = time.perf_counter()
            r["state"], metrics = r["fn"](r["state"], r["batches"][i % 2])
            jax.block_until_ready(metrics)
            if i >= args.attn_warmup:
                r["times"].append(time.perf_counter() - t0)
    out = {"model": args.attn_model, "dtype": args.attn_dtype, "seq": args.attn_seq, "batch": args.attn_batch,
           "fused_implementation": fused_attention_implementation(DTYPES[args.attn_dtype]) or "xla"}
    for path, r in runs.items():
        out[path] = {"ms_per_step": 1e3 * statistics.median(r["times"]), "compile_s": r["compile_s"], "first_loss": r["loss"]}
    out["speedup_fused_vs_explicit"] = out["explicit"]["ms_per_step"] / out["fused"]["ms_per_step"]
    out["first_loss_rel_diff"] = abs(out["fused"]["first_loss"] - out["explicit"]["first_loss"]) / abs(out["explicit"]["first_loss"])
    print(f"[attention] explicit {out['explicit']['ms_per_step']:.2f} ms, fused ({out['fused_implementation']}) "
          f"{out['fused']['ms_per_step']:.2f} ms: x{out['speedup_fused_vs_explicit']:.2f}, "
          f"loss rel diff {out['first_loss_rel_diff']:.1e}", flush=True)
    return out


def script_json(argv: list[str], timeout: float) -> dict:
    """Run another benchmark script and return its last stdout line (one JSON object)."""
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "stderr_tail": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown(results: dict) -> str:
    lines = [f"device: {results['device']}", ""]
    for dtype, r in results.get("correctness", {}).items():
        lines.append(f"- correctness {dtype}: first loss cpu {r['host_cpu']:.6f}, accelerator {r['accelerator']:.6f}, "
                     f"rel diff {r['rel_diff']:.2e} (tol {r['tolerance']:g}) {'ok' if r['ok'] else 'FAIL'}")
    step = results.get("train_step", {})
    if "results" in step:
        peak = results.get("peak_bf16_flops")
        lines += ["", "| bench-small step | ms/step | tokens/s | MFU (data-sheet bf16 peak) |", "|---|---|---|---|"]
        for dtype, r in step["results"].items():
            mfu = f"{r['flops_per_s'] / peak:.3f}" if peak else "n/a"
            lines.append(f"| {dtype} | {r['ms_per_step']:.2f} | {r['tokens_per_s']:,.0f} | {mfu} |")
    large = results.get("large", {})
    if "ms_per_step" in large:
        lines += ["", "| ~1B preset, bf16 | params | seq x batch | ms/step (p10-p90) | tokens/s | MFU |", "|---|---|---|---|---|---|",
                  f"| {large['preset']} (remat={large['remat']}) | {large['params']:,} | {large['seq']} x {large['batch']} | "
                  f"{large['ms_per_step']:.1f} ({large['p10_ms']:.1f}-{large['p90_ms']:.1f}) | {large['tokens_per_s']:,.0f} | "
                  f"{large['mfu'] if large['mfu'] is None else round(large['mfu'], 3)} |"]
    attn = results.get("attention", {})
    if "fused" in attn:
        lines += ["", f"| attention paths, {attn['model']} {attn['dtype']} seq {attn['seq']} x batch {attn['batch']} | "
                  "explicit ms/step | fused ms/step | speedup | first-loss rel diff |", "|---|---|---|---|---|",
                  f"| fused = {attn['fused_implementation']} | {attn['explicit']['ms_per_step']:.2f} | "
                  f"{attn['fused']['ms_per_step']:.2f} | {attn['speedup_fused_vs_explicit']:.2f} | {attn['first_loss_rel_diff']:.1e} |"]
    sampler = results.get("sampler", {})
    if "forward_s" in sampler:
        lines += ["", "| sampler, bench-small | s/step | overhead_vs_forward | tokens/s |", "|---|---|---|---|"]
        for key, r in sampler.items():
            if key.startswith("steps_"):
                lines.append(f"| {key} | {r['s_per_step']:.4f} | {r['overhead_vs_forward']:.2f} | {r['tokens_per_s']:,.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_bench.json / gpu_bench.md")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (runs on CPU in seconds)")
    parser.add_argument("--large-preset", default="1b")
    parser.add_argument("--large-seq", type=int, default=2048)
    parser.add_argument("--large-batch", type=int, default=8)
    parser.add_argument("--remat", action="store_true", help="activation checkpointing in the large run")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: correctness,train_step,large,attention,sampler")
    args = parser.parse_args()
    if args.smoke:
        args.bench_model, args.bench_vocab, args.bench_seq, args.bench_batch = dict(size="cpu-xs"), 256, 32, 4
        args.large_preset, args.large_vocab, args.large_seq, args.large_batch = "cpu-s", 512, 64, 4
        args.large_warmup, args.large_steps = 1, 3
        args.attn_model, args.attn_dtype, args.attn_vocab, args.attn_seq, args.attn_batch = dict(size="cpu-xs"), "float32", 256, 64, 2
        args.attn_warmup, args.attn_steps = 1, 2
    else:
        args.bench_model, args.bench_vocab, args.bench_seq, args.bench_batch = dict(size="bench-small"), 4096, 256, 16
        args.large_vocab, args.large_warmup, args.large_steps = 65_536, 3, 15
        # Long sequences are where the [B, H, L, L] scores cost most; bf16 so cuDNN's fused kernel applies.
        args.attn_model, args.attn_dtype, args.attn_vocab, args.attn_seq, args.attn_batch = dict(size="bench-small"), "bfloat16", 4096, 2048, 8
        args.attn_warmup, args.attn_steps = 3, 10
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    device = jax.devices()[0]
    results: dict = {"device": f"{device.platform}: {device.device_kind}", "machine": machine(), "smoke": args.smoke,
                     "peak_bf16_flops": peak_flops_per_device(device, "bfloat16")}

    def save() -> None:
        (out_dir / "gpu_bench.json").write_text(json.dumps(results, indent=1, default=float))
        (out_dir / "gpu_bench.md").write_text(markdown(results))

    sections = [
        ("correctness", lambda: correctness(args)),
        ("train_step", lambda: script_json(["benchmarks/train_step.py", *(["--quick"] if args.smoke else ["--steps", "20"])], 600)),
        ("large", lambda: large_mfu(args)),
        ("attention", lambda: attention_paths(args)),
        ("sampler", lambda: script_json(["benchmarks/sampler.py", *(["--quick", "--steps", "16"] if args.smoke else ["--steps", "64", "--repeats", "2"])], 600)),
    ]
    for name, run in sections:
        if name in skip:
            continue
        try:
            results[name] = run()
        except Exception as err:  # keep the other sections' figures; report what failed
            results[name] = {"error": f"{type(err).__name__}: {err}"[:2000]}
            print(f"[{name}] failed: {results[name]['error']}", flush=True)
        save()
    print(markdown(results))
    print(json.dumps({"benchmark": "gpu", **{k: v for k, v in results.items() if k != "machine"}}, default=float))


if __name__ == "__main__":
    main()
