"""Reconstruction quality of the tokenizers on held-out items.

* text: fraction of held-out documents and captions whose decode(encode(x)) == x (must be 1.0).
* image: PSNR (dB) of decode(encode(image)) on held-out images, overall and per source.
* audio: word error rate of pocketsphinx (offline, PyPI `pocketsphinx`) on held-out speech, for the
  original espeak-ng audio, for decode(encode(audio)), for the decoder alone (log-mel -> Griffin-Lim,
  no quantisation), and a control with shuffled codes (near 1 if the measure means anything). The
  recogniser uses a small trigram LM built from the evaluated transcripts (a closed-vocabulary test:
  both audios get the same LM), since the general LM does poorly on synthetic voices.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from typing import Any

import numpy as np

from mdiff.data import raw
from mdiff.data.tokenizers import Tokenizers, load_tokenizers, psnr


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(edit distance in words, reference length)."""
    ref, hyp = reference.split(), hypothesis.split()
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1], len(ref)


class Recogniser:
    """pocketsphinx with a closed-vocabulary trigram LM over `texts` and a dictionary cut to its words.

    (Cutting CMUdict to the LM's words makes start-up take milliseconds instead of half a minute.)
    """

    def __init__(self, texts: list[str]):
        from pocketsphinx import Decoder, get_model_path
        from pocketsphinx.lm import ArpaBoLM

        texts = [" ".join(t.lower().split()) for t in texts]
        words = {w for t in texts for w in t.split()}
        with open(os.path.join(get_model_path("en-us"), "cmudict-en-us.dict")) as f:
            entries = [line for line in f if re.sub(r"\(\d+\)$", "", line.split(" ", 1)[0]) in words]
        lm = ArpaBoLM(text="\n".join(texts) + "\n", case="lower", add_start=True)
        lm.compute()
        with tempfile.TemporaryDirectory() as folder:
            lm.write_file(os.path.join(folder, "closed.arpa"))
            with open(os.path.join(folder, "closed.dict"), "w") as f:
                f.writelines(entries)
            self.decoder = Decoder(
                samprate=16000, lm=os.path.join(folder, "closed.arpa"), dict=os.path.join(folder, "closed.dict"), loglevel="FATAL"
            )

    def __call__(self, wav: np.ndarray) -> str:
        pcm = (np.clip(np.asarray(wav, np.float32), -1, 1) * 32767).astype(np.int16)
        self.decoder.start_utt()
        self.decoder.process_raw(pcm.tobytes(), full_utt=True)
        self.decoder.end_utt()
        hyp = self.decoder.hyp()
        return hyp.hypstr if hyp else ""


def wer(recognise: Recogniser, pairs: list[tuple[np.ndarray, str]]) -> float:
    errors = words = 0
    for wav, text in pairs:
        e, n = word_errors(text.lower(), recognise(wav))
        errors, words = errors + e, words + n
    return errors / max(words, 1)


def text_quality(tok: Tokenizers, data_dir: str, split: str, limit: int) -> dict[str, Any]:
    docs = raw.documents(data_dir, split, limit) + [i["caption"] for i in raw.captioned_images(data_dir, split, limit)]
    exact = sum(tok.text.decode(tok.text.encode(d), stop_at_eod=False) == d for d in docs)
    tokens = sum(len(tok.text.encode(d)) for d in docs)
    chars = sum(len(d) for d in docs)
    return {"text_roundtrip_exact": exact / max(len(docs), 1), "text_items": len(docs), "text_chars_per_token": chars / max(tokens, 1)}


def image_quality(tok: Tokenizers, data_dir: str, split: str, limit: int) -> dict[str, Any]:
    items = raw.captioned_images(data_dir, split, limit)
    out: dict[str, Any] = {"image_items": len(items), "image_tokens": tok.image_tokens, "image_codebook": tok.image.size}
    for name in ("all", "emoji", "digits"):
        chosen = [i for i in items if name == "all" or i["source"] == name]
        if chosen:
            original = np.stack([i["image"] for i in chosen])
            rebuilt = np.stack([tok.image.decode(tok.image.encode(x)) for x in original])
            out[f"image_psnr_db{'' if name == 'all' else '_' + name}"] = psnr(rebuilt, original)
    return out


def image_token_tradeoff(data_dir: str, split: str, tokens: tuple[int, ...] = (4, 16, 64), codebook: int = 512) -> dict[str, float]:
    """PSNR of image tokenizers retrained on the train images with other tokens per image (same codebook)."""
    from mdiff.data.tokenizers import ImageTokenizer

    train = np.stack([i["image"] for i in raw.captioned_images(data_dir, "train")])
    test = np.stack([i["image"] for i in raw.captioned_images(data_dir, split)])
    out = {}
    for n in tokens:
        tok = ImageTokenizer.train(train, tokens=n, codebook_size=min(codebook, len(train) * n))
        out[str(n)] = psnr(np.stack([tok.decode(c) for c in tok.encode_batch(test)]), test)
    return out


def audio_quality(tok: Tokenizers, data_dir: str, split: str, limit: int, *, real: bool = True) -> dict[str, Any]:
    items = raw.speech_items(data_dir, split, limit)
    wavs = [raw.speech_wav(i) for i in items]
    texts = [i["transcript"] for i in items]
    recognise = Recogniser(texts)
    rng = np.random.default_rng(0)
    decoded = [tok.audio.decode(tok.audio.encode(w)) for w in wavs]
    shuffled = [tok.audio.decode(rng.permutation(tok.audio.encode(w))) for w in wavs]
    out: dict[str, Any] = {
        "audio_items": len(items),
        "audio_tokens_per_second": tok.audio.tokens_per_second,
        "wer_espeak_original": wer(recognise, list(zip(wavs, texts))),
        "wer_espeak_decoded": wer(recognise, list(zip(decoded, texts))),
        # The same mel inversion and Griffin-Lim without quantisation: what the decoder alone does.
        "wer_espeak_mel_griffin_lim": wer(recognise, [(tok.audio.invert_features(tok.audio.features(w)), t) for w, t in zip(wavs, texts)]),
        "wer_espeak_shuffled_codes": wer(recognise, list(zip(shuffled, texts))),
    }
    if real:
        clips = raw.real_speech()
        recognise_real = Recogniser([c["transcript"] for c in clips])
        out["real_items"] = len(clips)
        out["wer_real_original"] = wer(recognise_real, [(c["wav"], c["transcript"]) for c in clips])
        out["wer_real_decoded"] = wer(recognise_real, [(tok.audio.decode(tok.audio.encode(c["wav"])), c["transcript"]) for c in clips])
    return out


def tokenizer_quality(data_dir: str, *, split: str = "test", limit: int = 60, audio_limit: int = 40) -> dict[str, Any]:
    """All reconstruction figures for the tokenizers saved in `data_dir`, on `split`."""
    from threadpoolctl import threadpool_limits

    t0 = time.time()
    tok = load_tokenizers(data_dir)
    with threadpool_limits(1):
        out = {"split": split}
        out.update(text_quality(tok, data_dir, split, limit))
        out.update(image_quality(tok, data_dir, split, limit))
        out.update(audio_quality(tok, data_dir, split, audio_limit))
    out["quality_seconds"] = round(time.time() - t0, 2)
    return out
