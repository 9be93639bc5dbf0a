"""Sweep throughput: same-shape points trained as today (one process each, two at a time) vs packed.

    python benchmarks/sweep_throughput.py             # 8 points of the quickstart's cpu-s, 100 steps each
    python benchmarks/sweep_throughput.py --size cpu-xxs   # another of the quickstart's sizes
    python benchmarks/sweep_throughput.py --quick     # 8 points of the synthetic `test` variant (seconds)

Point i has seed i and the variant's lr (even i) or twice it (odd i).

Four parts, all in this one run (the machine may be shared: compare the ratios, not the absolute times):
  1. sequential: `python -m mdiff train` per point, two processes at a time, without the compilation cache
     (what `mdiff sweep run --parallel 2` did before packing and the cache: the target's baseline), and
     sequential_cached: the same with a compilation cache that starts empty (points 2.. reuse point 1's
     programs) and each of the two slots' processes kept to its CPU share (mdiff.runtime.cpu_shares), as the
     runner's children are now;
  2. packed: the points dealt over two `python -m mdiff.train.packed` processes, each on its CPU share (what
     `mdiff sweep run --parallel 2` does now; --packed-jobs 1: one process on every CPU, what it did before),
     from an empty cache, and packed_warm: again with the cache it left (a later packed job of the same sweep);
     points per hour, aggregate tokens/s, and the largest relative difference between a point's logged
     losses packed and alone;
  3. step: one point's compiled train step alone vs the vmap-packed step of all points, timed in
     alternation in one process (what packing gains or loses per point-step, fixed costs aside);
  4. head: the train step (the grid's size) with the full-vocabulary head (model.head=full) vs the target-only head
     (model.head=targets) on the same state and batches, timed interleaved; the median step-time ratio.
The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_common import machine  # noqa: E402


@functools.cache
def variant_lr(variant: str) -> float:
    from mdiff.config import load_config

    return float(load_config(f"experiments/quickstart.py:{variant}", []).optim.lr)


def point_overrides(seed: int, steps: int, variant: str) -> list[str]:
    """Point i: seed i, at the variant's lr (even i) or twice it (odd i), so the grid packs seeds and lrs."""
    batch, seq = (8, 32) if variant == "test" else (16, 128)
    lr = variant_lr(variant) * (2 if seed % 2 else 1)
    return [f"--config.seed={seed}", f"--config.name=seed{seed}", f"--config.optim.lr={lr}",
            f"--config.train.tokens={batch * seq * steps}",
            f"--config.optim.tokens_base={batch * seq * steps}", "--config.train.progress=False"]


def run_sequential(config: str, seeds: list[int], steps: int, variant: str, out: pathlib.Path, cache: str,
                   parallel: int = 2, confine: bool = False) -> float:
    """Wall seconds to train every point in its own `mdiff train` process, `parallel` at a time, with the
    compilation cache `cache` (a directory, or "0": off); `confine`: each slot's processes keep to its CPU
    share, as the runner's children do (mdiff.runtime.cpu_shares)."""
    from mdiff import runtime

    env = dict(os.environ, MDIFF_PROGRESS="0", MDIFF_COMPILATION_CACHE=cache)
    shares = runtime.cpu_shares(parallel) if confine else None
    todo = list(seeds)
    active: dict[int, subprocess.Popen] = {}  # slot -> process
    start = time.perf_counter()
    try:
        while todo or active:
            while todo and len(active) < parallel:
                seed, slot = todo.pop(0), min(set(range(parallel)) - set(active))
                argv = [sys.executable, "-m", "mdiff", "train", "--config", config, "--workdir", str(out / f"seed{seed}"),
                        *point_overrides(seed, steps, variant)]
                active[slot] = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                                preexec_fn=functools.partial(runtime.confine, shares[slot] if shares else None))
            time.sleep(0.2)
            for slot, proc in [(s, p) for s, p in active.items() if p.poll() is not None]:
                del active[slot]
                if proc.returncode != 0:
                    raise RuntimeError(f"{proc.args}: exit {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
    finally:  # interrupted or failed: leave no trainer behind
        for proc in active.values():
            proc.kill()
            proc.wait()
    return time.perf_counter() - start


def run_packed(config: str, seeds: list[int], steps: int, variant: str, out: pathlib.Path, cache: str,
               jobs: int = 2) -> float:
    """Wall seconds to train every point packed: `jobs` concurrent `mdiff.train.packed` processes with the
    points dealt out between them, each keeping to its CPU share (what `mdiff sweep run --parallel 2` does
    for jobs=2), with the compilation cache `cache`."""
    from mdiff import runtime

    shares = runtime.cpu_shares(jobs)
    out.mkdir(parents=True, exist_ok=True)
    argvs = []
    for j in range(jobs):
        spec = [{"config": config, "workdir": str(out / f"seed{s}"), "overrides": point_overrides(s, steps, variant)}
                for s in seeds[j::jobs]]
        (out / f"spec{j}.json").write_text(json.dumps(spec))
        argvs.append([sys.executable, "-m", "mdiff.train.packed", str(out / f"spec{j}.json")])
    start = time.perf_counter()
    procs = [subprocess.Popen(a, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, MDIFF_PROGRESS="0", MDIFF_COMPILATION_CACHE=cache),
                              preexec_fn=functools.partial(runtime.confine, shares[j] if shares else None))
             for j, a in enumerate(argvs)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"packed: exit {proc.returncode}: {err[-3000:]}")
    return time.perf_counter() - start


def losses(workdir: pathlib.Path) -> dict[int, float]:
    from mdiff import rundir

    return {r["step"]: r["loss"] for r in rundir.read_jsonl(workdir / rundir.METRICS_FILE)}


def compiled_step(config) -> tuple:
    """(run, train-step function (state, batch, hyperparameters), train pipeline) as the trainer builds
    them, for timing the bare step."""
    from mdiff.data.pipeline import make_pipeline
    from mdiff.train import loop, step as step_lib

    pipeline = make_pipeline(config, "train")
    run = loop.setup(config, None, pipeline.vocab)
    setup = step_lib.loss_setup(config, run.graphdef, run.abstract_params, run.vocab)
    return run, step_lib.make_train_step(setup, run.optimizer, config.train.microbatches), pipeline


def alternating_medians(calls: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each call(r), the calls timed in alternation for r = 0 .. repeats - 1."""
    import jax

    times: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call(r))
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


def head_ratio(config_spec: str, repeats: int) -> dict:
    """Median train-step seconds with model.head=full and =targets, interleaved, same state and batches."""
    import jax

    from mdiff.config import load_config
    from mdiff.train import loop

    steps, metrics = {}, {}
    for head in ("full", "targets"):
        run, fn, pipeline = compiled_step(load_config(config_spec, [f"--config.model.head={head}"]))
        steps[head] = (run, jax.jit(fn))
    batches = [{k: jax.numpy.asarray(v) for k, v in next(pipeline).items()} for _ in range(4)]
    pipeline.close()
    state = loop.init_state(steps["full"][0])
    hp = steps["full"][0].hyperparameters
    for head, (_, fn) in steps.items():  # compile, and the first step's loss from both heads
        metrics[head] = jax.device_get(fn(state, batches[0], hp)[1])
    med = alternating_medians({h: (lambda r, fn=fn: fn(state, batches[r % len(batches)], hp)) for h, (_, fn) in steps.items()},
                              repeats)
    loss = {h: float(m["nelbo_sum"]) / float(m["count"]) for h, m in metrics.items()}
    return {"config": config_spec, "ms_full": 1e3 * med["full"], "ms_targets": 1e3 * med["targets"],
            "speedup": med["full"] / med["targets"], "loss_full": loss["full"], "loss_targets": loss["targets"],
            "loss_rel_diff": abs(loss["full"] - loss["targets"]) / abs(loss["full"]), "repeats": repeats}


def step_ratio(config_spec: str, points: int, repeats: int) -> dict:
    """Median seconds of one point's train step alone and of the vmap-packed step of `points` points (what
    mdiff.train.packed compiles), timed in alternation in this process; the per-point-step ratio."""
    import jax
    import numpy as np

    from mdiff.config import load_config
    from mdiff.train import loop

    run, fn, pipeline = compiled_step(load_config(config_spec, []))
    batches = [next(pipeline) for _ in range(points)]
    pipeline.close()
    state = loop.init_state(run)
    lone, packed = jax.jit(fn), jax.jit(jax.vmap(fn))
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *[jax.device_get(state)] * points)
    batch = {k: np.stack([b[k] for b in batches]) for k in batches[0]}
    hp = run.hyperparameters
    hps = jax.tree.map(lambda *xs: np.stack(xs), *[hp] * points)
    jax.block_until_ready((lone(state, batches[0], hp), packed(stacked, batch, hps)))  # compile
    med = alternating_medians({"lone": lambda r: lone(state, batches[r % points], hp),
                               "packed": lambda r: packed(stacked, batch, hps)}, repeats)
    lone_s, packed_s = med["lone"], med["packed"]
    return {"points": points, "ms_lone": 1e3 * lone_s, "ms_packed": 1e3 * packed_s,
            "ms_packed_per_point": 1e3 * packed_s / points, "per_point_speedup": lone_s * points / packed_s,
            "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="synthetic `test` variant: checks that the script runs")
    parser.add_argument("--size", default="cpu-s", choices=("cpu-xxs", "cpu-xs", "cpu-s", "cpu-m", "cpu-l"),
                        help="the quickstart size of the grid's points (default cpu-s)")
    parser.add_argument("--points", type=int, default=8)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--head-repeats", type=int, default=10)
    parser.add_argument("--packed-jobs", type=int, default=2,
                        help="packed processes at once, each on its CPU share (the runner's --parallel; default 2)")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: sweep,cached,step,head (cached: "
                        "the sweep part's modes with a compilation cache, sequential_cached and packed_warm)")
    args = parser.parse_args()
    variant = "test" if args.quick else args.size
    config = f"experiments/quickstart.py:{variant}"
    steps = min(args.steps, 12) if args.quick else args.steps
    skip = set(filter(None, args.skip.split(",")))
    seeds = list(range(args.points))
    result: dict = {"benchmark": "sweep_throughput", "config": config, "points": len(seeds), "steps": steps}
    if "sweep" not in skip:
        batch, seq = (8, 32) if variant == "test" else (16, 128)
        tokens = len(seeds) * steps * batch * seq
        modes: dict[str, float] = {}
        with tempfile.TemporaryDirectory(prefix="mdiff-sweep-throughput-") as tmp:
            tmp = pathlib.Path(tmp)
            # Each mode starts from an empty compilation cache, as a fresh sweep does (or from none at all).
            modes["sequential"] = run_sequential(config, seeds, steps, variant, tmp / "sequential", "0")
            if "cached" not in skip:
                modes["sequential_cached"] = run_sequential(config, seeds, steps, variant, tmp / "sequential_cached",
                                                            str(tmp / "cache_sequential"), confine=True)
            modes["packed"] = run_packed(config, seeds, steps, variant, tmp / "packed", str(tmp / "cache_packed"),
                                         jobs=args.packed_jobs)
            if "cached" not in skip:  # a later packed job of the same sweep: its programs are in the cache
                modes["packed_warm"] = run_packed(config, seeds, steps, variant, tmp / "packed_warm",
                                                  str(tmp / "cache_packed"), jobs=args.packed_jobs)
            diffs = []
            for s in seeds:
                a, p = losses(tmp / "sequential" / f"seed{s}"), losses(tmp / "packed" / f"seed{s}")
                if a.keys() != p.keys():
                    raise RuntimeError(f"seed {s}: logged steps differ between the modes")
                diffs.append(max(abs(a[k] - p[k]) / abs(a[k]) for k in a))
        for mode, wall in modes.items():
            result[mode] = {"wall_s": wall, "points_per_hour": 3600 * len(seeds) / wall, "tokens_per_s": tokens / wall}
        result["packed"]["jobs"] = args.packed_jobs
        result.update(  # the target: packed against one uncached process per point, two at a time
            speedup_points_per_hour=modes["sequential"] / modes["packed"],
            speedup_vs_cached_sequential=modes.get("sequential_cached", float("nan")) / modes["packed"],
            max_loss_rel_diff=max(diffs),
        )
        print(f"[sweep] {len(seeds)} points x {steps} steps: " + ", ".join(f"{m} {w:.1f} s" for m, w in modes.items())
              + f": packed x{modes['sequential'] / modes['packed']:.2f} points/hour against sequential"
              + (f", x{result['speedup_vs_cached_sequential']:.2f} against sequential_cached" if "cached" not in skip else "")
              + f"; largest loss difference {max(diffs):.1e}", flush=True)
    if "step" not in skip:
        result["step"] = step_ratio(config, len(seeds), 3 if args.quick else args.head_repeats)
        st = result["step"]
        print(f"[step] {variant}: one point {st['ms_lone']:.1f} ms, {st['points']} packed {st['ms_packed']:.1f} ms "
              f"({st['ms_packed_per_point']:.1f} ms per point): x{st['per_point_speedup']:.2f} per point-step", flush=True)
    if "head" not in skip:
        result["head"] = head_ratio(config, 3 if args.quick else args.head_repeats)
        h = result["head"]
        print(f"[head] {variant} step: full {h['ms_full']:.1f} ms, targets {h['ms_targets']:.1f} ms: x{h['speedup']:.2f}; "
              f"loss rel diff {h['loss_rel_diff']:.1e}", flush=True)
    result["machine"] = machine()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
