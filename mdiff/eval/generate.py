"""Generate samples of one task from a loaded run: prompts -> compiled sampler -> tokenizer-local ids.

Conditions are raw when the run has tokenizers (str for t2i / t2s / a text prefix, a uint8 image for
i2t, a 16 kHz waveform for s2t); for the synthetic dataset (no tokenizers) they are local id arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from mdiff.data.layout import LayoutError
from mdiff.vocab import TASKS, Modality
from mdiff.diffusion.sampling import Sampler, SamplerSettings, SamplingError
from mdiff.diffusion.schedules import modality_schedules
from mdiff.eval.restore import LoadedRun
from mdiff.eval.tasks import check_task


def slots(run: LoadedRun) -> dict[str, int]:
    if run.tokenizers is not None:
        t = run.tokenizers
        return dict(text_slot=t.text_slot, audio_slot=t.audio_slot, image_tokens=t.image_tokens, text_eod=t.text.eod_id, audio_fill=t.audio.fill_id)
    from mdiff.data.corpus import SYNTHETIC_SLOTS, synthetic_corpus

    corpus = synthetic_corpus("train")
    return dict(**SYNTHETIC_SLOTS, text_eod=corpus.text_eod, audio_fill=corpus.audio_fill)


def target_length(run: LoadedRun, task: str) -> int:
    s = slots(run)
    return {"text": run.seq_len - 1, "t2i": s["image_tokens"], "i2t": s["text_slot"], "t2s": s["audio_slot"], "s2t": s["text_slot"]}[task]


def encode_condition(run: LoadedRun, task: str, condition: Any) -> np.ndarray | None:
    """Tokenizer-local condition ids, checked against the slot they must fit."""
    from mdiff.data.pipeline import fit_slot

    s = slots(run)
    tok = run.tokenizers
    cond_modality = TASKS[task][1]
    if task == "text":
        if condition is None or (isinstance(condition, str) and not condition):
            return None
        return tok.text.encode(condition) if isinstance(condition, str) and tok is not None else _ids(condition)
    if condition is None:
        raise SamplingError(f"task {task!r} needs a prompt")
    if cond_modality == Modality.TEXT:
        ids = tok.text.encode(condition) if isinstance(condition, str) and tok is not None else _ids(condition)
        if len(ids) > s["text_slot"] - 1:
            raise LayoutError(
                f"prompt {condition!r} has {len(ids)} text tokens; the text slot holds at most {s['text_slot'] - 1} (data.slots.text)"
            )
        return fit_slot(ids, s["text_slot"], s["text_eod"], keep_end=True)
    if cond_modality == Modality.IMAGE:
        ids = tok.image.encode(np.asarray(condition)) if tok is not None and np.ndim(condition) == 3 else _ids(condition)
        if len(ids) != s["image_tokens"]:
            raise LayoutError(f"image prompt has {len(ids)} tokens; images have {s['image_tokens']}")
        return ids
    ids = tok.audio.encode(np.asarray(condition, np.float32)) if tok is not None and np.asarray(condition).dtype.kind == "f" else _ids(condition)
    if len(ids) > s["audio_slot"]:
        raise LayoutError(f"audio prompt has {len(ids)} tokens; the audio slot holds {s['audio_slot']} (data.slots.audio)")
    return fit_slot(ids, s["audio_slot"], s["audio_fill"], keep_end=False)


def _ids(condition: Any) -> np.ndarray:
    if isinstance(condition, str):
        try:
            return np.array([int(x) for x in condition.split()], np.int32)
        except ValueError:
            raise SamplingError(f"prompt {condition!r}: this run has no tokenizers (synthetic data); give local token ids, e.g. '3 14 15'") from None
    return np.asarray(condition, np.int32).reshape(-1)


_LENGTH_RULES: dict[str, Any] = {}


def length_rule(run: LoadedRun) -> Any:
    """The run's training-split `mdiff.data.prompts.LengthRule` (measured once per dataset and process)."""
    from mdiff.data.pipeline import open_corpus
    from mdiff.data.prompts import measure_lengths

    key = f"{run.corpus_name}|{run.config.data.dataset}|{run.config.data.get('data_dir', '')}"
    if key not in _LENGTH_RULES:
        _LENGTH_RULES[key] = measure_lengths(open_corpus(run.config, "train"))
    return _LENGTH_RULES[key]


def prompt_batch(run: LoadedRun, task: str, conditions: Sequence[Any], target_lengths: str | None = None) -> dict[str, np.ndarray]:
    """Prompt rows; `target_lengths` "measured" lays out the generated slot as training does (measured
    content masked, fill given; mdiff.data.prompts), "whole_slot" masks the whole slot. None: as the run
    was trained ("whole_slot" if its fill was a target, data.fill_targets, else "measured")."""
    from mdiff.data.prompts import TARGET_LENGTHS, generated_slot, make_prompt_ids

    if target_lengths is None:
        target_lengths = "whole_slot" if run.config.data.get("fill_targets", False) else "measured"
    if not len(conditions):
        raise SamplingError("no prompts given")
    if target_lengths not in TARGET_LENGTHS:
        raise SamplingError(f"target_lengths={target_lengths!r}; choose one of {', '.join(TARGET_LENGTHS)}")
    rule = length_rule(run) if target_lengths == "measured" and task in ("i2t", "s2t", "t2s") else None
    s = slots(run)
    cond_modality = TASKS[task][1]
    rows = []
    for condition in conditions:
        ids = encode_condition(run, task, condition)
        modality = Modality.TEXT if task == "text" else cond_modality
        cond = None if ids is None else run.vocab.to_global(ids, modality)
        fill = {Modality.TEXT: s["text_eod"], Modality.AUDIO: s["audio_fill"]}.get(cond_modality)
        content = 0 if ids is None else int(np.sum(ids != fill)) if fill is not None else len(ids)
        slot = generated_slot(run.vocab, task, rule, content, target_length(run, task), text_eod=s["text_eod"], audio_fill=s["audio_fill"])
        rows.append(make_prompt_ids(run.vocab, task, cond, target_length(run, task), run.seq_len, **slot))
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def make_sampler(run: LoadedRun, task: str, settings: SamplerSettings) -> Sampler:
    check_task(task, run.config)
    target = TASKS[task][2]
    alpha = modality_schedules(run.config.diffusion)[target].alpha
    return Sampler(run.logits_fn, alpha, settings, run.vocab.range(target), run.vocab.mask_id, conditional=task != "text")


def generate(
    run: LoadedRun, task: str, conditions: Sequence[Any], settings: SamplerSettings, *, seed: int = 0, batch_size: int = 16,
    target_lengths: str | None = None,
) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    """Sample every condition; returns (local ids of each generated span, the full prompt batch with outputs).

    A conditional task's span is its whole target slot (the generated content followed by the given fill).

    `target_lengths`: see `prompt_batch` (default: the generated slot laid out as the run was trained).

    Rows go through the compiled sampler `batch_size` at a time (the last chunk is padded by repeating
    rows, so one program serves every chunk).
    """
    sampler = make_sampler(run, task, settings)
    batch = prompt_batch(run, task, conditions, target_lengths)
    n = len(conditions)
    tokens = np.zeros_like(batch["tokens"])
    key = jax.random.key(seed)
    for start in range(0, n, batch_size):
        rows = np.arange(start, start + batch_size) % n if n >= batch_size else np.arange(batch_size) % n
        chunk = {k: v[rows] for k, v in batch.items()}
        out = np.asarray(sampler(run.state, chunk, jax.random.fold_in(key, start))["tokens"])
        take = min(batch_size, n - start)
        tokens[start : start + take] = out[:take]
    result = dict(batch, tokens=tokens)
    target = TASKS[task][2]
    # A conditional task's span is its whole target slot: generated content, then the given fill.
    span = batch["loss_mask"] > 0 if task == "text" else batch["modality"] == int(target)
    spans = [run.vocab.to_local(tokens[i][span[i]], target) for i in range(n)]
    return spans, result
