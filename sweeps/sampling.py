"""Sampling: the inference defaults of each task, over config.sampling keys, for one trained run.

Each point is an `mdiff eval` of the same trained run with other sampling settings (nothing is retrained);
its summary holds the task scores. Name the run to evaluate after the variant:

    mdiff sweep run sampling:cpu,run=quickstart_out/runs/<best> --out sampling_out

Variants:
  cpu   steps x method for text, guidance x temperature for text-to-image and text-to-speech (18 points)
  pod   the same keys on a finer grid, plus the time grid and top-p (48 points)
"""

from mdiff.sweep import Sweep, chain, product, sweep

VARIANTS = ("cpu", "pod")


def get_sweep(variant: str, run: str = "RUN_DIR") -> Sweep:
    """`run`: the trained run directory whose model every point samples from."""
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
    return Sweep(config=config, points=points, command=("eval", "--run", run), devices=1 if variant == "cpu" else 8)
