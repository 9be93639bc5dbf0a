"""Random-access, pre-tokenised examples of the three streams, as the pipeline consumes them.

A `Corpus` holds one split: text documents, image-caption pairs and speech-transcript pairs, all as
tokenizer-local ids, plus the constants the layouts need (slot lengths, the text end-of-document id,
the audio fill id). It comes from a built dataset (`mdiff.data.reader`) or from `synthetic_corpus`,
which needs no files and gives tiny, learnable, contract-conforming data for other areas' tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from mdiff.vocab import MODALITIES, UnifiedVocab

STREAMS = MODALITIES  # one stream per modality, in id order


@dataclasses.dataclass
class Corpus:
    """One split of the three streams. Streams support len() and [i]; a missing stream has length 0.

    * ``text[i]``  -> local text ids of document i (without the end-of-document id).
    * ``image[i]`` -> (image ids [image_tokens], caption ids).
    * ``audio[i]`` -> (audio ids, transcript ids).
    """

    vocab: UnifiedVocab
    text_eod: int  # local text id that ends documents and fills text slots
    audio_fill: int  # local audio id that fills audio slots (decodes to silence)
    image_tokens: int
    text_slot: int
    audio_slot: int
    text: Any
    image: Any
    audio: Any
    name: str = ""

    def stream(self, name: str) -> Any:
        return getattr(self, name)

    def example_length(self, name: str) -> int:
        """Positions one example of a stream of this corpus takes (mdiff.data.layout's rule)."""
        from mdiff.data.layout import stream_example_length

        return stream_example_length(name, text_slot=self.text_slot, image_tokens=self.image_tokens, audio_slot=self.audio_slot)


class MappedStream:
    """`fn(source[i])` with the source's length: adapts a record source to a stream."""

    def __init__(self, source: Any, fn: Callable[[Any], Any]):
        self.source = source
        self.fn = fn

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Any:
        return self.fn(self.source[int(i)])


# ---------------------------------------------------------------------------------------------
# Synthetic corpus: deterministic patterns a tiny model can learn, no files needed.
# ---------------------------------------------------------------------------------------------
SYNTHETIC_VOCAB = UnifiedVocab(text_size=256, image_size=64, audio_size=65)
SYNTHETIC_SLOTS = dict(image_tokens=8, text_slot=6, audio_slot=10)


def _h(*xs: int) -> int:
    """splitmix64 of the inputs: a cheap deterministic hash."""
    z = 0x9E3779B97F4A7C15
    for x in xs:
        z = (z ^ (int(x) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        z = (z ^ (z >> 27)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        z ^= z >> 31
    return z


class _SyntheticText:
    def __init__(self, n: int, salt: int):
        self.n, self.salt = n, salt

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        h = _h(self.salt, 1, i)
        length = 8 + h % 120
        start, step = 1 + (h >> 8) % 255, 1 + (h >> 16) % 7
        return ((start + step * np.arange(length)) % 255 + 1).astype(np.int32)


class _SyntheticPairs:
    """Caption = a class word and a few attributes; target tokens = a fixed function of the class."""

    def __init__(self, n: int, salt: int, target_len: Callable[[int], int], codebook: int):
        self.n, self.salt, self.target_len, self.codebook = n, salt, target_len, codebook

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        h = _h(self.salt, 2, i)
        label = h % 10
        caption = np.array([1 + label] + [11 + (h >> (8 * k)) % 20 for k in range(1, 1 + (h >> 4) % 4)], np.int32)
        length = self.target_len(h)
        target = ((label * 6 + np.arange(length) * (1 + label % 3)) % self.codebook).astype(np.int32)
        return target, caption


def synthetic_corpus(split: str = "train") -> Corpus:
    salt = {"train": 0, "validation": 1, "test": 2}.get(split, 3)
    slots = SYNTHETIC_SLOTS
    return Corpus(
        vocab=SYNTHETIC_VOCAB,
        text_eod=0,
        audio_fill=SYNTHETIC_VOCAB.audio_size - 1,
        text=_SyntheticText(512, salt),
        image=_SyntheticPairs(256, salt, lambda h: slots["image_tokens"], SYNTHETIC_VOCAB.image_size),
        audio=_SyntheticPairs(256, salt + 100, lambda h: 4 + h % 7, SYNTHETIC_VOCAB.audio_size - 1),
        name=f"synthetic/{split}",
        **slots,
    )
