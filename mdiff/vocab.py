"""The unified vocabulary: disjoint id ranges for specials, text, image codes and audio codes.

Layout (ids increase left to right)::

    [ specials | text (text_size) | image codes (image_size) | audio codes (audio_size) ]

Specials come first so that their ids do not move when a tokenizer is retrained with another size.
One object answers every question the loss, the model head and the samplers ask about ids. It is the
contract between the data pipeline, the model, the loss and the samplers, so it lives beside them, in no
package of its own: `mdiff.model` and `mdiff.diffusion` read it without importing the data package.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import numpy as np

from mdiff.errors import InputError


class Modality(enum.IntEnum):
    """Modality of a position. `NONE` marks specials and padding."""

    NONE = 0
    TEXT = 1
    IMAGE = 2
    AUDIO = 3


# The one list of modalities: everything else (config keys, per-modality metrics, the model's modality
# embedding, results columns) is derived from the enum above.
CONTENT_MODALITIES = tuple(m for m in Modality if m != Modality.NONE)  # (TEXT, IMAGE, AUDIO)
MODALITY_NAMES = {m: m.name.lower() for m in CONTENT_MODALITIES}  # {TEXT: "text", ...}
MODALITIES = tuple(MODALITY_NAMES.values())  # ("text", "image", "audio"): config keys, metric suffixes
MODALITY_BY_NAME = {name: m for m, name in MODALITY_NAMES.items()}
NUM_MODALITIES = len(Modality)  # rows of the model's modality embedding (NONE included)

# loss_mask values (the batch contract, mdiff.data.layout): 0 = not a target, TARGET = real content,
# FILL_TARGET = slot fill counted as a target (only under data.fill_targets, so its share can be logged).
TARGET = 1
FILL_TARGET = 2

# Order fixes the ids of the specials; append only.
SPECIAL_TOKENS = (
    "PAD",
    "MASK",
    "BOS",
    "EOS",
    "BEGIN_TEXT",
    "END_TEXT",
    "BEGIN_IMAGE",
    "END_IMAGE",
    "BEGIN_AUDIO",
    "END_AUDIO",
    "TASK_TEXT",
    "TASK_T2I",
    "TASK_I2T",
    "TASK_T2S",
    "TASK_S2T",
)

# Task name -> (task token, condition modality or None, target modality).
TASKS: dict[str, tuple[str, Modality | None, Modality]] = {
    "text": ("TASK_TEXT", None, Modality.TEXT),
    "t2i": ("TASK_T2I", Modality.TEXT, Modality.IMAGE),
    "i2t": ("TASK_I2T", Modality.IMAGE, Modality.TEXT),
    "t2s": ("TASK_T2S", Modality.TEXT, Modality.AUDIO),
    "s2t": ("TASK_S2T", Modality.AUDIO, Modality.TEXT),
}


class VocabError(InputError):
    """An id, size or name that the vocabulary cannot represent."""


@dataclasses.dataclass(frozen=True)
class UnifiedVocab:
    """Disjoint id ranges for the three modalities plus the specials."""

    text_size: int
    image_size: int
    audio_size: int

    def __post_init__(self) -> None:
        for name in ("text_size", "image_size", "audio_size"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise VocabError(f"vocab {name}={value!r}: must be a positive integer")

    # --- ids of specials -------------------------------------------------------------------
    @property
    def num_specials(self) -> int:
        return len(SPECIAL_TOKENS)

    def special(self, name: str) -> int:
        try:
            return SPECIAL_TOKENS.index(name)
        except ValueError:
            raise VocabError(f"unknown special token {name!r}; known: {', '.join(SPECIAL_TOKENS)}") from None

    @property
    def pad_id(self) -> int:
        return self.special("PAD")

    @property
    def mask_id(self) -> int:
        return self.special("MASK")

    def task_id(self, task: str) -> int:
        if task not in TASKS:
            raise VocabError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        return self.special(TASKS[task][0])

    def begin_id(self, modality: Modality) -> int:
        return self.special(f"BEGIN_{MODALITY_NAMES[Modality(modality)].upper()}")

    def end_id(self, modality: Modality) -> int:
        return self.special(f"END_{MODALITY_NAMES[Modality(modality)].upper()}")

    # --- ranges ------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.num_specials + self.text_size + self.image_size + self.audio_size

    def range(self, modality: Modality | str) -> tuple[int, int]:
        """Half-open id range [lo, hi) of a modality."""
        if isinstance(modality, str):
            if modality not in MODALITY_BY_NAME:
                raise VocabError(f"unknown modality {modality!r}; known: {', '.join(MODALITY_BY_NAME)}")
            modality = MODALITY_BY_NAME[modality]
        modality = Modality(modality)
        text_lo = self.num_specials
        image_lo = text_lo + self.text_size
        audio_lo = image_lo + self.image_size
        bounds = {
            Modality.NONE: (0, text_lo),
            Modality.TEXT: (text_lo, image_lo),
            Modality.IMAGE: (image_lo, audio_lo),
            Modality.AUDIO: (audio_lo, self.size),
        }
        return bounds[modality]

    def offset(self, modality: Modality | str) -> int:
        return self.range(modality)[0]

    def modality_of(self, ids: Any) -> Any:
        """Modality of each id (works on numpy and jax arrays alike)."""
        xp = _array_module(ids)
        text_lo, image_lo = self.range(Modality.TEXT)
        audio_lo = self.range(Modality.AUDIO)[0]
        return (
            (ids >= text_lo).astype(xp.int32)
            + (ids >= image_lo).astype(xp.int32)
            + (ids >= audio_lo).astype(xp.int32)
        )

    def range_table(self) -> np.ndarray:
        """[4, 2] table of (lo, hi) per modality id, for gathers inside jitted code."""
        return np.array([self.range(m) for m in Modality], dtype=np.int32)

    # --- conversions -------------------------------------------------------------------------
    def to_global(self, local_ids: Any, modality: Modality | str) -> Any:
        """Tokenizer-local ids (0..n) -> unified ids, with a range check."""
        lo, hi = self.range(modality)
        local = np.asarray(local_ids)
        if local.size and (local.min() < 0 or local.max() >= hi - lo):
            raise VocabError(
                f"{_name(modality)} ids must lie in [0, {hi - lo}); got min {local.min()}, max {local.max()}"
            )
        return local + lo

    def to_local(self, global_ids: Any, modality: Modality | str) -> Any:
        """Unified ids -> tokenizer-local ids, with a range check."""
        lo, hi = self.range(modality)
        ids = np.asarray(global_ids)
        if ids.size and (ids.min() < lo or ids.max() >= hi):
            raise VocabError(
                f"{_name(modality)} ids must lie in [{lo}, {hi}); got min {ids.min()}, max {ids.max()}"
            )
        return ids - lo

    def check_ids(self, ids: Any, what: str = "tokens") -> None:
        """Raise a clear error for ids outside [0, size) (host-side, before compiling)."""
        arr = np.asarray(ids)
        if arr.size == 0:
            return
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= self.size:
            bad = np.argwhere((arr < 0) | (arr >= self.size))[0].tolist()
            raise VocabError(
                f"{what}: id {int(arr[tuple(bad)])} at index {bad} is outside the vocabulary [0, {self.size})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "text_size": int(self.text_size),
            "image_size": int(self.image_size),
            "audio_size": int(self.audio_size),
            "specials": list(SPECIAL_TOKENS),
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "UnifiedVocab":
        specials = d.get("specials")
        if specials is not None and tuple(specials) != SPECIAL_TOKENS[: len(specials)]:
            raise VocabError("vocabulary file lists specials in another order than this version of mdiff")
        return cls(int(d["text_size"]), int(d["image_size"]), int(d["audio_size"]))


def _name(modality: Modality | str) -> str:
    return modality if isinstance(modality, str) else MODALITY_NAMES.get(Modality(modality), "special")


def _array_module(x: Any) -> Any:
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np
    import jax.numpy as jnp

    return jnp
