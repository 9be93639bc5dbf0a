"""The three tokenizers, trained by the dataset build from its training split and saved with it.

* text: byte-level BPE (HF `tokenizers`) with its own end-of-document id 0 (``<|eod|>``); decoding
  inverts encoding exactly.
* image: vector quantisation of p x p RGB patches (k-means codebook); ``image_tokens`` patches per
  image, decoded by pasting the code's mean patch.
* audio: vector quantisation of short blocks of log-mel frames: one token per ``audio_hop`` samples
  (4 mel frames of hop/4 each), decoded by inverting the mel filterbank and Griffin-Lim phase
  recovery. One extra id (the last) fills audio slots and decodes to silence.

All ids here are tokenizer-local (0..n); `UnifiedVocab.to_global` places them in the shared vocabulary.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from mdiff.data.errors import DataError
from mdiff.vocab import UnifiedVocab

EOD = "<|eod|>"
TOKENIZER_DIR = "tokenizers"
SAMPLE_RATE = 16000
MEL_FRAMES_PER_TOKEN = 4
LOG_FLOOR = 1e-5


class TokenizerError(DataError):
    """Input a tokenizer cannot encode, or a tokenizer directory that cannot be loaded."""


# ---------------------------------------------------------------------------------------------
# k-means (deterministic, chunked so memory stays small)
# ---------------------------------------------------------------------------------------------
def nearest(x: np.ndarray, codebook: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of the nearest codebook row for each row of x (squared Euclidean)."""
    sq = np.sum(codebook * codebook, axis=1)
    out = np.empty(len(x), np.int32)
    for i in range(0, len(x), chunk):
        block = x[i : i + chunk]
        out[i : i + chunk] = np.argmin(sq[None, :] - 2.0 * block @ codebook.T, axis=1)
    return out


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, iters: int = 15, max_fit: int = 40000) -> np.ndarray:
    """A k x d codebook fitted to (a seeded subsample of) x by Lloyd iterations."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    if len(x) > max_fit:
        x = x[rng.choice(len(x), max_fit, replace=False)]
    unique = np.unique(x, axis=0)
    if len(unique) < k:
        raise TokenizerError(f"codebook size {k} exceeds the {len(unique)} distinct training vectors; use a smaller codebook")
    codebook = unique[rng.choice(len(unique), k, replace=False)].copy()
    for _ in range(iters):
        assign = nearest(x, codebook)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(codebook)
        np.add.at(sums, assign, x)
        used = counts > 0
        codebook[used] = sums[used] / counts[used, None]
        if (~used).any():  # re-seed dead codes on the worst-fitted points
            dist = np.sum((x - codebook[assign]) ** 2, axis=1)
            codebook[~used] = x[np.argsort(-dist)[: int((~used).sum())]]
    return codebook


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------
class TextTokenizer:
    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self.eod_id = tokenizer.token_to_id(EOD)
        if self.eod_id != 0:
            raise TokenizerError(f"text tokenizer must have {EOD} as id 0; it has id {self.eod_id}")
        self.size = tokenizer.get_vocab_size()

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "TextTokenizer":
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOD],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str) -> "TextTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_file(path))

    def save(self, path: str) -> None:
        self._tok.save(path)

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, np.int32)

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.asarray(e.ids, np.int32) for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Any, *, stop_at_eod: bool = True) -> str:
        """Text of local ids; by default stops at the first end-of-document id (slot filler)."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if stop_at_eod and self.eod_id in ids:
            ids = ids[: ids.index(self.eod_id)]
        return self._tok.decode([i for i in ids if i != self.eod_id], skip_special_tokens=False)


# ---------------------------------------------------------------------------------------------
# Image
# ---------------------------------------------------------------------------------------------
class ImageTokenizer:
    """Patch VQ: a (size/p)^2-token code for a size x size RGB image."""

    def __init__(self, codebook: np.ndarray, image_size: int):
        self.codebook = np.asarray(codebook, np.float32)
        self.image_size = image_size
        self.side = int(round(np.sqrt(self.codebook.shape[1] / 3)))
        self.per_side = image_size // self.side
        self.tokens = self.per_side**2
        self.size = len(self.codebook)

    @staticmethod
    def patches(images: np.ndarray, side: int) -> np.ndarray:
        """[N, S, S, 3] -> [N, (S/side)^2, side*side*3] (row-major patches)."""
        n, s = images.shape[0], images.shape[1]
        g = s // side
        x = images.reshape(n, g, side, g, side, 3).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(n, g * g, side * side * 3)

    @classmethod
    def train(cls, images: np.ndarray, *, tokens: int, codebook_size: int, seed: int = 0) -> "ImageTokenizer":
        size = images.shape[1]
        side = size // int(round(np.sqrt(tokens)))
        x = cls.patches(np.asarray(images, np.float32), side).reshape(-1, side * side * 3)
        return cls(kmeans(x, codebook_size, seed=seed), size)

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise TokenizerError(f"image tokenizer takes a uint8 H x W x 3 array; got {image.dtype} {image.shape}")
        if image.shape[:2] != (self.image_size, self.image_size):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((self.image_size,) * 2, Image.Resampling.BOX))
        return image

    def encode(self, image: np.ndarray) -> np.ndarray:
        x = self.patches(self._prepare(image)[None].astype(np.float32), self.side)[0]
        return nearest(x, self.codebook)

    def encode_batch(self, images: np.ndarray) -> np.ndarray:
        x = self.patches(np.asarray(images, np.float32), self.side)
        return nearest(x.reshape(-1, x.shape[-1]), self.codebook).reshape(len(images), -1)

    def decode(self, ids: Any) -> np.ndarray:
        ids = np.asarray(ids, np.int64).reshape(-1)
        if ids.shape != (self.tokens,) or ids.min() < 0 or ids.max() >= self.size:
            raise TokenizerError(f"image decode takes {self.tokens} ids in [0, {self.size}); got {ids.shape} ids")
        g, p = self.per_side, self.side
        x = self.codebook[ids].reshape(g, g, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(g * p, g * p, 3)
        return np.clip(np.round(x), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


# ---------------------------------------------------------------------------------------------
# Audio
# ---------------------------------------------------------------------------------------------
def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """[n_mels, n_fft//2 + 1] triangular filters on the HTK mel scale, 0 Hz to Nyquist."""
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    hz = lambda m: 700.0 * (10.0 ** (m / 2595.0) - 1.0)  # noqa: E731
    edges = hz(np.linspace(mel(0.0), mel(sample_rate / 2), n_mels + 2))
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - freqs[None]) / np.maximum(hi - mid, 1e-9)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


class AudioTokenizer:
    """One token per `hop` samples: VQ of MEL_FRAMES_PER_TOKEN log-mel frames; Griffin-Lim decoder."""

    def __init__(self, codebook: np.ndarray, *, hop: int, n_mels: int, griffin_lim_iters: int = 32):
        self.codebook = np.asarray(codebook, np.float32)
        self.hop = hop
        self.n_mels = n_mels
        self.frame_hop = hop // MEL_FRAMES_PER_TOKEN
        self.n_fft = 4 * self.frame_hop if 4 * self.frame_hop >= 256 else 256
        self.window = np.hanning(self.n_fft + 1)[:-1].astype(np.float32)
        self.mel = mel_filterbank(n_mels, self.n_fft)
        self.mel_pinv = np.linalg.pinv(self.mel).astype(np.float32)
        self.griffin_lim_iters = griffin_lim_iters
        self.fill_id = len(self.codebook)  # the extra id: silence / slot filler
        self.size = len(self.codebook) + 1
        self.tokens_per_second = SAMPLE_RATE / hop

    # features ------------------------------------------------------------------------------
    def _stft(self, x: np.ndarray) -> np.ndarray:
        pad = self.n_fft // 2
        x = np.pad(np.asarray(x, np.float32), (pad, pad + self.n_fft))
        n = 1 + (len(x) - self.n_fft) // self.frame_hop
        idx = np.arange(self.n_fft)[None, :] + self.frame_hop * np.arange(n)[:, None]
        return np.fft.rfft(x[idx] * self.window, axis=1)

    def _istft(self, spec: np.ndarray, length: int) -> np.ndarray:
        frames = np.fft.irfft(spec, n=self.n_fft, axis=1).astype(np.float32) * self.window
        total = self.n_fft + self.frame_hop * (len(frames) - 1)
        out = np.zeros(total, np.float32)
        norm = np.zeros(total, np.float32)
        for i, frame in enumerate(frames):
            out[i * self.frame_hop : i * self.frame_hop + self.n_fft] += frame
            norm[i * self.frame_hop : i * self.frame_hop + self.n_fft] += self.window**2
        out /= np.maximum(norm, 1e-8)
        pad = self.n_fft // 2
        return out[pad : pad + length]

    def features(self, wav: np.ndarray) -> np.ndarray:
        """[tokens, MEL_FRAMES_PER_TOKEN * n_mels] log-mel blocks, one per `hop` samples."""
        wav = np.asarray(wav, np.float32).reshape(-1)
        tokens = max(1, -(-len(wav) // self.hop))
        power = np.abs(self._stft(wav)) ** 2
        logmel = np.log(power.astype(np.float32) @ self.mel.T + LOG_FLOOR)[: tokens * MEL_FRAMES_PER_TOKEN]
        return logmel.reshape(tokens, MEL_FRAMES_PER_TOKEN * self.n_mels)

    @classmethod
    def for_settings(cls, *, hop: int, n_mels: int, griffin_lim_iters: int = 32) -> "AudioTokenizer":
        """An untrained tokenizer (features only), e.g. to compute training features once."""
        return cls(np.zeros((1, MEL_FRAMES_PER_TOKEN * n_mels), np.float32), hop=hop, n_mels=n_mels, griffin_lim_iters=griffin_lim_iters)

    def trained(self, features: list[np.ndarray], codebook_size: int, seed: int = 0) -> "AudioTokenizer":
        """A tokenizer with the same settings and a codebook fitted to `features` (from `features()`)."""
        codebook = kmeans(np.concatenate(features), codebook_size, seed=seed)
        return AudioTokenizer(codebook, hop=self.hop, n_mels=self.n_mels, griffin_lim_iters=self.griffin_lim_iters)

    @classmethod
    def train(
        cls, wavs: Iterable[np.ndarray], *, hop: int, n_mels: int, codebook_size: int, griffin_lim_iters: int = 32, seed: int = 0
    ) -> "AudioTokenizer":
        probe = cls.for_settings(hop=hop, n_mels=n_mels, griffin_lim_iters=griffin_lim_iters)
        return probe.trained([probe.features(w) for w in wavs], codebook_size, seed)

    # codec ------------------------------------------------------------------------------------
    def encode(self, wav: np.ndarray) -> np.ndarray:
        wav = np.asarray(wav)
        if wav.ndim != 1 or not np.issubdtype(wav.dtype, np.floating):
            raise TokenizerError(f"audio tokenizer takes a 1-D float waveform at 16 kHz; got {wav.dtype} {wav.shape}")
        return self.encode_features(self.features(wav))

    def encode_features(self, features: np.ndarray) -> np.ndarray:
        return nearest(features, self.codebook)

    def decode(self, ids: Any, *, seed: int = 0) -> np.ndarray:
        """Waveform (float32, 16 kHz) of local ids; fill ids are silence and trailing fill is dropped."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise TokenizerError(f"audio ids must lie in [0, {self.size}); got [{ids.min()}, {ids.max()}]")
        keep = np.flatnonzero(ids != self.fill_id)
        ids = ids[: keep[-1] + 1] if keep.size else ids[:0]
        if not ids.size:
            return np.zeros(0, np.float32)
        silence = np.full(self.codebook.shape[1], np.log(LOG_FLOOR), np.float32)
        blocks = np.where((ids == self.fill_id)[:, None], silence, self.codebook[np.minimum(ids, self.fill_id - 1)])
        return self.invert_features(blocks, seed=seed)

    def invert_features(self, blocks: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """Waveform of log-mel blocks ([tokens, 4 * n_mels], as `features` gives): mel inversion + Griffin-Lim."""
        logmel = np.asarray(blocks, np.float32).reshape(-1, self.n_mels)
        magnitude = np.sqrt(np.maximum(np.maximum(np.exp(logmel) - LOG_FLOOR, 0.0) @ self.mel_pinv.T, 0.0))
        length = len(blocks) * self.hop
        n_frames = len(self._stft(np.zeros(length, np.float32)))
        magnitude = np.pad(magnitude, ((0, max(n_frames - len(magnitude), 0)), (0, 0)))[:n_frames]
        rng = np.random.default_rng(seed)
        spec = magnitude * np.exp(2j * np.pi * rng.random(magnitude.shape))
        for _ in range(self.griffin_lim_iters):
            wav = self._istft(spec, length)
            rebuilt = self._stft(wav)
            spec = magnitude * np.exp(1j * np.angle(rebuilt))
        wav = self._istft(spec, length)
        peak = np.max(np.abs(wav))
        return (wav * (0.5 / peak) if peak > 0 else wav).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The set saved with a dataset
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Tokenizers:
    text: TextTokenizer
    image: ImageTokenizer
    audio: AudioTokenizer
    text_slot: int
    audio_slot: int
    settings: dict[str, Any]

    @property
    def vocab(self) -> UnifiedVocab:
        return UnifiedVocab(self.text.size, self.image.size, self.audio.size)

    @property
    def image_tokens(self) -> int:
        return self.image.tokens

    def target_length(self, task: str) -> int:
        """Length of the target span of `task` ("text" has no fixed length)."""
        lengths = {"t2i": self.image_tokens, "i2t": self.text_slot, "t2s": self.audio_slot, "s2t": self.text_slot}
        if task not in lengths:
            raise TokenizerError(f"task {task!r} has no fixed target length; tasks with one: {', '.join(lengths)}")
        return lengths[task]

    def meta(self) -> dict[str, Any]:
        return {
            "vocab": self.vocab.to_dict(),
            "text_eod": int(self.text.eod_id),
            "audio_fill": int(self.audio.fill_id),
            "image_tokens": int(self.image_tokens),
            "text_slot": int(self.text_slot),
            "audio_slot": int(self.audio_slot),
            "audio_tokens_per_second": self.audio.tokens_per_second,
            "settings": self.settings,
        }

    def save(self, data_dir: str) -> list[str]:
        folder = os.path.join(data_dir, TOKENIZER_DIR)
        os.makedirs(folder, exist_ok=True)
        self.text.save(os.path.join(folder, "text.json"))
        np.save(os.path.join(folder, "image_codebook.npy"), self.image.codebook)
        np.save(os.path.join(folder, "audio_codebook.npy"), self.audio.codebook)
        with open(os.path.join(folder, "meta.json"), "w") as f:
            json.dump(self.meta(), f, indent=2, sort_keys=True)
        return [os.path.join(TOKENIZER_DIR, n) for n in ("text.json", "image_codebook.npy", "audio_codebook.npy", "meta.json")]


def load_tokenizers(data_dir: str) -> Tokenizers:
    """The tokenizers saved with the dataset in `data_dir` (built by `mdiff data build`)."""
    folder = os.path.join(os.path.expanduser(data_dir), TOKENIZER_DIR)
    meta_path = os.path.join(folder, "meta.json")
    if not os.path.exists(meta_path):
        raise TokenizerError(f"no tokenizers in {folder}: build the dataset first with `mdiff data build --data-dir {data_dir}`")
    with open(meta_path) as f:
        meta = json.load(f)
    s = meta["settings"]
    tokenizers = Tokenizers(
        text=TextTokenizer.load(os.path.join(folder, "text.json")),
        image=ImageTokenizer(np.load(os.path.join(folder, "image_codebook.npy")), s["image_size"]),
        audio=AudioTokenizer(
            np.load(os.path.join(folder, "audio_codebook.npy")),
            hop=s["audio_hop"],
            n_mels=s["audio_mels"],
            griffin_lim_iters=s["griffin_lim_iters"],
        ),
        text_slot=int(meta["text_slot"]),
        audio_slot=int(meta["audio_slot"]),
        settings=s,
    )
    if tokenizers.vocab != UnifiedVocab.from_dict(meta["vocab"]):
        raise TokenizerError(f"tokenizers in {folder} disagree with their meta.json vocabulary; rebuild with --force")
    return tokenizers
