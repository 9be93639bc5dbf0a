"""Defaults and checks for `config.sampling`: the inference settings `mdiff sample` / `mdiff eval` use.

One section per task (the paper reports that the best inference settings differ by modality), each
with the same keys, so sweeps (sweeps/sampling.py) can vary e.g. ``sampling.t2i.guidance``:

    steps        denoising steps T >= 1
    grid         time grid: linear (t_j = 1 - j/T) | cosine (t_j = cos(pi/2 j/T), more steps early)
    method       ancestral (exact MDM reverse process) | confidence (commit the most confident first)
    temperature  0 = greedy
    top_k        0 disables
    top_p        in (0, 1]; 1 disables
    guidance     classifier-free guidance scale w >= 0; 0 disables (must be 0 for unconditional text)
    ordering     confidence score (method=confidence): max_prob | margin | entropy
    remask       fraction of committed tokens re-masked per step (method=confidence), in [0, 1)

Starting values: ancestral sampling for free text (unbiased w.r.t. the model); confidence-ordered
decoding with mild guidance for images and speech (MaskGIT-style ordering helps spatial/temporal
coherence); greedy-leaning settings for the transcription-like tasks i2t and s2t, whose answers are
scored by exact match / WER. `sweeps/sampling.py` is where they are tuned per task.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import ml_collections

from mdiff.config import ConfigDict, fail, register_validator

TASK_SECTIONS = ("text", "t2i", "i2t", "t2s", "s2t")
CONDITIONAL_TASKS = ("t2i", "i2t", "t2s", "s2t")


def task_sampling(**changes: Any) -> dict[str, Any]:
    settings = dict(
        steps=64,
        grid="linear",
        method="ancestral",
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        guidance=0.0,
        ordering="max_prob",
        remask=0.0,
    )
    settings.update(changes)
    return settings


def sampling_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            seed=0,  # sampling PRNG seed
            batch_size=16,  # rows per compiled sampler call
            num_eval_samples=64,  # `mdiff eval`: generated samples per task
            text=task_sampling(),
            t2i=task_sampling(method="confidence", grid="cosine", guidance=1.0, temperature=1.0),
            i2t=task_sampling(steps=32, method="confidence", temperature=0.0),
            t2s=task_sampling(method="confidence", grid="cosine", guidance=1.0, temperature=1.0),
            s2t=task_sampling(steps=32, method="confidence", temperature=0.0),
        )
    )


def file_defaults(path: str | None, task: str) -> dict[str, Any]:
    """This task's settings from a `{"sampling.<task>.<key>": value}` JSON file (a sampling sweep's choice,
    `mdiff sample --defaults FILE`); {} without a file. Unknown tasks or keys are refused."""
    from mdiff.diffusion.sampling import SamplingError  # noqa: PLC0415 (jax import)

    if not path:
        return {}
    try:
        data = json.loads(pathlib.Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SamplingError(f"--defaults {path}: cannot read a JSON object ({e})") from None
    if not isinstance(data, dict):
        raise SamplingError(f"--defaults {path}: expected a JSON object of sampling.<task>.<key> settings")
    fields = set(task_sampling())
    out = {}
    for key, value in data.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "sampling" or parts[1] not in TASK_SECTIONS or parts[2] not in fields:
            raise SamplingError(f"--defaults {path}: key {key!r} is not sampling.<task>.<setting>; settings: {', '.join(sorted(fields))}")
        if parts[1] == task:
            out[parts[2]] = value
    return out


@register_validator("sampling")
def validate_sampling(config: ConfigDict) -> None:
    s = config.sampling
    if s.batch_size < 1:
        fail("sampling.batch_size", s.batch_size, "must be >= 1")
    if s.num_eval_samples < 1:
        fail("sampling.num_eval_samples", s.num_eval_samples, "must be >= 1")
    from mdiff.diffusion.sampling import SamplerSettings, SamplingError, check_settings

    for task in TASK_SECTIONS:
        try:
            check_settings(SamplerSettings.from_config(s[task]), conditional=task in CONDITIONAL_TASKS, where=f"sampling.{task}")
        except SamplingError as err:
            raise type(err)(f"config.{err}") from None
