"""How examples are laid out in the token stream: the batch contract every part of mdiff shares.

A batch is a dict of int32 arrays, each [batch, seq_len]:

* ``tokens``      clean ids in the unified vocabulary (PAD where nothing is).
* ``modality``    `Modality` of each position (NONE for specials and padding). Drives the model's
                  modality embedding, the per-modality losses and the head's logit restriction.
* ``loss_mask``   > 0 where the position is a *target*: the forward process may mask it and the
                  ELBO counts it. 1 = real content (`mdiff.vocab.TARGET`); 2 = slot fill counted as a target
                  only under the off-by-default `data.fill_targets` option (`FILL_TARGET`), so its
                  share can be logged. Conditions, specials, padding and (by default) slot fill are 0.
* ``cond_mask``   1 at the condition's content (given, never masked; dropped for classifier-free
                  guidance by replacing it with MASK).
* ``segment_ids`` 1, 2, ... per packed example or document; 0 for padding. Attention never crosses
                  segments.
* ``positions``   position within the segment (RoPE reads this, so packing does not leak).

Layouts, one segment each::

    text: [TASK_TEXT, t t t ... t]                      (text tokens are all targets; documents are
                                                          separated by the text tokenizer's own
                                                          end-of-document token, itself a target)
    t2i:  [TASK_T2I, BEGIN_TEXT, c ... c, END_TEXT, BEGIN_IMAGE, x ... x, END_IMAGE]
    i2t:  [TASK_I2T, BEGIN_IMAGE, c ... c, END_IMAGE, BEGIN_TEXT, x ... x, END_TEXT]
    t2s / s2t likewise with BEGIN_AUDIO/END_AUDIO.

Target spans have a fixed length per task (image tokens per image; a text or audio slot filled up
by the tokenizer's own end/silence token). Only real content is a target: a caption's tokens plus the
one end-of-document id that ends it (as in the text stream), an audio clip's codes. The fill after it
is given (visible, never masked, loss_mask 0), so the loss is nats per real token and the model is
told the content's length, like a condition. `data.fill_targets=True` restores fill as targets
(loss_mask 2; the share is logged as `fill_share/<modality>`). Sampling prompts follow the same
convention: a measured content length masked, the fill after it given (mdiff.data.prompts).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mdiff.errors import InputError
from mdiff.vocab import FILL_TARGET, TASKS, Modality, UnifiedVocab, VocabError

BATCH_KEYS = ("tokens", "modality", "loss_mask", "cond_mask", "segment_ids", "positions")


class LayoutError(InputError):
    """An example that does not fit the sequence or breaks the batch contract."""


def example_length(task: str, cond_len: int, target_len: int) -> int:
    """Positions one example of `task` takes: the task token, then the condition and target each framed by
    BEGIN/END (text: the task token and the target alone)."""
    if task == "text":
        return 1 + target_len
    return 1 + (cond_len + 2) + (target_len + 2)


def stream_example_length(stream: str, *, text_slot: int, image_tokens: int, audio_slot: int) -> int:
    """Positions one example of a stream takes (every task of a stream has the same length; the text
    stream's shortest segment is the task token plus one token)."""
    if stream == "text":
        return example_length("text", 0, 1)
    return example_length("t2i", text_slot, image_tokens if stream == "image" else audio_slot)


def layout_example(
    vocab: UnifiedVocab,
    task: str,
    target: np.ndarray,
    condition: np.ndarray | None = None,
    *,
    segment_id: int = 1,
    target_content: int | None = None,
    fill_targets: bool = False,
) -> dict[str, np.ndarray]:
    """One example as per-position arrays (unpadded). `target`/`condition` hold unified ids.

    `target_content` < len(target) marks target[target_content:] as slot fill: loss_mask 0 (given),
    or FILL_TARGET with `fill_targets`. None: the whole target is real content.
    """
    if task not in TASKS:
        raise LayoutError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    _, cond_modality, target_modality = TASKS[task]
    target = np.asarray(target, np.int32)
    _check_range(vocab, target, target_modality, f"{task} target")
    pieces: list[tuple[np.ndarray, int, int, int]] = [(np.array([vocab.task_id(task)]), Modality.NONE, 0, 0)]
    if cond_modality is not None:
        if condition is None:
            raise LayoutError(f"task {task!r} needs a {cond_modality.name.lower()} condition")
        condition = np.asarray(condition, np.int32)
        _check_range(vocab, condition, cond_modality, f"{task} condition")
        pieces += _wrapped(vocab, condition, cond_modality, loss=0, cond=1)
        pieces += _wrapped(vocab, target, target_modality, loss=1, cond=0)
    else:
        if condition is not None and len(condition):
            raise LayoutError(f"task {task!r} takes no condition")
        pieces.append((target, target_modality, 1, 0))
    tokens = np.concatenate([p[0] for p in pieces]).astype(np.int32)
    n = len(tokens)
    loss_mask = np.concatenate([np.full(len(p[0]), p[2], np.int32) for p in pieces])
    if target_content is not None and target_content < len(target):
        end = n - (1 if cond_modality is not None else 0)  # the target ends before its END marker
        loss_mask[end - (len(target) - target_content) : end] = FILL_TARGET if fill_targets else 0
    return {
        "tokens": tokens,
        "modality": np.concatenate([np.full(len(p[0]), p[1], np.int32) for p in pieces]),
        "loss_mask": loss_mask,
        "cond_mask": np.concatenate([np.full(len(p[0]), p[3], np.int32) for p in pieces]),
        "segment_ids": np.full(n, segment_id, np.int32),
        "positions": np.arange(n, dtype=np.int32),
    }


def _wrapped(vocab: UnifiedVocab, ids: np.ndarray, modality: Modality, *, loss: int, cond: int) -> list:
    return [
        (np.array([vocab.begin_id(modality)]), Modality.NONE, 0, 0),
        (ids, modality, loss, cond),
        (np.array([vocab.end_id(modality)]), Modality.NONE, 0, 0),
    ]


def _check_range(vocab: UnifiedVocab, ids: np.ndarray, modality: Modality, what: str) -> None:
    lo, hi = vocab.range(modality)
    if ids.size and (ids.min() < lo or ids.max() >= hi):
        raise VocabError(f"{what}: ids must lie in the {modality.name.lower()} range [{lo}, {hi}); got [{ids.min()}, {ids.max()}]")


def pack(vocab: UnifiedVocab, examples: Sequence[dict[str, np.ndarray]], seq_len: int) -> dict[str, np.ndarray]:
    """Concatenate laid-out examples into one row of `seq_len`, renumbering segments and padding."""
    total = sum(len(e["tokens"]) for e in examples)
    if total > seq_len:
        raise LayoutError(f"examples need {total} positions but data.seq_len={seq_len}")
    row = empty_row(vocab, seq_len)
    start = 0
    for seg, example in enumerate(examples, start=1):
        n = len(example["tokens"])
        for key in BATCH_KEYS:
            row[key][start : start + n] = example[key]
        row["segment_ids"][start : start + n] = seg
        start += n
    return row


def empty_row(vocab: UnifiedVocab, seq_len: int) -> dict[str, np.ndarray]:
    row = {key: np.zeros(seq_len, np.int32) for key in BATCH_KEYS}
    row["tokens"][:] = vocab.pad_id
    return row


def check_batch(batch: dict[str, np.ndarray], vocab: UnifiedVocab, seq_len: int | None = None) -> None:
    """Host-side check of the batch contract; raises a clear error before anything compiles."""
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise LayoutError(f"batch lacks keys {missing}; a batch has {list(BATCH_KEYS)}")
    shape = np.shape(batch["tokens"])
    if len(shape) != 2:
        raise LayoutError(f"batch['tokens'] must be [batch, seq_len]; got shape {shape}")
    for key in BATCH_KEYS:
        if np.shape(batch[key]) != shape:
            raise LayoutError(f"batch[{key!r}] has shape {np.shape(batch[key])}, tokens has {shape}")
    if seq_len is not None and shape[1] > seq_len:
        raise LayoutError(f"sequence length {shape[1]} exceeds the model's maximum {seq_len}")
    tokens = np.asarray(batch["tokens"])
    vocab.check_ids(tokens)
    targets = np.asarray(batch["loss_mask"]) > 0
    if np.any(targets & (tokens == vocab.mask_id)):
        raise LayoutError("batch has MASK ids at target positions; targets must hold clean tokens")
    modality = np.asarray(batch["modality"])
    content = modality > 0
    if np.any(vocab.modality_of(tokens)[content] != modality[content]):
        raise LayoutError("batch['modality'] disagrees with the vocabulary ranges of batch['tokens']")
