"""Data pipeline benchmark: batch throughput vs what a bench-small train step consumes, build time,
and the tokenizers' reconstruction quality.

Shape: batch 16 x seq 256 (bench-small), default mix (text 0.5, image 0.25, audio 0.25).

* build: a fresh `build_dataset` into a scratch directory (seconds), then the idempotent re-check.
* pipeline: host-local batches per second from the built dataset, in-process and with 2 grain workers.
* train step: a jitted bench-small f32 train step (benchmarks/train_step.py) fed with pipeline batches;
  `--train-tokens-per-s X` skips it and uses X. ratio_to_train_step = pipeline tokens/s / train tokens/s
  (target >= 20).
* quality: text round-trip exactness, image PSNR, pocketsphinx WER of original vs decoded speech.

    python benchmarks/data_pipeline.py            # full build, all figures (a few minutes on 2 cores)
    python benchmarks/data_pipeline.py --quick    # tiny build, few batches (checks it runs)
    python benchmarks/data_pipeline.py --data-dir DIR --reuse   # measure an existing build

The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import flags  # noqa: E402
from bench_common import machine  # noqa: E402

BATCH, SEQ = 16, 256


def bench_config(data_dir: str, workers: int = 0):
    from mdiff.defaults import base_config

    config = base_config()
    config.data.dataset = "embedded"
    config.data.data_dir = data_dir
    config.data.seq_len = SEQ
    config.data.num_workers = workers
    config.train.batch = BATCH
    return config


def time_build(scale: str, keep: str | None) -> tuple[str, dict]:
    from mdiff.data.build import build_dataset

    data_dir = keep or tempfile.mkdtemp(prefix=f"mdiff-bench-data-{scale}-")
    start = time.perf_counter()
    manifest = build_dataset(data_dir, scale=scale, force=True, progress=True)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    build_dataset(data_dir, scale=scale, progress=False)
    return data_dir, {
        "scale": scale,
        "build_s": build_s,
        "recheck_s": time.perf_counter() - start,
        "counts": manifest["counts"],
        "vocab": {k: v for k, v in manifest["vocab"].items() if k != "specials"},
        "audio_tokens_per_second": manifest["audio_tokens_per_second"],
    }


def reused_build(data_dir: str) -> dict:
    from mdiff.data.build import read_manifest
    from mdiff.data.reader import check_dataset_dir

    check_dataset_dir(data_dir)
    manifest = read_manifest(data_dir)
    return {
        "scale": manifest["scale"],
        "build_s": manifest["build_seconds"],
        "build_s_source": "manifest (not rebuilt)",
        "counts": manifest["counts"],
        "vocab": {k: v for k, v in manifest["vocab"].items() if k != "specials"},
        "audio_tokens_per_second": manifest["audio_tokens_per_second"],
    }


def time_pipeline(data_dir: str, batches: int, workers: int) -> dict:
    from mdiff.data.pipeline import make_pipeline

    pipeline = make_pipeline(bench_config(data_dir, workers), process_index=0, process_count=1)
    try:
        start = time.perf_counter()
        first = next(pipeline)
        first_s = time.perf_counter() - start
        for _ in range(3):
            next(pipeline)
        pad = real = 0
        start = time.perf_counter()
        for _ in range(batches):
            batch = next(pipeline)
            pad += int((batch["segment_ids"] == 0).sum())
            real += batch["tokens"].size
        elapsed = time.perf_counter() - start
    finally:
        pipeline.close()
    del first
    return {
        "workers": workers,
        "batches": batches,
        "first_batch_s": first_s,
        "batches_per_s": batches / elapsed,
        "tokens_per_s": real / elapsed,
        "padding_fraction": pad / real,
    }


def time_train_step(data_dir: str, steps: int) -> dict:
    """bench-small f32 train step (from benchmarks/train_step.py) on pipeline batches."""
    import jax

    from mdiff.data.pipeline import make_pipeline

    spec = importlib.util.spec_from_file_location("bench_train_step", os.path.join(os.path.dirname(__file__), "train_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    pipeline = make_pipeline(bench_config(data_dir), process_index=0, process_count=1)
    batches = [{k: jax.numpy.asarray(v) for k, v in next(pipeline).items()} for _ in range(4)]
    pipeline.close()
    step, (params, opt_state) = module.build_step(pipeline.vocab, "float32")
    rng = jax.random.key(0)
    compiled = step.lower(params, opt_state, batches[0], rng).compile()
    state = [params, opt_state]
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        state[0], state[1], loss = compiled(state[0], state[1], batches[i % 4], jax.random.fold_in(rng, i))
        jax.block_until_ready(loss)
        if i >= 2:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {"ms_per_step": 1e3 * median, "tokens_per_s": BATCH * SEQ / median, "steps": steps, "vocab": pipeline.vocab.size}



def main() -> None:
    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny build, few batches and steps, short quality run")
    parser.add_argument("--scale", choices=("full", "tiny"), default=None, help="default: full (tiny with --quick)")
    parser.add_argument("--data-dir", default=None, help="build here (kept) instead of a scratch directory")
    parser.add_argument("--reuse", action="store_true", help="use the build in --data-dir as is (build time from its manifest)")
    parser.add_argument("--batches", type=int, default=None)
    parser.add_argument("--train-tokens-per-s", type=float, default=None, help="skip timing the train step; use this rate")
    parser.add_argument("--no-quality", action="store_true")
    args = parser.parse_args()
    scale = args.scale or ("tiny" if args.quick else "full")
    batches = args.batches or (20 if args.quick else 200)

    if args.reuse and args.data_dir:
        data_dir, build = args.data_dir, reused_build(args.data_dir)
    else:
        data_dir, build = time_build(scale, args.data_dir)
    print(f"build ({build['scale']}): {build['build_s']:.1f} s", flush=True)
    pipeline = {f"workers_{w}": time_pipeline(data_dir, batches, w) for w in (0, 2)}
    for name, r in pipeline.items():
        print(f"pipeline {name}: {r['tokens_per_s']:.0f} tokens/s, padding {r['padding_fraction']:.3f}", flush=True)
    if args.train_tokens_per_s:
        train = {"tokens_per_s": args.train_tokens_per_s, "source": "argument"}
    else:
        train = time_train_step(data_dir, 3 if args.quick else 15) | {"source": "measured (benchmarks/train_step.py build_step, f32)"}
    print(f"train step: {train['tokens_per_s']:.0f} tokens/s", flush=True)
    best = max(r["tokens_per_s"] for r in pipeline.values())
    out = {
        "benchmark": "data_pipeline",
        "shape": {"batch": BATCH, "seq": SEQ},
        "build": build,
        "pipeline": pipeline,
        "pipeline_tokens_per_s": best,
        "train_step": train,
        "ratio_to_train_step": best / train["tokens_per_s"],
        "quick": args.quick,
        "machine": machine(),
    }
    if not args.no_quality:
        from mdiff.data.quality import tokenizer_quality

        from threadpoolctl import threadpool_limits

        from mdiff.data.quality import image_token_tradeoff

        out["quality"] = tokenizer_quality(data_dir, limit=30 if args.quick else 200, audio_limit=10 if args.quick else 60)
        with threadpool_limits(1):
            out["image_psnr_db_by_tokens_per_image"] = image_token_tradeoff(data_dir, "test")
        print(f"image PSNR by tokens per image: {out['image_psnr_db_by_tokens_per_image']}", flush=True)
        print("quality: " + ", ".join(f"{k}={v:.3f}" for k, v in out["quality"].items() if isinstance(v, float)), flush=True)
    if args.data_dir is None:
        import shutil

        shutil.rmtree(data_dir, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
