"""Which sampling tasks a run was trained for, and the check that a requested task is one of them.

Prompt batches are laid out by mdiff.data.prompts (the training layout, fill given) through
mdiff.eval.generate.prompt_batch.
"""

from __future__ import annotations

from typing import Any

from mdiff.diffusion.sampling import SamplingError
from mdiff.vocab import TASKS


def trained_tasks(config: Any) -> tuple[str, ...]:
    """Tasks present in the run's training stream (config.data.mix and the i2t/s2t fractions)."""
    data = config["data"] if isinstance(config, dict) else config.data
    mix = dict(data["mix"])
    out = []
    if mix.get("text", 0) > 0:
        out.append("text")
    for stream, forward, backward, key in (("image", "t2i", "i2t", "i2t_fraction"), ("audio", "t2s", "s2t", "s2t_fraction")):
        if mix.get(stream, 0) > 0:
            fraction = float(data.get(key, 0.5))
            if fraction < 1:
                out.append(forward)
            if fraction > 0:
                out.append(backward)
    return tuple(out)


def check_task(task: str, config: Any) -> None:
    if task not in TASKS:
        raise SamplingError(f"task {task!r}: unknown; tasks: {', '.join(TASKS)}")
    trained = trained_tasks(config)
    if task not in trained:
        raise SamplingError(
            f"task {task!r}: this run was not trained for it (config.data.mix and i2t/s2t fractions give: {', '.join(trained) or 'none'})"
        )
