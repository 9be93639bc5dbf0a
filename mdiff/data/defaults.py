"""Defaults and checks for `config.data` (owned by the data pipeline)."""

from __future__ import annotations

from typing import Any

import ml_collections

from mdiff.config import ConfigDict, fail, register_validator
from mdiff.vocab import MODALITIES


def data_defaults() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        dict(
            # "embedded" (the offline tri-modal set), "synthetic" (no corpus; tests), or the path of a
            # directory laid out like a built dataset (TFDS ArrayRecord builders plus tokenizers/).
            dataset="embedded",
            data_dir="",  # "" -> $MDIFF_DATA_DIR or ~/.cache/mdiff/data
            scale="full",  # which build `mdiff data build` / the trainer make: full | tiny
            seq_len=128,
            # Token fractions of each stream (text, image-text, audio-text) in the training stream,
            # counted over every non-padding position of its examples; must sum to 1.
            mix=dict(text=0.5, image=0.25, audio=0.25),
            # Within the image-text (audio-text) stream: fraction of examples laid out as i2t (s2t);
            # the rest are t2i (t2s).
            i2t_fraction=0.5,
            s2t_fraction=0.5,
            # Shortest text chunk started in a row (a chunk ending a row may be shorter).
            min_text_chunk=32,
            num_workers=0,  # grain worker processes (must divide the per-host batch); 0 = in-process
            # Tokenizers (fixed at build time; the pipeline checks the built set agrees).
            tokenizer=dict(
                text_vocab=4096,  # BPE vocabulary incl. its end-of-document token
                image_size=16,  # images are stored and tokenised at image_size x image_size RGB
                image_tokens=16,  # tokens per image (a square number: patches per side squared)
                image_codebook=512,
                audio_hop=512,  # samples per audio token at 16 kHz (512 -> 31.25 tokens/s)
                audio_mels=64,
                audio_codebook=512,
                griffin_lim_iters=32,
            ),
            # Fixed target/condition spans: text slot (captions, transcripts) and audio slot, in tokens.
            slots=dict(text=24, audio=80),
            # Slot fill (text after a caption's end id, audio after a clip) is given, not a target;
            # True counts it as targets (logged as fill_share/<modality>). See mdiff.data.layout.
            fill_targets=False,
            # espeak-ng voices used to synthesise speech (comma separated), speeds (wpm) and pitches.
            voices="en-us,en,en-us+f3,en-gb-scotland,en-us+m7,en-029",  # "en" is British English
            speeds="140,175,210",
            pitches="35,50,70",
            speech_variants=2,  # voicings per training text (validation/test texts are spoken once)
        )
    )


def example_lengths(data: ConfigDict) -> dict[str, int]:
    """Positions one example of each stream takes with this config's slots (mdiff.data.layout's rule)."""
    from mdiff.data.layout import stream_example_length

    slots = dict(text_slot=data.slots.text, image_tokens=data.tokenizer.image_tokens, audio_slot=data.slots.audio)
    return {name: stream_example_length(name, **slots) for name in MODALITIES}


def check_mix(mix: Any) -> dict[str, float]:
    """The one data.mix rule: known streams, fractions >= 0 summing to 1. Returns every stream's fraction."""
    mix = dict(mix)
    unknown = sorted(set(mix) - set(MODALITIES))
    if unknown:
        fail("data.mix", mix, f"unknown stream(s) {unknown}; streams are {', '.join(MODALITIES)}")
    for name, value in mix.items():
        if value < 0:
            fail(f"data.mix.{name}", value, "mixing fractions must be >= 0")
    total = sum(mix.values())
    if abs(total - 1.0) > 1e-6:
        fail("data.mix", mix, f"fractions must sum to 1 (they sum to {total:.6g})")
    return {name: float(mix.get(name, 0.0)) for name in MODALITIES}


def check_seq_len_fits(seq_len: int, lengths: dict[str, int], mix: dict[str, float], where: str) -> None:
    """Every stream with a positive fraction fits one example into data.seq_len (`where` names the source)."""
    for name, weight in mix.items():
        if weight > 0 and lengths[name] > seq_len:
            fail(
                "data.seq_len",
                seq_len,
                f"too short for a {name} example {where} ({lengths[name]} positions); use >= {lengths[name]} or set data.mix.{name}=0",
            )


@register_validator("data")
def validate_data(config: ConfigDict) -> None:
    data = config.data
    if data.seq_len < 8:
        fail("data.seq_len", data.seq_len, "must be at least 8")
    mix = check_mix(data.mix)
    for key in ("i2t_fraction", "s2t_fraction"):
        if not 0.0 <= data[key] <= 1.0:
            fail(f"data.{key}", data[key], "must lie in [0, 1]")
    if data.min_text_chunk < 1:
        fail("data.min_text_chunk", data.min_text_chunk, "must be >= 1")
    if data.speech_variants < 1:
        fail("data.speech_variants", data.speech_variants, "must be >= 1")
    if data.num_workers < 0:
        fail("data.num_workers", data.num_workers, "must be >= 0")
    if data.scale not in ("full", "tiny"):
        fail("data.scale", data.scale, "allowed: full, tiny")
    tok = data.tokenizer
    side = int(round(tok.image_tokens**0.5))
    if side * side != tok.image_tokens or tok.image_size % side:
        fail(
            "data.tokenizer.image_tokens",
            tok.image_tokens,
            f"must be a square whose root divides data.tokenizer.image_size={tok.image_size}",
        )
    for key in ("text_vocab", "image_codebook", "audio_codebook", "audio_hop", "audio_mels"):
        if tok[key] < 2:
            fail(f"data.tokenizer.{key}", tok[key], "must be >= 2")
    for key in ("text", "audio"):
        if data.slots[key] < 1:
            fail(f"data.slots.{key}", data.slots[key], "must be >= 1")
    if data.dataset != "synthetic":
        check_seq_len_fits(data.seq_len, example_lengths(data), mix, f"with data.slots={dict(data.slots)}")
