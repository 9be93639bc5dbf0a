"""Hyperparameter transfer: learning rate x width and learning rate x depth, standard vs CompleteP.

Under CompleteP (optim.completep=True: per-class lr/eps/decay multipliers of m_N = width / width_base and
m_L = depth / depth_base, residual branches scaled by m_L^-alpha) the loss-optimal learning rate should
stay put (within one grid step, a factor 2) as the model widens or deepens; under the standard
parameterisation (False) it drifts. The base shape (width_base, depth_base) is on both grids, where the
two parameterisations coincide. The batch reparameterisation is off (kappa = 1), so `optim.lr` is the
peak learning rate every run used. Analysis: loss against learning rate, one curve per width (per
depth), and the optimum's shift per grid step (analysis/transfer.py, `mdiff report`).

Variants:
  cpu   widths 16, 32, 64, 128 (8x) at depth 2 and depths 2, 8 at width 32; head dim 16, MLP 3 x width;
        lr 3e-3 ... 9.6e-2 in factors of 2 (6 values); 64 steps of 8 x 128 tokens on the embedded dataset;
        3 seeds (60 points x 3 = 180 runs; each shape and parameterisation's 18 runs train packed)
  pod   widths 512 ... 4096 (8x) at depth 8 and depths 4 ... 32 at width 1024 on the pilot's data and
        batch (head dim 128), lr 2^-12 ... 2^-6, 2 seeds, 3.25B tokens each; 64 devices on 8 hosts
"""

from mdiff.sweeps import Sweep, product, sweep

VARIANTS = ("cpu", "pod")


def shape(width: int, depth: int, head_dim: int, mlp_ratio: float) -> dict:
    """An explicit transformer shape (no preset): heads of `head_dim`, MLP `mlp_ratio` x width."""
    return {"model.width": width, "model.depth": depth, "model.heads": width // head_dim,
            "model.mlp_hidden": int(mlp_ratio * width)}  # fmt: skip


def shapes(widths, depths, width_base: int, depth_base: int, head_dim: int, mlp_ratio: float) -> list[dict]:
    """The width grid at depth_base, then the other depths at width_base (the base shape once)."""
    return [shape(w, depth_base, head_dim, mlp_ratio) for w in widths] + [
        shape(width_base, d, head_dim, mlp_ratio) for d in depths if d != depth_base
    ]


CPU_WIDTHS, CPU_DEPTHS, CPU_BASE = (16, 32, 64, 128), (2, 8), (32, 2)
CPU_LRS = (3e-3, 6e-3, 1.2e-2, 2.4e-2, 4.8e-2, 9.6e-2)
CPU_SEEDS = (0, 1, 2)
CPU_STEPS, CPU_BATCH, CPU_SEQ = 64, 8, 128
CPU_COMMON = {
    "model.size": "",  # the explicit shapes of the grid
    "optim.reparameterise": False,  # kappa = 1: optim.lr is the lr used
    "optim.width_base": CPU_BASE[0],
    "optim.depth_base": CPU_BASE[1],
    "train.batch": CPU_BATCH,
    "train.tokens": CPU_STEPS * CPU_BATCH * CPU_SEQ,
    "train.eval_every": 0,  # one evaluation, at the end
    "train.eval_batches": 8,
    "train.eval_batch": 16,
    "train.log_every": 8,
    "train.checkpoint_every": 1000,
}

POD_WIDTHS, POD_DEPTHS, POD_BASE = (512, 1024, 2048, 4096), (4, 8, 16, 32), (1024, 8)
POD_LRS = tuple(2.0**-k for k in range(12, 5, -1))


def get_sweep(variant: str) -> Sweep:
    if variant == "cpu":
        grid = shapes(CPU_WIDTHS, CPU_DEPTHS, *CPU_BASE, head_dim=16, mlp_ratio=3)
        # Seeds vary slowest: a partial sweep has every point once, and the second seed reuses compiled programs.
        points = product(sweep("seed", CPU_SEEDS), grid, sweep("optim.completep", [False, True]), sweep("optim.lr", CPU_LRS))
        return Sweep(config="experiments/quickstart.py:cpu-xs", points=points, common=CPU_COMMON,
                     description="lr x width and lr x depth, SP vs CompleteP")  # fmt: skip
    grid = shapes(POD_WIDTHS, POD_DEPTHS, *POD_BASE, head_dim=128, mlp_ratio=8 / 3)
    grid = [dict(g, **{"model.mlp_hidden": round(g["model.mlp_hidden"] / 128) * 128}) for g in grid]
    common = {"model.size": "", "optim.reparameterise": False, "optim.width_base": POD_BASE[0],
              "optim.depth_base": POD_BASE[1], "train.tokens": 3_250_000_000}  # fmt: skip
    points = product(grid, sweep("optim.completep", [False, True]), sweep("optim.lr", POD_LRS), sweep("seed", [0, 1]))
    return Sweep(config="experiments/pilot.py:b256", points=points, common=common,
                 devices=64, hosts=8, description="lr x width and lr x depth, SP vs CompleteP")
