"""Sweeps: definition, expansion, the local runner, the results table and cluster scripts.

Sweep files in `sweeps/` build their points with the combinators exported here:

    from mdiff.sweeps import Sweep, product, sweep
    def get_sweep(variant):
        return Sweep(config="experiments/quickstart.py:cpu",
                     points=product(sweep("model.size", ["q1", "q2"]), sweep("train.tokens", [2e5, 4e5])))

Modules: define (combinators), expand (load + validate points), grids (IsoFLOP grids), state (the sweep
directory's files and results.csv), runner (local processes), emit (cluster scripts), sample_point (one
sampling point), commands (`mdiff sweep run|status|emit|list`). Each point runs as `python -m mdiff train ...`
(or `mdiff symmetry train`, or `python -m mdiff.sweeps.sample_point`) with `--config.KEY=VALUE` overrides,
in DIR/runs/<name>/.
"""

from __future__ import annotations

import pathlib

from mdiff.sweeps import state
from mdiff.sweeps.define import Sweep, SweepError, chain, fixed, product, simplex, sweep, zipit
from mdiff.sweeps.emit import LAUNCHERS, SlurmOptions, emit
from mdiff.sweeps.expand import RunSpec, available_sweeps, check_point, expand, load_sweep
from mdiff.sweeps.runner import Outcome, Progress, command_line, prepare, run_sweep
from mdiff.sweeps.state import write_results

__all__ = [
    "Sweep", "SweepError", "RunSpec", "Outcome", "Progress", "SlurmOptions", "LAUNCHERS",
    "sweep", "fixed", "product", "zipit", "chain", "simplex",
    "load_sweep", "expand", "check_point", "available_sweeps", "prepare", "run_sweep", "command_line",
    "write_results", "emit", "sweep_status",
]  # fmt: skip


def sweep_status(sweep_dir: str | pathlib.Path) -> dict[str, list[str]]:
    """{state: [run names]} for a sweep directory (complete, running, failed, partial, pending)."""
    sweep_dir = pathlib.Path(sweep_dir)
    spec = state.read_sweep_file(sweep_dir)
    if spec is None:
        raise SweepError(f"{str(sweep_dir)!r} holds no {state.SWEEP_FILE}: not a sweep directory")
    out: dict[str, list[str]] = {}
    for point in spec.get("points", []):
        out.setdefault(state.run_state(sweep_dir, point["name"]), []).append(point["name"])
    return out
