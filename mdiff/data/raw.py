"""Raw (untokenised) held-out data for evaluators, read from a built dataset directory.

* `documents(data_dir, split)`: text documents (str).
* `captioned_images(data_dir, split)`: uint8 images with caption, label ("grinning face", "seven")
  and source ("emoji" / "digits").
* `speech_items(data_dir, split)`: transcripts with the voice, speed and pitch they were spoken with;
  `speech_wav(item)` re-synthesises the exact waveform (espeak-ng is deterministic).
* `real_speech()`: the real pocketsphinx-testdata recordings with transcripts (16 kHz float32).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mdiff.data import reader, sources


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _all(data_dir: str, stream: str, split: str, limit: int | None) -> list[dict[str, Any]]:
    source = reader.records(data_dir, stream, split)
    n = len(source) if limit is None else min(limit, len(source))
    return [source[i] for i in range(n)]


def documents(data_dir: str, split: str = "test", limit: int | None = None) -> list[str]:
    return [_text(r["text"]) for r in _all(data_dir, "text", split, limit)]


def captioned_images(data_dir: str, split: str = "test", limit: int | None = None) -> list[dict[str, Any]]:
    return [
        dict(
            image=np.asarray(r["image"], np.uint8),
            caption=_text(r["caption"]),
            label=_text(r["label"]),
            source=_text(r["source"]),
            key=_text(r["key"]),
        )
        for r in _all(data_dir, "image", split, limit)
    ]


def speech_items(data_dir: str, split: str = "test", limit: int | None = None) -> list[dict[str, Any]]:
    """Synthetic speech items of a split ("real" gives the pocketsphinx-testdata clips' records)."""
    return [
        dict(
            transcript=_text(r["transcript"]),
            voice=_text(r["voice"]),
            speed=int(r["speed"]),
            pitch=int(r["pitch"]),
            source=_text(r["source"]),
            key=_text(r["key"]),
            seconds=float(r["seconds"]),
        )
        for r in _all(data_dir, "audio", split, limit)
    ]


def speech_wav(item: dict[str, Any]) -> np.ndarray:
    """The waveform of a synthetic speech item, re-synthesised (float32, 16 kHz)."""
    if item["source"] == "real":
        clips = {c.key: c for c in sources.real_speech_clips()}
        return clips[item["key"]].wav
    return sources.synthesize(item["transcript"], item["voice"], item["speed"], item["pitch"])


def real_speech() -> list[dict[str, Any]]:
    return [dict(wav=c.wav, transcript=c.transcript, key=c.key) for c in sources.real_speech_clips()]
