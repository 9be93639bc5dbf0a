"""Sampling inputs from raw conditions, and raw outputs from sampled rows.

`make_prompt` lays out one example exactly as training does (mdiff/data/layout.py), pads it to the
sequence length, and sets every target position to MASK: a sampler fills the positions where
``loss_mask`` is 1. `decode_output` reads the target span of a (sampled) row back to text, an image
or a waveform.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mdiff.data.layout import LayoutError, empty_row, layout_example
from mdiff.data.pipeline import fit_slot
from mdiff.data.tokenizers import Tokenizers
from mdiff.vocab import TASKS, Modality, UnifiedVocab


def make_prompt_ids(
    vocab: UnifiedVocab,
    task: str,
    condition: np.ndarray | None,
    target_len: int,
    seq_len: int,
) -> dict[str, np.ndarray]:
    """A [seq_len] row for `task` with `condition` (unified ids, already slot-sized) and MASKed targets.

    For task "text", `condition` is an optional prompt prefix (given, never generated) and the rest of
    `target_len` positions are generated.
    """
    if task not in TASKS:
        raise LayoutError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    _, _, target_modality = TASKS[task]
    placeholder = np.full(target_len, vocab.range(target_modality)[0], np.int32)
    if task == "text":
        prefix = np.asarray(condition if condition is not None else [], np.int32)
        if len(prefix) >= target_len:
            raise LayoutError(f"text prompt of {len(prefix)} tokens leaves nothing to generate in {target_len}")
        example = layout_example(vocab, "text", np.concatenate([prefix, placeholder[len(prefix) :]]))
        given = np.arange(len(example["tokens"])) <= len(prefix)  # the task token and the prefix
        example["loss_mask"][given] = 0
        example["cond_mask"][1 : 1 + len(prefix)] = 1
    else:
        if condition is None:
            raise LayoutError(f"task {task!r} needs a condition")
        example = layout_example(vocab, task, placeholder, condition)
    n = len(example["tokens"])
    if n > seq_len:
        raise LayoutError(f"a {task} prompt needs {n} positions but seq_len={seq_len}")
    row = empty_row(vocab, seq_len)
    for key, value in example.items():
        row[key][:n] = value
    row["tokens"][row["loss_mask"] > 0] = vocab.mask_id
    return row


def make_prompt(tokenizers: Tokenizers, task: str, condition: Any, seq_len: int, *, text_len: int | None = None) -> dict[str, np.ndarray]:
    """Sampling input for `task` from a raw condition.

    * t2i / t2s: `condition` is a caption / transcript (str).
    * i2t: a uint8 H x W x 3 image.   * s2t: a float32 16 kHz waveform.
    * text: an optional str prefix (or None); `text_len` positions are generated (default: fill seq_len).
    """
    vocab = tokenizers.vocab
    if task == "text":
        prefix = None if not condition else vocab.to_global(tokenizers.text.encode(condition), Modality.TEXT)
        return make_prompt_ids(vocab, "text", prefix, text_len or seq_len - 1, seq_len)
    if task in ("t2i", "t2s"):
        if not isinstance(condition, str):
            raise LayoutError(f"task {task!r} takes a text condition (str); got {type(condition).__name__}")
        ids = fit_slot(tokenizers.text.encode(condition), tokenizers.text_slot, tokenizers.text.eod_id, keep_end=True)
        cond = vocab.to_global(ids, Modality.TEXT)
    elif task == "i2t":
        cond = vocab.to_global(tokenizers.image.encode(np.asarray(condition)), Modality.IMAGE)
    elif task == "s2t":
        ids = fit_slot(tokenizers.audio.encode(np.asarray(condition, np.float32)), tokenizers.audio_slot, tokenizers.audio.fill_id, keep_end=False)
        cond = vocab.to_global(ids, Modality.AUDIO)
    else:
        raise LayoutError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    return make_prompt_ids(vocab, task, cond, tokenizers.target_length(task), seq_len)


def make_prompts(tokenizers: Tokenizers, task: str, conditions: list[Any], seq_len: int, **kwargs: Any) -> dict[str, np.ndarray]:
    """`make_prompt` for several conditions, stacked into a [len(conditions), seq_len] batch."""
    rows = [make_prompt(tokenizers, task, c, seq_len, **kwargs) for c in conditions]
    return {key: np.stack([r[key] for r in rows]) for key in rows[0]}


def target_ids(row: dict[str, np.ndarray], vocab: UnifiedVocab) -> tuple[np.ndarray, Modality]:
    """Tokenizer-local ids of a row's generated span (positions with loss_mask) and their modality."""
    where = np.asarray(row["loss_mask"]) > 0
    modality = np.asarray(row["modality"])[where]
    if not where.any():
        raise LayoutError("row has no target positions (loss_mask is all 0)")
    m = Modality(int(modality[0]))
    return vocab.to_local(np.asarray(row["tokens"])[where], m), m


def decode_output(tokenizers: Tokenizers, row: dict[str, np.ndarray]) -> Any:
    """The generated span of a sampled row as text (str), an image (uint8) or a waveform (float32)."""
    ids, modality = target_ids(row, tokenizers.vocab)
    if modality == Modality.TEXT:
        return tokenizers.text.decode(ids)
    if modality == Modality.IMAGE:
        return tokenizers.image.decode(ids)
    return tokenizers.audio.decode(ids)
