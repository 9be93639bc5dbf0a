"""Reading a built dataset directory (the embedded set, or any directory with the same features).

A dataset directory holds the three TFDS ArrayRecord datasets and `tokenizers/`. When it has a
`manifest.json` (every `mdiff data build` writes one) each file is checked against its sha256 before
anything is read: a corrupted or truncated file is reported, never read.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from mdiff.data import tfds_builders
from mdiff.data.build import DatasetError, build_settings, read_manifest, verify
from mdiff.data.corpus import STREAMS, Corpus, MappedStream
from mdiff.data.tokenizers import TOKENIZER_DIR
from mdiff.vocab import UnifiedVocab


def check_dataset_dir(path: str) -> dict[str, Any] | None:
    """Raise a clear error unless `path` is an intact dataset; returns its manifest (None if it has none)."""
    meta = os.path.join(path, TOKENIZER_DIR, "meta.json")
    if not os.path.isdir(path) or not os.path.exists(meta):
        raise DatasetError(
            f"no built dataset in {path}: run `mdiff data build --data-dir {path}` "
            "(or point config.data.dataset at a directory with the TFDS datasets and tokenizers/)"
        )
    manifest = read_manifest(path)
    if manifest is None and os.path.exists(os.path.join(path, "manifest.json")):
        raise DatasetError(f"{path}/manifest.json is unreadable: rebuild with `mdiff data build --force --data-dir {path}`")
    if manifest is not None:
        problems = _verify_cached(path, _stat_key(path))
        if problems:
            raise DatasetError(
                f"dataset in {path} is damaged ({problems[0]}"
                + (f", and {len(problems) - 1} more" if len(problems) > 1 else "")
                + f"): rebuild with `mdiff data build --force --data-dir {path}`"
            )
    return manifest


def _stat_key(path: str) -> tuple:
    out = []
    for folder, _, files in os.walk(path):
        for name in files:
            full = os.path.join(folder, name)
            st = os.stat(full)
            out.append((full, st.st_size, st.st_mtime_ns))
    return tuple(sorted(out))


@functools.lru_cache(maxsize=8)
def _verify_cached(path: str, stat_key: tuple) -> tuple[str, ...]:
    """Checksums are verified once per process for an unchanged set of files (size and mtime)."""
    del stat_key
    return tuple(verify(path))


def check_settings(path: str, stored: dict[str, Any], config: Any) -> None:
    """The config's tokenizer and slot settings must be those the dataset was built with."""
    if config is None:
        return
    wanted = build_settings(config.data)
    for key in ("tokenizer", "slots"):
        if stored.get(key) != wanted[key]:
            diff = {k: (stored.get(key, {}).get(k), v) for k, v in wanted[key].items() if stored.get(key, {}).get(k) != v}
            raise DatasetError(
                f"dataset in {path} was built with other data.{key} settings (built, config): {diff};"
                f" rebuild it with these settings (`mdiff data build --force`) or use the built ones"
            )


def open_corpus(path: str, split: str, *, config: Any = None) -> Corpus:
    """One split of a dataset directory as a `Corpus` for the pipeline."""
    import json

    path = os.path.abspath(path)
    check_dataset_dir(path)
    with open(os.path.join(path, TOKENIZER_DIR, "meta.json")) as f:
        meta = json.load(f)
    stored = {"tokenizer": meta["settings"], "slots": {"text": meta["text_slot"], "audio": meta["audio_slot"]}}
    check_settings(path, stored, config)
    known = sorted({s for stream in STREAMS for s in tfds_builders.split_names(path, stream)})
    if split not in known:
        raise DatasetError(f"dataset in {path} has no split {split!r}; splits: {', '.join(known) or '(none)'}")
    return Corpus(
        vocab=UnifiedVocab.from_dict(meta["vocab"]),
        text_eod=int(meta["text_eod"]),
        audio_fill=int(meta["audio_fill"]),
        image_tokens=int(meta["image_tokens"]),
        text_slot=int(meta["text_slot"]),
        audio_slot=int(meta["audio_slot"]),
        text=_mapped(tfds_builders.open_split(path, "text", split), _text_record),
        image=_mapped(tfds_builders.open_split(path, "image", split), _image_record),
        audio=_mapped(tfds_builders.open_split(path, "audio", split), _audio_record),
        name=f"{path}:{split}",
    )


def _mapped(source: Any, fn: Any) -> Any:
    return MappedStream(source, fn) if len(source) else []


def _text_record(r: dict[str, Any]) -> Any:
    return r["tokens"]


def _image_record(r: dict[str, Any]) -> Any:
    return r["image_tokens"], r["caption_tokens"]


def _audio_record(r: dict[str, Any]) -> Any:
    return r["audio_tokens"], r["transcript_tokens"]


def records(path: str, stream: str, split: str) -> Any:
    """Raw records of one split (after the integrity check), e.g. for evaluators."""
    check_dataset_dir(os.path.abspath(path))
    return tfds_builders.open_split(os.path.abspath(path), stream, split)
