"""Sampling: the inference defaults of each task, over config.sampling keys, for one trained run.

Each point scores the same trained run with other sampling settings (nothing is retrained; see
mdiff/sweeps_lib/sample_point.py); its summary.json holds `eval/<task>/<score>` figures, which
results.csv collects. Name the run to evaluate after the variant:

    mdiff sweep run sampling:cpu,run=quickstart_out/runs/<best> --out sampling_out

Variants:
  cpu   steps x method for text, guidance x temperature for text-to-image and text-to-speech (18 points)
  pod   the same keys on a finer grid, plus the time grid and top-p (48 points)
"""

from mdiff.sweep import Sweep, SweepError, chain, product, sweep

VARIANTS = ("cpu", "pod")


def get_sweep(variant: str, run: str = "") -> Sweep:
    """`run`: the trained run directory whose model every point samples from."""
    if not run:
        raise SweepError(f"sampling:{variant} scores a trained run: name it, e.g. sampling:{variant},run=quickstart_out/runs/NAME")
    if variant == "cpu":
        points = chain(
            product(sweep("sampling.text.steps", [16, 32, 64]), sweep("sampling.text.method", ["ancestral", "confidence"])),
            product(sweep("sampling.t2i.guidance", [0.0, 1.0, 3.0]), sweep("sampling.t2i.temperature", [0.7, 1.0])),
            product(sweep("sampling.t2s.guidance", [0.0, 1.0, 3.0]), sweep("sampling.t2s.temperature", [0.7, 1.0])),
        )
        config = "experiments/quickstart.py:cpu-s"
    else:
        points = chain(
            product(sweep("sampling.text.steps", [64, 128, 256, 512]), sweep("sampling.text.method", ["ancestral", "confidence"]),
                    sweep("sampling.text.top_p", [0.9, 1.0])),
            product(sweep("sampling.t2i.guidance", [0.0, 1.0, 2.0, 4.0]), sweep("sampling.t2i.temperature", [0.7, 1.0]),
                    sweep("sampling.t2i.grid", ["linear", "cosine"])),
            product(sweep("sampling.t2s.guidance", [0.0, 1.0, 2.0, 4.0]), sweep("sampling.t2s.temperature", [0.7, 1.0]),
                    sweep("sampling.t2s.grid", ["linear", "cosine"])),
        )
        config = "experiments/pilot.py:b256"
    return Sweep(config=config, points=points, module="mdiff.sweeps_lib.sample_point", command=("--run", run),
                 devices=1 if variant == "cpu" else 8)
