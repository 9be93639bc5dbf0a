"""The grain pipeline on the synthetic corpus: contract, determinism, resume, mixing, sharding, errors."""

import json
import os

import numpy as np
import pytest

from mdiff.config import ConfigError
from mdiff.data.corpus import STREAMS
from mdiff.data.layout import check_batch
from mdiff.data.pipeline import PipelineError, make_pipeline
from mdiff.vocab import Modality
from mdiff.defaults import base_config

TASK_STREAM = {"TASK_TEXT": 0, "TASK_T2I": 1, "TASK_I2T": 1, "TASK_T2S": 2, "TASK_S2T": 2}


def synthetic_config(batch=8, seq_len=64, mix=(0.5, 0.25, 0.25), seed=0, workers=0):
    config = base_config()
    config.data.dataset = "synthetic"
    config.train.batch = batch
    config.data.seq_len = seq_len
    config.data.mix = dict(zip(STREAMS, mix))
    config.data.num_workers = workers
    config.seed = seed
    return config


def take(pipeline, n):
    return [next(pipeline) for _ in range(n)]


def same(a, b):
    return all(np.array_equal(a[k], b[k]) for k in a)


def stream_tokens(batch, vocab):
    """Non-padding positions per stream, attributed through each segment's task token."""
    counts = np.zeros(3)
    ids = {vocab.special(name): s for name, s in TASK_STREAM.items()}
    for tokens, seg in zip(batch["tokens"], batch["segment_ids"]):
        for s in np.unique(seg[seg > 0]):
            where = np.flatnonzero(seg == s)
            counts[ids[int(tokens[where[0]])]] += len(where)
    return counts


def test_batches_follow_the_contract():
    pipeline = make_pipeline(synthetic_config(), process_index=0, process_count=1)
    for batch in take(pipeline, 5):
        assert set(batch) == {"tokens", "modality", "loss_mask", "cond_mask", "segment_ids", "positions"}
        assert all(v.shape == (8, 64) and v.dtype == np.int32 for v in batch.values())
        check_batch(batch, pipeline.vocab, 64)


def test_vocab_ranges_per_modality():
    pipeline = make_pipeline(synthetic_config(), process_index=0, process_count=1)
    vocab = pipeline.vocab
    batches = take(pipeline, 5)
    for m in (Modality.TEXT, Modality.IMAGE, Modality.AUDIO):
        lo, hi = vocab.range(m)
        ids = np.concatenate([b["tokens"][b["modality"] == m] for b in batches])
        assert ids.size and ids.min() >= lo and ids.max() < hi
    for batch in batches:
        specials = batch["tokens"][batch["modality"] == Modality.NONE]
        assert specials.max() < vocab.num_specials
        # Only content is ever a target or a condition.
        assert not np.any((batch["loss_mask"] + batch["cond_mask"] > 0) & (batch["modality"] == 0))
        assert not np.any(batch["loss_mask"] & batch["cond_mask"])


def test_packing_never_crosses_into_padding():
    pipeline = make_pipeline(synthetic_config(mix=(0.2, 0.4, 0.4)), process_index=0, process_count=1)
    for batch in take(pipeline, 10):
        for row in range(batch["tokens"].shape[0]):
            seg, pos = batch["segment_ids"][row], batch["positions"][row]
            pad = seg == 0
            # Padding is one run at the end; segments are consecutive, numbered 1, 2, ...
            if pad.any():
                first = np.argmax(pad)
                assert pad[first:].all()
            content = seg[~pad]
            assert np.all(np.diff(content) >= 0) and content[0] == 1 and np.all(np.diff(np.unique(content)) == 1)
            for s in np.unique(content):
                assert np.array_equal(pos[seg == s], np.arange((seg == s).sum()))
            tokens = batch["tokens"][row]
            assert np.all(tokens[pad] == pipeline.vocab.pad_id)
            assert not batch["loss_mask"][row][pad].any() and not batch["modality"][row][pad].any()


def test_deterministic_by_seed():
    a = take(make_pipeline(synthetic_config(seed=3), process_index=0, process_count=1), 4)
    b = take(make_pipeline(synthetic_config(seed=3), process_index=0, process_count=1), 4)
    c = take(make_pipeline(synthetic_config(seed=4), process_index=0, process_count=1), 4)
    assert all(same(x, y) for x, y in zip(a, b))
    assert not all(same(x, y) for x, y in zip(a, c))


def test_resume_gives_the_same_next_batch():
    pipeline = make_pipeline(synthetic_config(), process_index=0, process_count=1)
    take(pipeline, 7)
    state = json.loads(json.dumps(pipeline.get_state()))  # must survive JSON
    expected = take(pipeline, 3)
    fresh = make_pipeline(synthetic_config(), process_index=0, process_count=1)
    fresh.set_state(state)
    assert all(same(x, y) for x, y in zip(expected, take(fresh, 3)))
    other = make_pipeline(synthetic_config(seq_len=96), process_index=0, process_count=1)
    with pytest.raises(PipelineError, match="another pipeline"):
        other.set_state(state)


@pytest.mark.parametrize("mix", [(0.5, 0.25, 0.25), (0.05, 0.5, 0.45), (0.0, 0.3, 0.7), (1.0, 0.0, 0.0)])
def test_mixing_fractions_hold_within_one_percent(mix):
    pipeline = make_pipeline(synthetic_config(mix=mix), process_index=0, process_count=1)
    counts = sum(stream_tokens(batch, pipeline.vocab) for batch in take(pipeline, 120))
    fractions = counts / counts.sum()
    assert np.all(np.abs(fractions - np.array(mix)) < 0.01), fractions


def test_two_hosts_read_disjoint_halves_of_the_single_host_batch():
    config = synthetic_config(batch=8)
    whole = take(make_pipeline(config, process_index=0, process_count=1), 3)
    halves = [take(make_pipeline(config, process_index=p, process_count=2), 3) for p in range(2)]
    for step in range(3):
        for key in whole[step]:
            assert halves[0][step][key].shape[0] == 4
            assert np.array_equal(np.concatenate([halves[0][step][key], halves[1][step][key]]), whole[step][key])
        assert not np.array_equal(halves[0][step]["tokens"], halves[1][step]["tokens"])


def test_worker_processes_give_the_same_stream_and_resume():
    config = synthetic_config(batch=4)
    expected = take(make_pipeline(config, process_index=0, process_count=1), 4)
    pipeline = make_pipeline(synthetic_config(batch=4, workers=2), process_index=0, process_count=1)
    try:
        got = take(pipeline, 2)
        state = json.loads(json.dumps(pipeline.get_state()))
        got += take(pipeline, 2)
        assert all(same(x, y) for x, y in zip(expected, got))
    finally:
        pipeline.close()
    resumed = make_pipeline(synthetic_config(batch=4, workers=2), process_index=0, process_count=1)
    try:
        resumed.set_state(state)
        assert all(same(x, y) for x, y in zip(expected[2:], take(resumed, 2)))
    finally:
        resumed.close()


def test_bad_configs_fail_clearly():
    with pytest.raises(ConfigError, match="sum to 1"):
        make_pipeline(synthetic_config(mix=(0.5, 0.5, 0.5)), process_index=0, process_count=1)
    with pytest.raises(ConfigError, match="seq_len=16: too short"):
        make_pipeline(synthetic_config(seq_len=16), process_index=0, process_count=1)
    with pytest.raises(ConfigError, match="divisible"):
        make_pipeline(synthetic_config(batch=6), process_index=0, process_count=4)
    with pytest.raises(ConfigError, match="num_workers=3"):
        make_pipeline(synthetic_config(workers=3), process_index=0, process_count=1)


def test_a_stream_with_weight_but_no_data_fails_clearly():
    from mdiff.data.corpus import synthetic_corpus

    corpus = synthetic_corpus()
    corpus.audio = []
    with pytest.raises(PipelineError, match="no audio examples"):
        make_pipeline(synthetic_config(), process_index=0, process_count=1, corpus=corpus)


def test_two_jax_processes_read_their_own_shards(tmp_path):
    """Two real `jax.distributed` processes (loopback): each reads its half, the halves form the batch."""
    import subprocess
    import sys
    import textwrap

    from helpers import free_port

    port = free_port()
    code = textwrap.dedent(
        f"""
        import sys, numpy as np, jax
        jax.config.update("jax_num_cpu_devices", 1)
        pid = int(sys.argv[1])
        jax.distributed.initialize("127.0.0.1:{port}", num_processes=2, process_id=pid)
        from mdiff.data.pipeline import make_pipeline
        from mdiff.defaults import base_config
        config = base_config()
        config.data.dataset, config.train.batch, config.data.seq_len = "synthetic", 8, 64
        pipeline = make_pipeline(config)  # process index/count from jax
        assert pipeline.lanes == list(range(4 * pid, 4 * pid + 4))
        np.savez("{tmp_path}/part%d.npz" % pid, **next(pipeline))
        jax.distributed.shutdown()
        """
    )
    env = {**os.environ, "XLA_FLAGS": ""}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(p)], env=env, stderr=subprocess.PIPE, text=True) for p in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
    whole = next(make_pipeline(synthetic_config(batch=8), process_index=0, process_count=1))
    parts = [np.load(tmp_path / f"part{p}.npz") for p in range(2)]
    for key in whole:
        assert np.array_equal(np.concatenate([parts[0][key], parts[1][key]]), whole[key])


@pytest.mark.parametrize("n", [1, 7, 1000, 4099])
def test_stream_order_is_a_permutation_per_epoch(n, monkeypatch):
    from mdiff.data import pipeline

    for limit in (1 << 22, 0):  # the table and the O(1)-memory bijection for full-size data
        monkeypatch.setattr(pipeline, "TABLE_LIMIT", limit)
        order = [pipeline.stream_index(n, 0, 1, g) for g in range(2 * n)]
        assert sorted(order[:n]) == list(range(n)) and sorted(order[n:]) == list(range(n))
        assert n < 10 or order[:n] != order[n:]  # reshuffled every epoch


# -- what is a target: real content only (slot fill is given unless data.fill_targets) -----------------
def _record_example(task, target, condition, fill_targets=False):
    from mdiff.data.corpus import synthetic_corpus
    from mdiff.data.pipeline import multimodal_example

    corpus = synthetic_corpus()
    stream = "image" if task in ("t2i", "i2t") else "audio"
    text, other = (condition, target) if task in ("t2i", "t2s") else (target, condition)
    record = (np.asarray(other, np.int32), np.asarray(text, np.int32))  # (image/audio ids, text ids)
    return corpus, multimodal_example(corpus, stream, record, task, fill_targets=fill_targets)


@pytest.mark.parametrize("fill_targets", [False, True])
def test_caption_targets_are_its_tokens_and_one_end_id(fill_targets):
    # Text slot 6, caption of 2 tokens: targets = 2 tokens + the end-of-document id that ends it (3);
    # the 3 fill ids after it are given (0) or, with fill_targets, fill targets (2).
    corpus, ex = _record_example("s2t", target=[3, 4], condition=[1, 2, 3, 4], fill_targets=fill_targets)
    span = ex["loss_mask"][-7:-1]  # the text slot, before END_TEXT
    fill = 2 if fill_targets else 0
    assert span.tolist() == [1, 1, 1, fill, fill, fill]
    eod = corpus.vocab.to_global(np.array([corpus.text_eod]), Modality.TEXT)[0]
    assert ex["tokens"][-7:-1].tolist()[2:] == [eod] * 4
    assert ex["cond_mask"][-7:-1].sum() == 0  # fill is not a condition either (never dropped)


def test_audio_targets_are_the_clip_codes_only():
    corpus, ex = _record_example("t2s", target=[5, 6, 7, 8], condition=[1, 2])  # audio slot 10, clip of 4
    span = ex["loss_mask"][-11:-1]
    assert span.tolist() == [1] * 4 + [0] * 6


def test_a_full_slot_is_all_targets():
    corpus, ex = _record_example("s2t", target=list(range(1, 20)), condition=[1, 2])  # caption cut to 5 + end id
    assert ex["loss_mask"][-7:-1].tolist() == [1] * 6
    corpus, ex = _record_example("t2s", target=list(range(1, 30)), condition=[1, 2])  # clip cut to the slot
    assert ex["loss_mask"][-11:-1].tolist() == [1] * 10


def test_every_caption_target_span_ends_with_its_single_end_id():
    # Over the whole stream: in each i2t/s2t text target span exactly one end-of-document id is a
    # target, and it is the last target (fill after it is never a target).
    pipeline = make_pipeline(synthetic_config(batch=8, seq_len=64, mix=(0.0, 0.5, 0.5)), process_index=0, process_count=1)
    vocab = pipeline.vocab
    eod = vocab.to_global(np.array([pipeline.corpus.text_eod]), Modality.TEXT)[0]
    spans = 0
    for batch in take(pipeline, 4):
        for tokens, seg, loss, mod in zip(batch["tokens"], batch["segment_ids"], batch["loss_mask"], batch["modality"]):
            for s in np.unique(seg[seg > 0]):
                where = (seg == s) & (loss > 0) & (mod == Modality.TEXT)
                if not where.any():
                    continue
                spans += 1
                target_tokens = tokens[where]
                assert np.sum(target_tokens == eod) == 1 and target_tokens[-1] == eod
                assert np.all(loss[where] == 1)
    assert spans > 10


def test_anti_masking_pairs_uses_every_packed_row():
    # With anti-masking the step masks row 2g and gives row 2g+1 the complement, so the pipeline yields
    # each distinct row twice, and the distinct rows are exactly those of a batch-B/2 stream: no lane's
    # row is packed and then dropped.
    paired_config = synthetic_config(batch=8)
    paired_config.diffusion.anti_masking = True
    paired = make_pipeline(paired_config, process_index=0, process_count=1)
    plain = make_pipeline(synthetic_config(batch=4), process_index=0, process_count=1)
    assert paired.repeat == 2 and plain.repeat == 1
    for a, b in zip(take(paired, 3), take(plain, 3)):
        for key in a:
            np.testing.assert_array_equal(a[key][0::2], a[key][1::2])
            np.testing.assert_array_equal(a[key][0::2], b[key])
    evaluation = make_pipeline(paired_config, "validation", process_index=0, process_count=1)
    assert evaluation.repeat == 1 and next(evaluation)["tokens"].shape[0] == 8
