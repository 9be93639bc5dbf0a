"""The grain pipeline: three pre-tokenised streams mixed and packed into one batch stream.

Design (why it shards and resumes exactly):

* The global batch has ``config.train.batch`` rows; row r of every batch comes from **lane** r. A
  lane is an independent packer with its own cursors into the three streams (lane r reads stream
  items r, r + G, r + 2G, ... of a per-epoch permutation, G = number of lanes). So a host that owns
  rows [p*b, (p+1)*b) runs only those lanes, and the hosts' batches concatenate to the batch a
  single process produces.
* Each lane fills a row by deficit scheduling on token counts: the stream furthest below its target
  fraction (``config.data.mix``) goes next if its example fits; text is cut to fit (documents are
  concatenated with the end-of-document id, and a text segment may span documents), image-text and
  audio-text examples are never cut. When nothing eligible fits, the rest of the row is padding.
  Counts exclude padding, so the mixing fractions hold over a long stream.
* Anti-masking (training only) pairs each row with its complementary mask. So that no packed row goes
  unused, the pipeline then runs half as many lanes and yields each row twice, as rows 2g and 2g+1
  (`rows_repeated`); the step masks row 2g and gives row 2g+1 the complement. A step then holds
  batch / 2 distinct rows: `tokens` (distinct data tokens) counts those, `tokens_processed` all rows.
* A lane's state is a handful of integers, so the iterator state is small JSON and resuming gives the
  same next batch. Rows are a grain ``IterDataset``; with ``data.num_workers > 0`` grain's
  ``mp_prefetch`` splits the lanes over worker processes and interleaves them back in order.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import grain
import numpy as np

from mdiff.config import ConfigDict, ConfigError
from mdiff.data.corpus import STREAMS, Corpus, _h, synthetic_corpus
from mdiff.data.defaults import check_mix, check_seq_len_fits
from mdiff.data.errors import DataError
from mdiff.data.layout import LayoutError, layout_example, pack
from mdiff.vocab import Modality, UnifiedVocab

STATE_VERSION = 1


class PipelineError(DataError):
    """A pipeline that cannot run with this config and data."""


# ---------------------------------------------------------------------------------------------
# Index helpers
# ---------------------------------------------------------------------------------------------
TABLE_LIMIT = 1 << 22  # up to this many records an epoch's permutation is a table; beyond, a Feistel bijection


@functools.lru_cache(maxsize=16)
def _permutation(n: int, seed: int, stream: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, stream, epoch]).permutation(n)


def _feistel(j: int, n: int, key: int) -> int:
    """A keyed bijection of [0, n) in O(1) memory (balanced Feistel network plus cycle walking)."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    while True:
        left, right = j >> half, j & mask
        for r in range(4):
            left, right = right, left ^ (_h(key, r, right) & mask)
        j = (left << half) | right
        if j < n:
            return j


def stream_index(n: int, seed: int, stream: int, g: int) -> int:
    """Record index of the g-th item of an endless stream that reshuffles every epoch."""
    epoch, j = divmod(g, n)
    if n > TABLE_LIMIT:  # full-size data: no n-sized table per epoch
        return _feistel(j, n, _h(seed, stream, epoch))
    return int(_permutation(n, seed, stream, epoch)[j])


def fit_slot(ids: np.ndarray, slot: int, fill: int, *, keep_end: bool) -> np.ndarray:
    """Cut or fill `ids` to exactly `slot` ids; `keep_end` keeps at least one fill id at the end."""
    keep = slot - 1 if keep_end else slot
    ids = np.asarray(ids, np.int32)[:keep]
    out = np.full(slot, fill, np.int32)
    out[: len(ids)] = ids
    return out


def slot_content(n: int, slot: int, *, keep_end: bool) -> int:
    """Real positions of `n` ids fitted to `slot` by `fit_slot`: the kept ids, plus the end id with `keep_end`."""
    return min(n, slot - 1) + 1 if keep_end else min(n, slot)


def multimodal_example(
    corpus: Corpus, stream: str, record: Any, task: str, *, fill_targets: bool = False
) -> dict[str, np.ndarray]:
    """Lay out one image-text or audio-text record as `task` (unified ids, unpadded).

    Only the target's real content is a target; its slot fill is given (see mdiff.data.layout).
    """
    vocab = corpus.vocab
    target_ids, text_ids = record
    text = vocab.to_global(fit_slot(text_ids, corpus.text_slot, corpus.text_eod, keep_end=True), Modality.TEXT)
    text_content = slot_content(len(text_ids), corpus.text_slot, keep_end=True)
    if stream == "image":
        other = vocab.to_global(np.asarray(target_ids, np.int32)[: corpus.image_tokens], Modality.IMAGE)
        if len(other) != corpus.image_tokens:
            raise LayoutError(f"image record has {len(target_ids)} tokens; the tokenizer gives {corpus.image_tokens}")
        other_content = len(other)
    else:
        other = vocab.to_global(fit_slot(target_ids, corpus.audio_slot, corpus.audio_fill, keep_end=False), Modality.AUDIO)
        other_content = slot_content(len(target_ids), corpus.audio_slot, keep_end=False)
    if task in ("t2i", "t2s"):
        return layout_example(vocab, task, other, text, target_content=other_content, fill_targets=fill_targets)
    return layout_example(vocab, task, text, other, target_content=text_content, fill_targets=fill_targets)


# ---------------------------------------------------------------------------------------------
# One lane: an independent packer producing one row per step
# ---------------------------------------------------------------------------------------------
class Lane:
    def __init__(self, corpus: Corpus, spec: dict[str, Any], lane: int):
        self.corpus = corpus
        self.spec = spec
        self.lane = lane
        self.k = [0, 0, 0]  # items taken from each stream by this lane
        self.text_offset = 0  # position inside the current text document
        self.counts = [0, 0, 0]  # non-padding positions emitted per stream
        self._doc_cache: tuple[int, np.ndarray] | None = None

    # state --------------------------------------------------------------------------------
    def get_state(self) -> dict[str, Any]:
        return {"lane": self.lane, "k": list(self.k), "text_offset": self.text_offset, "counts": list(self.counts)}

    def set_state(self, state: dict[str, Any]) -> None:
        if state["lane"] != self.lane:
            raise PipelineError(f"iterator state is for lane {state['lane']}, this is lane {self.lane}")
        self.k = [int(x) for x in state["k"]]
        self.text_offset = int(state["text_offset"])
        self.counts = [int(x) for x in state["counts"]]
        self._doc_cache = None

    # streams ------------------------------------------------------------------------------
    def _global_item(self, s: int) -> int:
        return self.k[s] * self.spec["num_lanes"] + self.lane

    def _record(self, s: int) -> Any:
        stream = self.corpus.stream(STREAMS[s])
        return stream[stream_index(len(stream), self.spec["seed"], s, self._global_item(s))]

    def _document(self) -> np.ndarray:
        g = self._global_item(0)
        if self._doc_cache is None or self._doc_cache[0] != g:
            ids = np.append(np.asarray(self._record(0), np.int32), np.int32(self.corpus.text_eod))
            self._doc_cache = (g, self.corpus.vocab.to_global(ids, Modality.TEXT).astype(np.int32))
        return self._doc_cache[1]

    def _take_text(self, n: int) -> np.ndarray:
        pieces = []
        while n > 0:
            doc = self._document()
            piece = doc[self.text_offset : self.text_offset + n]
            pieces.append(piece)
            n -= len(piece)
            self.text_offset += len(piece)
            if self.text_offset >= len(doc):
                self.k[0] += 1
                self.text_offset = 0
        return np.concatenate(pieces)

    def _task(self, s: int) -> str:
        tasks, fraction = (("i2t", "t2i"), self.spec["i2t_fraction"]) if s == 1 else (("s2t", "t2s"), self.spec["s2t_fraction"])
        u = _h(self.spec["seed"], 7 + s, self._global_item(s)) / 2.0**64
        return tasks[0] if u < fraction else tasks[1]

    # packing ------------------------------------------------------------------------------
    def next_row(self) -> dict[str, np.ndarray]:
        seq_len, weights = self.spec["seq_len"], self.spec["weights"]
        lengths = self.spec["lengths"]
        target_total = sum(self.counts) + seq_len  # where the counts should stand after this row
        examples, used = [], 0
        while seq_len - used >= 2:
            room = seq_len - used
            deficits = [weights[s] * target_total - self.counts[s] for s in range(3)]
            # A stream may go first while below target; it may fill leftover room while less than one
            # row above target. Deficits stay bounded either way, so the fractions converge.
            slack = 0 if used == 0 else seq_len
            order = sorted((s for s in range(3) if weights[s] > 0 and deficits[s] > -slack), key=lambda s: -deficits[s])
            chosen = next((s for s in order if s == 0 or lengths[s] <= room), None)
            if chosen is None:
                break
            if chosen == 0:
                n = min(room - 1, max(math.ceil(deficits[0]) - 1, self.spec["min_text_chunk"]))
                smallest_other = min((lengths[s] for s in (1, 2) if weights[s] > 0), default=seq_len + 1)
                if room - 1 - n < smallest_other:
                    n = room - 1  # what would remain fits nothing else: fill the row
                example = layout_example(self.corpus.vocab, "text", self._take_text(n))
            else:
                example = multimodal_example(
                    self.corpus, STREAMS[chosen], self._record(chosen), self._task(chosen), fill_targets=self.spec["fill_targets"]
                )
                self.k[chosen] += 1
            examples.append(example)
            used += len(example["tokens"])
            self.counts[chosen] += len(example["tokens"])
        return pack(self.corpus.vocab, examples, seq_len)


# ---------------------------------------------------------------------------------------------
# grain datasets
# ---------------------------------------------------------------------------------------------
class PackedRows(grain.IterDataset):
    """Rows of the local lanes, lane-major within a step: (step 0: lanes...), (step 1: lanes...)."""

    def __init__(self, corpus: Corpus, spec: dict[str, Any], lanes: list[int]):
        super().__init__(())
        self.corpus = corpus
        self.spec = spec
        self.lanes = list(lanes)

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """grain's worker split: worker i owns lanes i, i+W, ... (they interleave back in order)."""
        del sequential_slice
        self.lanes = self.lanes[sl]

    def __iter__(self) -> "PackedRowsIterator":
        return PackedRowsIterator(self)

    def __str__(self) -> str:
        return f"PackedRows(lanes={self.lanes[0]}..{self.lanes[-1]}, seq_len={self.spec['seq_len']})"


class PackedRowsIterator(grain.DatasetIterator):
    def __init__(self, ds: PackedRows):
        super().__init__()
        self._lanes = [Lane(ds.corpus, ds.spec, lane) for lane in ds.lanes]
        self._next = 0

    def __next__(self) -> dict[str, np.ndarray]:
        row = self._lanes[self._next].next_row()
        self._next = (self._next + 1) % len(self._lanes)
        return row

    def get_state(self) -> dict[str, Any]:
        return {"next": self._next, "lanes": [lane.get_state() for lane in self._lanes]}

    def set_state(self, state: dict[str, Any]) -> None:
        if len(state["lanes"]) != len(self._lanes):
            raise PipelineError(f"iterator state holds {len(state['lanes'])} lanes, this iterator {len(self._lanes)}")
        for lane, lane_state in zip(self._lanes, state["lanes"]):
            lane.set_state(lane_state)
        self._next = int(state["next"])


# ---------------------------------------------------------------------------------------------
# The public pipeline
# ---------------------------------------------------------------------------------------------
class Pipeline:
    """Iterable of host-local batches ([local_batch, seq_len] int32 arrays per the batch contract)."""

    def __init__(self, corpus: Corpus, spec: dict[str, Any], lanes: list[int], num_workers: int = 0, repeat: int = 1):
        self.corpus = corpus
        self.vocab: UnifiedVocab = corpus.vocab
        self.spec = spec
        self.lanes = lanes
        self.repeat = repeat  # each distinct row is yielded `repeat` times in a row (anti-masking pairs)
        self.batch_size = len(lanes) * repeat
        self.seq_len = spec["seq_len"]
        ds = PackedRows(corpus, spec, lanes)
        if num_workers > 0:
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
        self._dataset = ds.batch(len(lanes), drop_remainder=True)
        self._iter = iter(self._dataset)

    def __iter__(self) -> "Pipeline":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self._iter)
        if self.repeat > 1:
            batch = {k: np.repeat(v, self.repeat, axis=0) for k, v in batch.items()}
        return batch

    def get_state(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "fingerprint": self.fingerprint(), "grain": _jsonable(self._iter.get_state())}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise PipelineError(f"iterator state version {state.get('version')!r}; this mdiff reads {STATE_VERSION}")
        if state.get("fingerprint") != self.fingerprint():
            raise PipelineError(
                f"iterator state was saved by another pipeline {state.get('fingerprint')}; this one is {self.fingerprint()}"
            )
        self._iter.set_state(state["grain"])

    def fingerprint(self) -> dict[str, Any]:
        keys = ("seed", "seq_len", "num_lanes", "weights", "i2t_fraction", "s2t_fraction", "min_text_chunk", "fill_targets")
        return {"corpus": self.corpus.name, "lanes": [self.lanes[0], self.lanes[-1] + 1], **{k: self.spec[k] for k in keys}}

    def close(self) -> None:
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()
        self._iter = None  # type: ignore[assignment]


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, bytes):
        return x.decode()
    return x


def default_data_dir(data_dir: str = "") -> str:
    if data_dir:
        return os.path.expanduser(data_dir)
    return os.environ.get("MDIFF_DATA_DIR") or os.path.expanduser("~/.cache/mdiff/data")


def open_corpus(config: ConfigDict, split: str) -> Corpus:
    """The corpus named by `config.data.dataset` ("synthetic", "embedded" or a dataset directory)."""
    dataset = config.data.dataset
    if dataset == "synthetic":
        return synthetic_corpus(split)
    from mdiff.data import reader  # the TFDS path imports tensorflow_datasets; keep synthetic light

    path = default_data_dir(config.data.data_dir) if dataset == "embedded" else os.path.expanduser(dataset)
    return reader.open_corpus(path, split, config=config)


def rows_repeated(config: ConfigDict, split: str) -> int:
    """How often each distinct row appears in a training batch: 2 with anti-masking (mask + complement), else 1."""
    return 2 if split == "train" and bool(config.diffusion.anti_masking) else 1


def rows_per_host(global_batch: int, process_count: int, repeat: int, what: str = "config.train.batch") -> int:
    """The one rule for splitting a batch over processes: each host reads an equal, contiguous share, and
    with anti-masking (`repeat` 2) that share is whole pairs. Returns the distinct rows (lanes) per host."""
    if global_batch % process_count:
        raise ConfigError(f"{what}={global_batch}: must be divisible by the {process_count} processes")
    if (global_batch // process_count) % repeat:
        raise ConfigError(
            f"{what}={global_batch}: with diffusion.anti_masking each host's rows come in pairs; "
            f"the per-host batch {global_batch // process_count} must be even"
        )
    return global_batch // process_count // repeat


def make_pipeline(
    config: ConfigDict,
    split: str = "train",
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    corpus: Corpus | None = None,
    batch: int | None = None,
) -> Pipeline:
    """The host-local batch stream of `split` for this config (see the module docstring); `batch` global
    rows per batch (default config.train.batch; evaluation passes its own)."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    global_batch = int(config.train.batch if batch is None else batch)
    what = "config.train.batch" if batch is None else "the evaluation batch"
    if process_count < 1 or not 0 <= process_index < process_count:
        raise PipelineError(f"process_index={process_index} must lie in [0, process_count={process_count})")
    repeat = rows_repeated(config, split)
    local = rows_per_host(global_batch, process_count, repeat, what)  # distinct rows (lanes) per host
    num_workers = int(config.data.num_workers)
    if num_workers and local % num_workers:
        raise ConfigError(f"config.data.num_workers={num_workers}: must divide the per-host distinct rows {local}")
    corpus = corpus if corpus is not None else open_corpus(config, split)
    spec = make_spec(config, corpus, global_batch // repeat)
    lanes = list(range(process_index * local, (process_index + 1) * local))
    return Pipeline(corpus, spec, lanes, num_workers, repeat)


def make_spec(config: ConfigDict, corpus: Corpus, num_lanes: int) -> dict[str, Any]:
    data = config.data
    mix = check_mix(data.mix)
    seq_len = int(data.seq_len)
    for name, weight in mix.items():
        if weight > 0 and len(corpus.stream(name)) == 0:
            raise PipelineError(f"config.data.mix.{name}={weight} but {corpus.name or 'the dataset'} has no {name} examples")
    check_seq_len_fits(seq_len, {name: corpus.example_length(name) for name in STREAMS}, mix, f"of {corpus.name or 'the dataset'}")
    return {
        "seed": int(config.seed),
        "seq_len": seq_len,
        "num_lanes": int(num_lanes),
        "weights": [mix[name] for name in STREAMS],
        "lengths": [corpus.example_length(name) for name in STREAMS],
        "i2t_fraction": float(data.i2t_fraction),
        "s2t_fraction": float(data.s2t_fraction),
        "min_text_chunk": int(data.min_text_chunk),
        "fill_targets": bool(data.fill_targets),
    }
