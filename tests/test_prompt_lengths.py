"""Generated slots are laid out as training lays them out: measured content masked, slot fill given.

Expected lengths come from the stated rule (mdiff.data.prompts docstring), recomputed here from the
synthetic training split with numpy, not from the functions under test.
"""

from __future__ import annotations

import types

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from mdiff.data.corpus import SYNTHETIC_SLOTS, SYNTHETIC_VOCAB, synthetic_corpus
from mdiff.diffusion import sampling as S
from mdiff.eval.generate import prompt_batch
from mdiff.vocab import Modality

V = SYNTHETIC_VOCAB
CORPUS = synthetic_corpus("train")
AUDIO_FILL = V.to_global(np.array([CORPUS.audio_fill]), Modality.AUDIO)[0]
TEXT_EOD = V.to_global(np.array([CORPUS.text_eod]), Modality.TEXT)[0]


def fake_run(fill_targets: bool = False) -> types.SimpleNamespace:
    config = ConfigDict({"data": {"dataset": "synthetic", "fill_targets": fill_targets, "seq_len": 48}})
    return types.SimpleNamespace(config=config, vocab=V, tokenizers=None, corpus_name="synthetic", seq_len=48)


def audio_per_text() -> float:  # the rule: median over training pairs of audio codes per caption token
    return float(np.median([len(a) / len(c) for a, c in (CORPUS.audio[i] for i in range(len(CORPUS.audio)))]))


def slot_span(row: dict, begin: int, end: int) -> slice:
    tokens = list(row["tokens"])
    return slice(tokens.index(begin) + 1, tokens.index(end))


def check_slot(row: dict, span: slice, content: int, fill: int) -> None:
    tokens, loss = row["tokens"][span], row["loss_mask"][span]
    assert (tokens[:content] == V.mask_id).all() and (loss[:content] == 1).all()
    assert (tokens[content:] == fill).all() and (loss[content:] == 0).all()  # fill given, not a target
    assert (row["loss_mask"][: span.start] == 0).all() and (row["loss_mask"][span.stop :] == 0).all()


@pytest.mark.parametrize("caption, has_fill", [("3 14", True), ("2 11 12 13", False)])  # 4 x 3 codes: clipped
def test_t2s_canvas_masks_the_measured_audio_length_then_gives_silence_fill(caption, has_fill):
    row = {k: v[0] for k, v in prompt_batch(fake_run(), "t2s", [caption]).items()}
    n_caption = len(caption.split())
    content = int(np.clip(round(audio_per_text() * n_caption), 1, SYNTHETIC_SLOTS["audio_slot"]))
    span = slot_span(row, V.begin_id(Modality.AUDIO), V.end_id(Modality.AUDIO))
    assert span.stop - span.start == SYNTHETIC_SLOTS["audio_slot"]
    assert (0 < content < SYNTHETIC_SLOTS["audio_slot"]) == has_fill
    check_slot(row, span, content, AUDIO_FILL)


def test_i2t_and_s2t_canvases_mask_the_measured_caption_length_then_give_end_ids():
    slot = SYNTHETIC_SLOTS["text_slot"]
    captions = [CORPUS.image[i][1] for i in range(len(CORPUS.image))]
    i2t_content = int(round(float(np.median([min(len(c), slot - 1) + 1 for c in captions]))))
    row = {k: v[0] for k, v in prompt_batch(fake_run(), "i2t", [CORPUS.image[0][0]]).items()}
    check_slot(row, slot_span(row, V.begin_id(Modality.TEXT), V.end_id(Modality.TEXT)), i2t_content, TEXT_EOD)
    audio = np.arange(5)  # 5 audio codes -> round(5 / ratio) caption tokens plus the end id
    s2t_content = int(np.clip(round(5 / audio_per_text()), 1, slot - 1)) + 1
    row = {k: v[0] for k, v in prompt_batch(fake_run(), "s2t", [audio]).items()}
    check_slot(row, slot_span(row, V.begin_id(Modality.TEXT), V.end_id(Modality.TEXT)), s2t_content, TEXT_EOD)
    assert s2t_content < slot and i2t_content < slot  # both leave fill to give


def test_whole_slot_option_and_fill_target_runs_mask_the_whole_slot():
    for row in (prompt_batch(fake_run(), "t2s", ["3 14"], "whole_slot"), prompt_batch(fake_run(fill_targets=True), "t2s", ["3 14"])):
        row = {k: v[0] for k, v in row.items()}
        span = slot_span(row, V.begin_id(Modality.AUDIO), V.end_id(Modality.AUDIO))
        check_slot(row, span, SYNTHETIC_SLOTS["audio_slot"], AUDIO_FILL)


@pytest.mark.parametrize("method", ["ancestral", "confidence"])
def test_sampler_never_changes_given_positions(method):
    batch = prompt_batch(fake_run(), "t2s", ["3 14", "2 11 12 13", "5"])
    given = batch["loss_mask"] == 0

    def logits_fn(params, tokens, b):  # random logits over the whole vocabulary, fill id included
        return jax.random.normal(jax.random.key(1), (*tokens.shape, V.size))

    lo, hi = V.range(Modality.AUDIO)
    sampler = S.Sampler(logits_fn, lambda t: 1.0 - t, S.SamplerSettings(steps=4, method=method), (lo, hi), V.mask_id)
    out = np.asarray(sampler(None, batch, jax.random.key(0))["tokens"])
    assert (out[given] == batch["tokens"][given]).all()
    generated = out[~given]
    assert ((generated >= lo) & (generated < hi)).all()
