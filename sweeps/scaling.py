"""Scaling: model size x token horizon on an IsoFLOP grid (several compute budgets, several sizes each).

Each budget C gives every size the horizon D = C / (training FLOPs per token of that size), so the
points of one budget cost the same compute. `mdiff fit` / the report fit L(N, D) per modality on
results.csv (approach 3) and read the IsoFLOP minima (approach 2).

Variants:
  cpu   the quickstart grid: 4 CPU presets x 3 budgets (12 runs, a few minutes on 2 cores)
  cpu-wide  the quickstart grid widened for the per-modality fits: 5 presets (cpu-l added: 1.5 decades of
        non-embedding parameters) x 4 budgets (8C added: 1.7 decades of tokens); 20 runs, 12 of them the
        quickstart's own points (same names and configs, so a directory seeded with those runs trains 8)
  cpu-below  the quickstart grid with two smaller sizes (cpu-4xs, cpu-3xs: 3.6k and 6.8k non-embedding
        parameters), so that the two smaller budgets, whose loss-optimal size lies below cpu-xxs, are sampled
        on both sides of their optimum; 18 runs, 12 of them the quickstart's own
  test  2 runs on the synthetic dataset, seconds each (tests of the runner and the quickstart)
  pod   3 budgets (1e18, 1e19, 1e20 FLOPs) x the 5 of 8 explicit shapes (11M ... 1.2B non-embedding
        parameters) around each budget's compute-optimal size
        on the pilot's data, batch and optimiser (experiments/pilot.py), 64 devices on 8 hosts per run
"""

from mdiff.sweeps import Sweep, chain, product, sweep
from mdiff.sweeps.grids import isoflop

VARIANTS = ("cpu", "cpu-wide", "cpu-below", "test", "pod")

CPU_CONFIG = "experiments/quickstart.py:cpu-s"
CPU_SIZES = ("cpu-xxs", "cpu-xs", "cpu-s", "cpu-m")
# The quickstart's one time knob. Smallest budget: cpu-m (3.3 MFLOP/token with the embedded vocabulary)
# for ~48 steps of 8 x 128 tokens; the largest gives cpu-xxs ~700 steps. 12 runs, a few minutes on 2 cores.
CPU_BUDGET = 1.6e11
CPU_BUDGETS = (CPU_BUDGET, 2 * CPU_BUDGET, 4 * CPU_BUDGET)
WIDE_SIZES = (*CPU_SIZES, "cpu-l")
WIDE_BUDGETS = (*CPU_BUDGETS, 8 * CPU_BUDGET)
BELOW_SIZES = ("cpu-4xs", "cpu-3xs", *CPU_SIZES)
CPU_COMMON = {
    "train.batch": 8,
    "train.eval_every": 0,  # evaluate once, at the end: that is the number the fit uses
    "train.eval_batches": 8,  # 8 x 8 x 128 validation tokens: a steadier final loss
    "train.log_every": 5,
    "train.checkpoint_every": 100,
}

POD_CONFIG = "experiments/pilot.py:b256"
POD_DEVICES, POD_HOSTS = 64, 8


def _shape(width: int, depth: int) -> dict:
    """A transformer with 128-wide heads and a SwiGLU MLP of ~8/3 the width (a multiple of 128)."""
    return {"model.width": width, "model.depth": depth, "model.heads": width // 128,
            "model.mlp_hidden": round(8 * width / 3 / 128) * 128}  # fmt: skip


# ~11M, 25M, 49M, 85M, 201M, 393M, 680M, 1.2B non-embedding parameters.
POD_LADDER = [_shape(w, d) for w, d in ((384, 6), (512, 8), (640, 10), (768, 12), (1024, 16), (1280, 20), (1536, 24), (2048, 24))]
# Each budget trains the five sizes around its compute-optimal size (D* ~ 7754 N^0.84, the
# tri-modal paper's frontier, arXiv 2602.21472).
POD_BUDGETS = {1e18: POD_LADDER[0:5], 1e19: POD_LADDER[1:6], 1e20: POD_LADDER[3:8]}


def get_sweep(variant: str) -> Sweep:
    if variant == "cpu":
        points = isoflop(CPU_CONFIG, CPU_SIZES, CPU_BUDGETS, min_steps=20, common=CPU_COMMON)
        return Sweep(config=CPU_CONFIG, points=points, common=CPU_COMMON, description="quickstart IsoFLOP grid")
    if variant == "cpu-wide":
        points = isoflop(CPU_CONFIG, WIDE_SIZES, WIDE_BUDGETS, min_steps=20, common=CPU_COMMON)
        return Sweep(config=CPU_CONFIG, points=points, common=CPU_COMMON, description="widened IsoFLOP grid")
    if variant == "cpu-below":
        points = isoflop(CPU_CONFIG, BELOW_SIZES, CPU_BUDGETS, min_steps=20, common=CPU_COMMON)
        return Sweep(config=CPU_CONFIG, points=points, common=CPU_COMMON, description="IsoFLOP grid with smaller sizes")
    if variant == "test":
        points = product(sweep("model.size", ["cpu-xxs", "cpu-xs"]), sweep("train.tokens", [8 * 32 * 8]))
        return Sweep(config="experiments/quickstart.py:test", points=points, description="runner smoke test")
    common = {"model.size": ""}  # the explicit shapes below, not the pilot preset
    points = chain(*(isoflop(POD_CONFIG, sizes, [c], min_steps=2000, common=common) for c, sizes in POD_BUDGETS.items()))
    return Sweep(config=POD_CONFIG, points=points, common=common, devices=POD_DEVICES, hosts=POD_HOSTS)
