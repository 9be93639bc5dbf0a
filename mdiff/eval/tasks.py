"""Tasks for sampling: which tasks a run was trained for, prompt batches, and decoding of the outputs.

Prompts are laid out exactly as the training pipeline lays out examples (mdiff/data/layout.py,
mdiff/data/pipeline.py): a text condition fills the text slot (cut or padded with the text
tokenizer's end-of-document id, keeping at least one at the end), an audio condition fills the audio
slot with the audio fill id, an image condition is the image's codes. Targets have the task's fixed
length (image tokens per image; the text or audio slot); free text fills the rest of the sequence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from mdiff.data.layout import BATCH_KEYS, LayoutError, example_length, layout_example, pack
from mdiff.vocab import TASKS, Modality, UnifiedVocab
from mdiff.diffusion.sampling import SamplingError

CONDITIONAL = ("t2i", "i2t", "t2s", "s2t")


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


@dataclasses.dataclass(frozen=True)
class TaskShape:
    """Slot lengths and filler ids, from the dataset's tokenizers (or given directly in tests)."""

    vocab: UnifiedVocab
    seq_len: int
    text_slot: int
    audio_slot: int
    image_tokens: int
    text_eod: int  # local text id that ends / fills text slots
    audio_fill: int  # local audio id that fills audio slots

    @classmethod
    def from_tokenizers(cls, tokenizers: Any, seq_len: int) -> "TaskShape":
        return cls(
            tokenizers.vocab, int(seq_len), int(tokenizers.text_slot), int(tokenizers.audio_slot),
            int(tokenizers.image_tokens), int(tokenizers.text.eod_id), int(tokenizers.audio.fill_id),
        )

    def target_length(self, task: str) -> int:
        if task == "text":
            return self.seq_len - 1
        return {"t2i": self.image_tokens, "i2t": self.text_slot, "t2s": self.audio_slot, "s2t": self.text_slot}[task]

    def target_modality(self, task: str) -> Modality:
        return TASKS[task][2]

    def vocab_range(self, task: str) -> tuple[int, int]:
        return self.vocab.range(self.target_modality(task))

    def fit_condition(self, task: str, local_ids: np.ndarray) -> np.ndarray:
        """Tokenizer-local condition ids -> unified ids filling the condition's slot (errors if too long)."""
        modality = TASKS[task][1]
        ids = np.asarray(local_ids, np.int32).reshape(-1)
        if modality == Modality.TEXT:
            if len(ids) > self.text_slot - 1:
                raise LayoutError(
                    f"prompt has {len(ids)} text tokens; the text slot holds at most {self.text_slot - 1} (data.slots.text={self.text_slot})"
                )
            out = np.full(self.text_slot, self.text_eod, np.int32)
        elif modality == Modality.AUDIO:
            if len(ids) > self.audio_slot:
                raise LayoutError(f"audio prompt has {len(ids)} tokens; the audio slot holds {self.audio_slot} (data.slots.audio)")
            out = np.full(self.audio_slot, self.audio_fill, np.int32)
        else:
            if len(ids) != self.image_tokens:
                raise LayoutError(f"image prompt has {len(ids)} tokens; images have {self.image_tokens}")
            out = np.zeros(self.image_tokens, np.int32)
        out[: len(ids)] = ids
        return self.vocab.to_global(out, modality)


def prompt_batch(shape: TaskShape, task: str, conditions: Sequence[np.ndarray | None]) -> dict[str, np.ndarray]:
    """One row per condition (tokenizer-local ids; None for unconditional text), padded to seq_len.

    For "text", a condition is an optional prefix of local text ids kept fixed at the start. Conditional
    targets are masked whole (the "whole_slot" layout of mdiff.data.prompts); `mdiff sample` / `eval` lay
    prompts out with mdiff.eval.generate.prompt_batch (measured content masked, fill given).
    """
    if task not in TASKS:
        raise SamplingError(f"task {task!r}: unknown; tasks: {', '.join(TASKS)}")
    if not len(conditions):
        raise SamplingError("no prompts given")
    target_modality = shape.target_modality(task)
    lo = shape.vocab.range(target_modality)[0]
    rows = []
    for cond in conditions:
        if task == "text":
            prefix = np.asarray([] if cond is None else cond, np.int32).reshape(-1)
            if len(prefix) >= shape.seq_len - 1:
                raise LayoutError(f"text prompt has {len(prefix)} tokens; data.seq_len={shape.seq_len} leaves room for {shape.seq_len - 2}")
            example = layout_example(shape.vocab, "text", np.full(shape.target_length("text"), lo, np.int32))
            example["tokens"][1 : 1 + len(prefix)] = shape.vocab.to_global(prefix, Modality.TEXT)
            example["loss_mask"][1 : 1 + len(prefix)] = 0  # the prefix is given, not generated
        else:
            if cond is None:
                raise SamplingError(f"task {task!r} needs a prompt")
            condition = shape.fit_condition(task, cond)
            target_len = shape.target_length(task)
            need = example_length(task, len(condition), target_len)
            if need > shape.seq_len:
                raise LayoutError(f"task {task!r} needs {need} positions but data.seq_len={shape.seq_len}")
            example = layout_example(shape.vocab, task, np.full(target_len, lo, np.int32), condition)
        rows.append(pack(shape.vocab, [example], shape.seq_len))
    return {k: np.stack([r[k] for r in rows]) for k in BATCH_KEYS}


def generated_ids(batch: dict[str, np.ndarray], tokens: np.ndarray, shape: TaskShape, task: str) -> list[np.ndarray]:
    """Tokenizer-local ids of each row's generated span (text prompts' prefixes included for "text")."""
    modality = shape.target_modality(task)
    out = []
    for row in range(len(tokens)):
        span = batch["modality"][row] == modality
        if task != "text":
            span &= batch["cond_mask"][row] == 0
        out.append(shape.vocab.to_local(np.asarray(tokens[row])[span], modality))
    return out
