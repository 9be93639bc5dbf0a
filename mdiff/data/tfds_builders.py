"""TFDS builders (ArrayRecord, no TensorFlow) for the three pre-tokenised datasets.

The builders take their examples in memory from `mdiff.data.build` (which synthesises and tokenises
them); readers never need these classes: `tfds.builder_from_directory` reads any ArrayRecord dataset
with the same features, so a pod can point `config.data.dataset` at full-size data built elsewhere.

Features (token arrays hold tokenizer-local ids; Text features read back as bytes):

* ``mdiff_text``:       tokens [n] int32, text, key, source
* ``mdiff_image_text``: image_tokens [T] int32, caption_tokens [n] int32, image [S, S, 3] uint8,
                        caption, key, source, label
* ``mdiff_audio_text``: audio_tokens [n] int32, transcript_tokens [n] int32, transcript, key,
                        source, voice, speed, pitch, seconds
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

VERSION = "1.0.0"
DATASET_NAMES = {"text": "mdiff_text", "image": "mdiff_image_text", "audio": "mdiff_audio_text"}


def _tokens() -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(None,), dtype=np.int32)


def features(stream: str, image_size: int = 16) -> tfds.features.FeaturesDict:
    text = tfds.features.Text
    if stream == "text":
        spec: dict[str, Any] = {"tokens": _tokens(), "text": text(), "key": text(), "source": text()}
    elif stream == "image":
        spec = {
            "image_tokens": _tokens(),
            "caption_tokens": _tokens(),
            "image": tfds.features.Tensor(shape=(image_size, image_size, 3), dtype=np.uint8),
            "caption": text(),
            "key": text(),
            "source": text(),
            "label": text(),
        }
    else:
        spec = {
            "audio_tokens": _tokens(),
            "transcript_tokens": _tokens(),
            "transcript": text(),
            "key": text(),
            "source": text(),
            "voice": text(),
            "speed": tfds.features.Scalar(dtype=np.int32),
            "pitch": tfds.features.Scalar(dtype=np.int32),
            "seconds": tfds.features.Scalar(dtype=np.float32),
        }
    return tfds.features.FeaturesDict(spec)


class _InMemoryBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Writes the examples handed to it: {split: [example dict, ...]}."""

    VERSION = tfds.core.Version(VERSION)
    STREAM = ""

    # No source code path: TFDS would look up download checksums next to it, which needs the
    # `importlib_resources` backport; these builders download nothing.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> None:
        return None

    def __init__(self, *, examples: dict[str, list[dict[str, Any]]] | None = None, image_size: int = 16, **kwargs: Any):
        self._examples = examples or {}
        self._image_size = image_size
        super().__init__(file_format="array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"mdiff embedded {self.STREAM} dataset (pre-tokenised; see mdiff/data/tfds_builders.py)",
            features=features(self.STREAM, self._image_size),
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Any]:
        del dl_manager
        return {split: self._generate_examples(split) for split in self._examples}

    def _generate_examples(self, split: str):  # noqa: ANN202 (generator of (key, example))
        for i, example in enumerate(self._examples[split]):
            yield f"{i:08d}", example


class MdiffText(_InMemoryBuilder, skip_registration=True):
    STREAM = "text"
    name = DATASET_NAMES["text"]


class MdiffImageText(_InMemoryBuilder, skip_registration=True):
    STREAM = "image"
    name = DATASET_NAMES["image"]


class MdiffAudioText(_InMemoryBuilder, skip_registration=True):
    STREAM = "audio"
    name = DATASET_NAMES["audio"]


BUILDERS = {"text": MdiffText, "image": MdiffImageText, "audio": MdiffAudioText}


def write(stream: str, data_dir: str, examples: dict[str, list[dict[str, Any]]], image_size: int) -> str:
    """Build one dataset under data_dir; returns its directory (data_dir/NAME/VERSION)."""
    builder = BUILDERS[stream](data_dir=data_dir, examples=examples, image_size=image_size)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return os.path.join(data_dir, DATASET_NAMES[stream], VERSION)


def dataset_dir(root: str, stream: str) -> str:
    """The directory of a stream's dataset under `root` (the newest version present)."""
    base = os.path.join(root, DATASET_NAMES[stream])
    if not os.path.isdir(base):
        return os.path.join(base, VERSION)
    versions = sorted(v for v in os.listdir(base) if os.path.isfile(os.path.join(base, v, "dataset_info.json")))
    return os.path.join(base, versions[-1] if versions else VERSION)


def open_split(root: str, stream: str, split: str) -> Any:
    """Random-access source of one split (an ArrayRecord data source), or [] if the split is absent."""
    path = dataset_dir(root, stream)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
        return []
    builder = tfds.builder_from_directory(path)
    if split not in builder.info.splits:
        return []
    return builder.as_data_source(split=split)


def split_names(root: str, stream: str) -> list[str]:
    path = dataset_dir(root, stream)
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
        return []
    return sorted(tfds.builder_from_directory(path).info.splits.keys())
