"""Sampling inputs from raw conditions, and raw outputs from sampled rows.

`make_prompt` lays out one example exactly as training does (mdiff/data/layout.py), pads it to the
sequence length, and sets every target position to MASK: a sampler fills the positions where
``loss_mask`` is 1. `decode_output` reads the target span of a (sampled) row back to text, an image
or a waveform.

Generated slot lengths. Training gives a caption's or clip's slot fill (end / silence ids after the
content) to the model and only masks the content, so a generated text or audio slot is laid out the
same way: `content_len` masked positions, then the slot's fill ids, given. The content length comes
from the training split (`measure_lengths`, one rule in `generated_content`):

* t2s: audio codes = round(audio codes per caption token x the prompt's caption tokens), the ratio
  being the median over the split's audio-text pairs (speech length grows with the transcript).
* s2t: caption tokens = round(the prompt's audio codes / that ratio), plus the end id.
* i2t: the median caption length of the split's image-text pairs (an image says nothing about length).
* t2i: images have no fill; every image code is generated.

Lengths are clipped to the slot. ``content_len=None`` (`WHOLE_SLOT`) masks the whole slot, fill
included, as before: the layout for runs trained with ``data.fill_targets=True``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from mdiff.data.layout import LayoutError, empty_row, layout_example
from mdiff.data.pipeline import fit_slot, slot_content
from mdiff.data.tokenizers import Tokenizers
from mdiff.vocab import TASKS, Modality, UnifiedVocab


TARGET_LENGTHS = ("measured", "whole_slot")  # generated slot: measured content + given fill, or all masked
WHOLE_SLOT = None  # `content_len` that masks the whole generated slot (fill included)


@dataclasses.dataclass(frozen=True)
class LengthRule:
    """Content lengths of generated slots, measured from a training split by `measure_lengths`."""

    audio_per_text: float  # median over audio-text pairs of audio codes per caption token
    image_caption: int  # median caption content (tokens + end id) of image-text pairs, within the slot


def measure_lengths(corpus: Any, limit: int = 2048) -> LengthRule:
    """The split's length statistics from up to `limit` evenly spaced pairs of each stream."""
    ratios = [len(a) / max(len(c), 1) for a, c in _spread(corpus.audio, limit)]
    captions = [slot_content(len(c), corpus.text_slot, keep_end=True) for _, c in _spread(corpus.image, limit)]
    return LengthRule(
        audio_per_text=float(np.median(ratios)) if ratios else float(corpus.audio_slot) / max(corpus.text_slot - 1, 1),
        image_caption=int(round(float(np.median(captions)))) if captions else int(corpus.text_slot),
    )


def _spread(stream: Any, limit: int) -> list:
    return [stream[int(i)] for i in np.unique(np.linspace(0, len(stream) - 1, min(limit, len(stream))).astype(int))] if len(stream) else []


def generated_content(task: str, rule: LengthRule, condition_content: int, slot: int) -> int | None:
    """Masked content positions of `task`'s generated slot of `slot` ids (None: no fill, all generated).

    `condition_content` is the prompt's real length: caption tokens (no end id) for t2s, audio codes for
    s2t; i2t ignores it. Captions count their end id, as training's targets do.
    """
    if task == "t2s":
        return int(np.clip(round(rule.audio_per_text * condition_content), 1, slot))
    if task == "s2t":
        return int(np.clip(round(condition_content / rule.audio_per_text), 1, slot - 1)) + 1
    if task == "i2t":
        return int(np.clip(rule.image_caption, 2, slot))
    return None


def generated_slot(
    vocab: UnifiedVocab, task: str, rule: LengthRule | None, condition_content: int, target_len: int, *, text_eod: int, audio_fill: int
) -> dict[str, int | None]:
    """`make_prompt_ids`' content_len and (unified) fill_id for `task`; `rule` None: the whole slot masked."""
    content = None if rule is None else generated_content(task, rule, condition_content, target_len)
    if content is None:
        return {"content_len": WHOLE_SLOT, "fill_id": None}
    modality = TASKS[task][2]
    fill = text_eod if modality == Modality.TEXT else audio_fill
    return {"content_len": content, "fill_id": int(vocab.to_global(np.array([fill], np.int32), modality)[0])}


def make_prompt_ids(
    vocab: UnifiedVocab,
    task: str,
    condition: np.ndarray | None,
    target_len: int,
    seq_len: int,
    *,
    content_len: int | None = WHOLE_SLOT,
    fill_id: int | None = None,
) -> dict[str, np.ndarray]:
    """A [seq_len] row for `task` with `condition` (unified ids, already slot-sized) and MASKed targets.

    For task "text", `condition` is an optional prompt prefix (given, never generated) and the rest of
    `target_len` positions are generated. `content_len` < `target_len`: only the first `content_len`
    target positions are masked; the rest hold `fill_id` (unified), given, as in training.
    """
    if task not in TASKS:
        raise LayoutError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    _, _, target_modality = TASKS[task]
    placeholder = np.full(target_len, vocab.range(target_modality)[0], np.int32)
    if content_len is not None and content_len < target_len:
        if task == "text" or fill_id is None or not 0 < content_len:
            raise LayoutError(f"content_len={content_len} needs a conditional task and a fill id (task {task!r})")
        placeholder[content_len:] = fill_id
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
        example = layout_example(vocab, task, placeholder, condition, target_content=content_len)
    n = len(example["tokens"])
    if n > seq_len:
        raise LayoutError(f"a {task} prompt needs {n} positions but seq_len={seq_len}")
    row = empty_row(vocab, seq_len)
    for key, value in example.items():
        row[key][:n] = value
    row["tokens"][row["loss_mask"] > 0] = vocab.mask_id
    return row


def make_prompt(
    tokenizers: Tokenizers, task: str, condition: Any, seq_len: int, *, text_len: int | None = None, lengths: LengthRule | None = None
) -> dict[str, np.ndarray]:
    """Sampling input for `task` from a raw condition.

    * t2i / t2s: `condition` is a caption / transcript (str).
    * i2t: a uint8 H x W x 3 image.   * s2t: a float32 16 kHz waveform.
    * text: an optional str prefix (or None); `text_len` positions are generated (default: fill seq_len).

    `lengths` (from `measure_lengths` on the training split) sets the generated slot's content length,
    its fill given; None masks the whole slot.
    """
    vocab = tokenizers.vocab
    if task == "text":
        prefix = None if not condition else vocab.to_global(tokenizers.text.encode(condition), Modality.TEXT)
        return make_prompt_ids(vocab, "text", prefix, text_len or seq_len - 1, seq_len)
    if task in ("t2i", "t2s"):
        if not isinstance(condition, str):
            raise LayoutError(f"task {task!r} takes a text condition (str); got {type(condition).__name__}")
        raw = tokenizers.text.encode(condition)
        ids = fit_slot(raw, tokenizers.text_slot, tokenizers.text.eod_id, keep_end=True)
        cond, cond_content = vocab.to_global(ids, Modality.TEXT), min(len(raw), tokenizers.text_slot - 1)
    elif task == "i2t":
        cond = vocab.to_global(tokenizers.image.encode(np.asarray(condition)), Modality.IMAGE)
        cond_content = len(cond)
    elif task == "s2t":
        raw = tokenizers.audio.encode(np.asarray(condition, np.float32))
        ids = fit_slot(raw, tokenizers.audio_slot, tokenizers.audio.fill_id, keep_end=False)
        cond, cond_content = vocab.to_global(ids, Modality.AUDIO), min(len(raw), tokenizers.audio_slot)
    else:
        raise LayoutError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    target_len = tokenizers.target_length(task)
    slot = generated_slot(vocab, task, lengths, cond_content, target_len, text_eod=tokenizers.text.eod_id, audio_fill=tokenizers.audio.fill_id)
    return make_prompt_ids(vocab, task, cond, target_len, seq_len, **slot)


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
