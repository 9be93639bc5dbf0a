"""`mdiff data build`: corpora -> splits -> tokenizers -> pre-tokenised TFDS ArrayRecord datasets.

The build is deterministic (same sources and settings give the same files) and idempotent: an
existing build whose manifest matches the scale and settings and whose files match their
checksums is reused; a corrupted or truncated file is detected by its checksum and the build redone.

Layout of a data directory::

    manifest.json                    scale, settings, counts, sha256 of every file, build time
    tokenizers/                      text.json, image_codebook.npy, audio_codebook.npy, meta.json
    mdiff_text/1.0.0/...             TFDS ArrayRecord (splits train/validation/test)
    mdiff_image_text/1.0.0/...       (train/validation/test)
    mdiff_audio_text/1.0.0/...       (train/validation/test, plus "real": pocketsphinx-testdata)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from mdiff.data import sources
from mdiff.data.errors import DataError
from mdiff.data.sources import SPLITS
from mdiff.vocab import MODALITIES

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # bump when a build of the same settings would differ
BUILD_KEYS = ("tokenizer", "slots", "voices", "speeds", "pitches", "speech_variants")


class DatasetError(DataError):
    """A built dataset that is missing, corrupted or built with other settings."""


# ---------------------------------------------------------------------------------------------
# Settings and manifest
# ---------------------------------------------------------------------------------------------
def build_settings(data_config: Any = None) -> dict[str, Any]:
    """The build-relevant part of `config.data` (defaults when None), as plain JSON."""
    from mdiff.data.defaults import data_defaults

    data = data_defaults() if data_config is None else data_config
    out: dict[str, Any] = {}
    for key in BUILD_KEYS:
        value = data.get(key) if key in data else data_defaults()[key]
        out[key] = dict(value) if hasattr(value, "keys") else value
    return json.loads(json.dumps(out))


def file_checksums(root: str, exclude: Iterable[str] = (MANIFEST,)) -> dict[str, str]:
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)
            if rel in exclude or rel.startswith("downloads"):
                continue
            out[rel] = sha256(path)
    return dict(sorted(out.items()))


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(data_dir: str) -> dict[str, Any] | None:
    path = os.path.join(data_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def verify(data_dir: str, manifest: dict[str, Any] | None = None) -> list[str]:
    """Problems with a build's files (missing, changed, truncated); empty when it is intact."""
    manifest = manifest or read_manifest(data_dir)
    if manifest is None:
        return [f"{os.path.join(data_dir, MANIFEST)} is missing or unreadable"]
    problems = []
    for rel, digest in manifest.get("files", {}).items():
        path = os.path.join(data_dir, rel)
        if not os.path.exists(path):
            problems.append(f"{rel} is missing")
        elif sha256(path) != digest:
            problems.append(f"{rel} does not match its checksum (corrupted or truncated)")
    return problems


# ---------------------------------------------------------------------------------------------
# Progress
# ---------------------------------------------------------------------------------------------
def _progress_enabled(progress: bool) -> bool:
    return progress and os.environ.get("MDIFF_PROGRESS", "1") != "0"


class _Stages:
    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.n, self.t0 = total, enabled, 0, time.time()

    def stage(self, text: str) -> None:
        self.n += 1
        if self.enabled:
            print(f"[{self.n}/{self.total} {time.time() - self.t0:5.1f}s] {text}", file=sys.stderr, flush=True)

    def iterate(self, items: Iterable, desc: str, total: int | None = None) -> Iterator:
        if not self.enabled:
            return iter(items)
        from tqdm import tqdm

        return iter(tqdm(items, desc=f"  {desc}", total=total, leave=False, file=sys.stderr, mininterval=0.5))


# ---------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------
def build_dataset(
    data_dir: str,
    *,
    scale: str = "full",
    force: bool = False,
    progress: bool = True,
    settings: dict[str, Any] | Any = None,
) -> dict[str, Any]:
    """Build (or reuse) the embedded tri-modal dataset in `data_dir`; returns its manifest.

    `settings`: the build-relevant keys of `config.data` (a ConfigDict or dict; defaults when None).
    """
    if scale not in ("full", "tiny"):
        raise ValueError(f"scale={scale!r}: allowed: full, tiny")
    data_dir = os.path.abspath(os.path.expanduser(data_dir))
    wanted = build_settings(settings) if not isinstance(settings, dict) or "tokenizer" not in settings else json.loads(json.dumps(settings))
    manifest = read_manifest(data_dir)
    stages = _Stages(8, _progress_enabled(progress))
    if not force and manifest is not None:
        same = manifest.get("scale") == scale and manifest.get("settings") == wanted and manifest.get("version") == MANIFEST_VERSION
        if same:
            problems = verify(data_dir, manifest)
            if not problems:
                return manifest
            if stages.enabled:
                print(f"rebuilding {data_dir}: {problems[0]}", file=sys.stderr)
    from threadpoolctl import threadpool_limits

    # Many small matrix products: one BLAS thread is far faster than several fighting for cores.
    with threadpool_limits(1):
        return _build(data_dir, scale, wanted, stages)


def _build(data_dir: str, scale: str, settings: dict[str, Any], stages: _Stages) -> dict[str, Any]:
    from mdiff.data import tfds_builders
    from mdiff.data.tokenizers import AudioTokenizer, ImageTokenizer, TextTokenizer, Tokenizers

    t0 = time.time()
    tok = settings["tokenizer"]
    sources.check_requirements()  # before anything is cleared or written
    os.makedirs(data_dir, exist_ok=True)
    _clear(data_dir)

    stages.stage("reading text corpora (KJV, fortunes)")
    docs = sources.text_documents(scale)
    doc_splits = _by_split(docs)

    stages.stage("rendering images (emoji, digits)")
    images = sources.emoji_images(tok["image_size"], scale) + sources.digit_images(tok["image_size"], scale)
    image_splits = _by_split(images)

    stages.stage("synthesising speech with espeak-ng")
    utterances, too_long = _synthesise(settings, scale, stages)
    audio_splits = _by_split(utterances, key=lambda u: u["key"])
    real = sources.real_speech_clips()

    stages.stage("training the text BPE")
    train_texts = [d.text for d in doc_splits["train"]] + [i.caption for i in image_splits["train"]]
    train_texts += [u["transcript"] for u in audio_splits["train"]]
    text_tok = TextTokenizer.train(train_texts, tok["text_vocab"])

    stages.stage("training the image VQ")
    train_images = np.stack([i.image for i in image_splits["train"]])
    image_tok = ImageTokenizer.train(train_images, tokens=tok["image_tokens"], codebook_size=tok["image_codebook"])

    stages.stage("training the audio VQ")
    audio_probe = AudioTokenizer.for_settings(hop=tok["audio_hop"], n_mels=tok["audio_mels"], griffin_lim_iters=tok["griffin_lim_iters"])
    for u in utterances:
        u["features"] = audio_probe.features(u["wav"])
    audio_tok = audio_probe.trained([u["features"] for u in audio_splits["train"]], tok["audio_codebook"])
    tokenizers = Tokenizers(text_tok, image_tok, audio_tok, settings["slots"]["text"], settings["slots"]["audio"], settings["tokenizer"])

    stages.stage("tokenising")
    text_examples = {s: _text_examples(text_tok, doc_splits[s]) for s in SPLITS}
    image_examples = {s: _image_examples(tokenizers, image_splits[s]) for s in SPLITS}
    audio_examples = {s: _audio_examples(tokenizers, audio_splits[s], stages) for s in SPLITS}
    real_items = [dict(key=c.key, wav=c.wav, transcript=c.transcript, source="real", voice="", speed=0, pitch=0) for c in real]
    audio_examples["real"] = _audio_examples(tokenizers, real_items, stages, fit_slot=False)

    stages.stage("writing TFDS ArrayRecord datasets")
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()  # our own stage lines report progress
    _quiet_tfds()
    image_size = tok["image_size"]
    tfds_builders.write("text", data_dir, text_examples, image_size)
    tfds_builders.write("image", data_dir, image_examples, image_size)
    tfds_builders.write("audio", data_dir, audio_examples, image_size)
    shutil.rmtree(os.path.join(data_dir, "downloads"), ignore_errors=True)
    tokenizers.save(data_dir)

    manifest = {
        "version": MANIFEST_VERSION,
        "scale": scale,
        "settings": settings,
        "vocab": tokenizers.vocab.to_dict(),
        "counts": {
            "text": {s: len(v) for s, v in text_examples.items()},
            "image": {s: len(v) for s, v in image_examples.items()},
            "audio": {s: len(v) for s, v in audio_examples.items()},
            "text_tokens": {s: int(sum(len(e["tokens"]) for e in v)) for s, v in text_examples.items()},
            "audio_dropped_too_long": too_long + int(sum(len(audio_splits[s]) - len(audio_examples[s]) for s in SPLITS)),
        },
        "audio_tokens_per_second": audio_tok.tokens_per_second,
        "content_digest": content_digest(data_dir),
        "build_seconds": round(time.time() - t0, 2),
        "files": file_checksums(data_dir),
    }
    tmp = os.path.join(data_dir, MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2)
    os.replace(tmp, os.path.join(data_dir, MANIFEST))
    if stages.enabled:
        print(f"built {scale} dataset in {data_dir} ({manifest['build_seconds']} s)", file=sys.stderr)
    return manifest


def content_digest(data_dir: str) -> str:
    """sha256 over every record of every split, read back in order: equal for equal builds.

    (ArrayRecord file bytes differ between identical builds, so file checksums cannot show that.)
    """
    from mdiff.data import tfds_builders

    h = hashlib.sha256()
    for stream in MODALITIES:
        for split in tfds_builders.split_names(data_dir, stream):
            source = tfds_builders.open_split(data_dir, stream, split)
            h.update(f"{stream}/{split}/{len(source)}".encode())
            for i in range(len(source)):
                for key, value in sorted(source[i].items()):
                    h.update(key.encode())
                    h.update(value if isinstance(value, bytes) else np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


def _clear(data_dir: str) -> None:
    """Remove what an earlier build wrote (only our own entries)."""
    from mdiff.data.tfds_builders import DATASET_NAMES

    for name in [MANIFEST, "tokenizers", "downloads", *DATASET_NAMES.values()]:
        path = os.path.join(data_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def _quiet_tfds() -> None:
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    logging.getLogger("tensorflow_datasets").setLevel(logging.ERROR)


def _by_split(items: list, key: Any = None) -> dict[str, list]:
    out: dict[str, list] = {s: [] for s in SPLITS}
    for item in items:
        out[sources.split_of(key(item) if key else item.key)].append(item)
    return out


def _csv(value: str, cast: Any = str) -> list:
    return [cast(v.strip()) for v in str(value).split(",") if v.strip()]


def _synthesise(settings: dict[str, Any], scale: str, stages: _Stages) -> tuple[list[dict[str, Any]], int]:
    """Each text spoken `speech_variants` times in train (once elsewhere), voice/speed/pitch by key."""
    voices, speeds, pitches = _csv(settings["voices"]), _csv(settings["speeds"], int), _csv(settings["pitches"], int)
    max_seconds = settings["slots"]["audio"] * settings["tokenizer"]["audio_hop"] / sources.SAMPLE_RATE
    jobs = []  # (text item, voice, speed, pitch)
    for text in sources.speech_texts(scale):
        variants = settings["speech_variants"] if sources.split_of(text.key) == "train" else 1
        jobs += [(text, *sources.voicing(f"{text.key}#{v}", voices, speeds, pitches)) for v in range(variants)]
    wavs = sources.synthesize_many([(text.text, voice, speed, pitch) for text, voice, speed, pitch in jobs])
    out, too_long = [], 0
    for (text, voice, speed, pitch), wav in zip(jobs, stages.iterate(wavs, "speech", total=len(jobs))):
        if len(wav) <= max_seconds * sources.SAMPLE_RATE:
            out.append(dict(key=text.key, wav=wav, transcript=text.text, source=text.source, voice=voice, speed=speed, pitch=pitch))
        else:
            too_long += 1
    return out, too_long


def _text_examples(text_tok: Any, docs: list) -> list[dict[str, Any]]:
    encoded = text_tok.encode_batch([d.text for d in docs])
    return [dict(tokens=ids, text=d.text, key=d.key, source=d.source) for d, ids in zip(docs, encoded)]


def _image_examples(tokenizers: Any, items: list) -> list[dict[str, Any]]:
    if not items:
        return []
    codes = tokenizers.image.encode_batch(np.stack([i.image for i in items]))
    captions = tokenizers.text.encode_batch([i.caption for i in items])
    return [
        dict(image_tokens=c.astype(np.int32), caption_tokens=t, image=i.image, caption=i.caption, key=i.key, source=i.source, label=i.label)
        for i, c, t in zip(items, codes, captions)
    ]


def _audio_examples(tokenizers: Any, items: list, stages: _Stages, fit_slot: bool = True) -> list[dict[str, Any]]:
    if not items:
        return []
    transcripts = tokenizers.text.encode_batch([u["transcript"] for u in items])
    features = [u["features"] if "features" in u else tokenizers.audio.features(u["wav"]) for u in items]
    flat = tokenizers.audio.encode_features(np.concatenate(features))  # one product, not thousands
    all_codes = np.split(flat, np.cumsum([len(f) for f in features])[:-1])
    out = []
    for u, t, codes in zip(items, transcripts, all_codes):
        if fit_slot and len(codes) > tokenizers.audio_slot:
            continue
        out.append(
            dict(
                audio_tokens=codes.astype(np.int32),
                transcript_tokens=t,
                transcript=u["transcript"],
                key=u["key"],
                source=u["source"],
                voice=u["voice"],
                speed=np.int32(u["speed"]),
                pitch=np.int32(u["pitch"]),
                seconds=np.float32(len(u["wav"]) / sources.SAMPLE_RATE),
            )
        )
    return out
