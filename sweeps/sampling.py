"""Sampling: the inference defaults of each task, over config.sampling keys, for one trained run.

Each point scores the same trained run with other sampling settings (nothing is retrained; see
mdiff/sweeps/sample_point.py); its summary.json holds `eval/<task>/<score>` figures (and the
evaluator's ceiling / shuffled references), which results.csv collects. Name the run to evaluate
after the variant:

    mdiff sweep run sampling:cpu,run=quickstart_out/runs/<best> --out sampling_out
    mdiff report sampling_out    # quality vs steps per task, report/sampling_defaults.json

Every task varies its number of steps (the quality-vs-steps curve) against the one other key that
matters most for it on the CPU models; each point changes one task's section, so it only samples
and scores that task. Target lengths: text 127 tokens, images 16, text slots 24, audio slots 80.

Variants:
  cpu   20 points: i2t steps x temperature; s2t steps x method; text steps x method;
        t2i steps x guidance; t2s guidance (points took 7-35 s, t2s 130 s, on a cpu-l run: about 10 min)
  pod   the same keys on finer grids, plus the time grid, top-p and temperature (88 points)
"""

from mdiff.sweeps import Sweep, SweepError, chain, product, sweep

VARIANTS = ("cpu", "pod")


def get_sweep(variant: str, run: str = "") -> Sweep:
    """`run`: the trained run directory whose model every point samples from."""
    if not run:
        raise SweepError(f"sampling:{variant} scores a trained run: name it, e.g. sampling:{variant},run=quickstart_out/runs/NAME")
    if variant == "cpu":
        points = chain(  # cheapest judges first: a sweep cut short still covers most tasks
            product(sweep("sampling.i2t.steps", [2, 24]), sweep("sampling.i2t.temperature", [0.0, 1.0])),
            product(sweep("sampling.s2t.steps", [4, 24]), sweep("sampling.s2t.method", ["ancestral", "confidence"])),
            product(sweep("sampling.text.steps", [8, 32, 128]), sweep("sampling.text.method", ["ancestral", "confidence"])),
            product(sweep("sampling.t2i.steps", [4, 16]), sweep("sampling.t2i.guidance", [0.0, 2.0])),
            product(sweep("sampling.t2s.steps", [40]), sweep("sampling.t2s.guidance", [0.0, 2.0])),  # slowest judge
        )
        config = "experiments/quickstart.py:cpu-l"
    else:
        points = chain(
            product(sweep("sampling.text.steps", [64, 128, 256, 512]), sweep("sampling.text.method", ["ancestral", "confidence"]),
                    sweep("sampling.text.top_p", [0.9, 1.0])),
            product(sweep("sampling.t2i.steps", [8, 16, 32]), sweep("sampling.t2i.guidance", [0.0, 1.0, 2.0, 4.0]),
                    sweep("sampling.t2i.temperature", [0.7, 1.0])),
            product(sweep("sampling.i2t.steps", [4, 12, 24]), sweep("sampling.i2t.temperature", [0.0, 0.7]),
                    sweep("sampling.i2t.method", ["ancestral", "confidence"])),
            product(sweep("sampling.t2s.steps", [20, 40, 80]), sweep("sampling.t2s.guidance", [0.0, 1.0, 2.0, 4.0]),
                    sweep("sampling.t2s.grid", ["linear", "cosine"])),
            product(sweep("sampling.s2t.steps", [4, 12, 24]), sweep("sampling.s2t.temperature", [0.0, 0.7]),
                    sweep("sampling.s2t.method", ["ancestral", "confidence"])),
        )
        config = "experiments/pilot.py:b256"
    return Sweep(config=config, points=points, module="mdiff.sweeps.sample_point", command=("--run", run),
                 devices=1 if variant == "cpu" else 8)
