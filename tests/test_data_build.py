"""The embedded dataset: tiny build, splits, tokenizers on held-out items, prompts, integrity, errors."""

import json
import os
import shutil

import numpy as np
import pytest

from mdiff.data import raw, reader, sources
from mdiff.data.build import DatasetError, build_dataset, read_manifest, verify
from mdiff.data.layout import check_batch
from mdiff.data.pipeline import PipelineError, make_pipeline, multimodal_example
from mdiff.data.prompts import LengthRule, decode_output, make_prompt
from mdiff.data.sources import MissingPackageError
from mdiff.data.tokenizers import load_tokenizers, psnr
from mdiff.vocab import Modality
from mdiff.defaults import base_config


@pytest.fixture(scope="session")
def tiny_data(request, tmp_path_factory):
    """A real tiny build, cached in pytest's cache dir across sessions (rebuilt if damaged or stale)."""
    cache = getattr(request.config, "cache", None)
    root = cache.mkdir("mdiff_data_tiny") if cache is not None else tmp_path_factory.mktemp("mdiff_data_tiny")
    build_dataset(str(root), scale="tiny", progress=False)
    return str(root)


def embedded_config(data_dir, batch=4, seq_len=128, mix=(0.5, 0.25, 0.25)):
    config = base_config()
    config.data.dataset = "embedded"
    config.data.data_dir = data_dir
    config.data.seq_len = seq_len
    config.data.mix = dict(zip(("text", "image", "audio"), mix))
    config.train.batch = batch
    return config


def test_tiny_build_has_every_split_and_a_manifest(tiny_data):
    manifest = read_manifest(tiny_data)
    assert manifest["scale"] == "tiny" and not verify(tiny_data)
    for stream in ("text", "image", "audio"):
        for split in ("train", "validation", "test"):
            assert manifest["counts"][stream][split] > 0, (stream, split)
    assert manifest["counts"]["audio"]["real"] == len(sources.real_speech_clips())
    assert manifest["vocab"]["text_size"] <= 4096 and manifest["vocab"]["audio_size"] == 513


def test_build_is_idempotent(tiny_data):
    before = {f: os.stat(os.path.join(tiny_data, f)).st_mtime_ns for f in read_manifest(tiny_data)["files"]}
    manifest = build_dataset(tiny_data, scale="tiny", progress=False)
    after = {f: os.stat(os.path.join(tiny_data, f)).st_mtime_ns for f in manifest["files"]}
    assert before == after


def test_splits_never_share_a_source_item(tiny_data):
    for stream in ("text", "image", "audio"):
        keys = {}
        for split in ("train", "validation", "test"):
            source = reader.records(tiny_data, stream, split)
            keys[split] = {source[i]["key"] for i in range(len(source))}
        assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
        assert not keys["validation"] & keys["test"]


def test_text_tokenizer_round_trips_held_out_documents_exactly(tiny_data):
    tok = load_tokenizers(tiny_data)
    docs = raw.documents(tiny_data, "test") + [i["caption"] for i in raw.captioned_images(tiny_data, "test")]
    docs.append("Ünïcödé, tabs\tand\nnewlines — plus 🌀 emoji")
    for doc in docs:
        ids = tok.text.encode(doc)
        assert ids.min() >= 1 and ids.max() < tok.text.size  # 0 is the end-of-document id
        assert tok.text.decode(ids) == doc
    assert tok.text.decode(np.r_[tok.text.encode("a b"), 0, 0]) == "a b"  # slot filler is dropped


def test_image_tokenizer_reconstructs_held_out_images(tiny_data):
    tok = load_tokenizers(tiny_data)
    items = raw.captioned_images(tiny_data, "test")
    images = np.stack([i["image"] for i in items])
    codes = np.stack([tok.image.encode(x) for x in images])
    assert codes.shape == (len(items), tok.image_tokens) and codes.max() < tok.image.size
    rebuilt = np.stack([tok.image.decode(c) for c in codes])
    assert rebuilt.dtype == np.uint8 and rebuilt.shape == images.shape
    flat = np.full_like(images, int(images.mean()))
    assert psnr(rebuilt, images) > psnr(flat, images) + 5  # far better than the mean colour
    # Decoding then encoding a code gives it back (VQ is idempotent up to uint8 rounding).
    assert np.mean(np.stack([tok.image.encode(x) for x in rebuilt]) == codes) > 0.95


def test_audio_tokenizer_round_trip(tiny_data):
    tok = load_tokenizers(tiny_data)
    item = raw.speech_items(tiny_data, "test")[0]
    wav = raw.speech_wav(item)
    codes = tok.audio.encode(wav)
    assert len(codes) == -(-len(wav) // tok.audio.hop) and codes.max() < tok.audio.fill_id
    assert tok.audio.tokens_per_second == 16000 / tok.audio.hop
    out = tok.audio.decode(np.r_[codes, [tok.audio.fill_id] * 5])  # trailing fill is dropped
    assert out.dtype == np.float32 and len(out) == len(codes) * tok.audio.hop
    # The decoded log-mel features are close to the codes' centroids: re-encoding mostly agrees.
    assert np.mean(tok.audio.encode(out) == codes) > 0.3


def test_recogniser_measures_word_errors(tiny_data):
    from mdiff.data.quality import Recogniser, wer, word_errors

    assert word_errors("a b c d", "a x c") == (2, 4)
    clips = raw.real_speech()[5:]  # the short "cards" clips
    recognise = Recogniser([c["transcript"] for c in clips])
    assert wer(recognise, [(c["wav"], c["transcript"]) for c in clips]) < 0.2
    assert wer(recognise, [(np.zeros(16000, np.float32), c["transcript"]) for c in clips]) > 0.8


def test_embedded_pipeline_batches(tiny_data):
    pipeline = make_pipeline(embedded_config(tiny_data), process_index=0, process_count=1)
    vocab = pipeline.vocab
    assert vocab == load_tokenizers(tiny_data).vocab
    batches = [next(pipeline) for _ in range(6)]
    for batch in batches:
        check_batch(batch, vocab, 128)
    tokens = np.concatenate([b["tokens"] for b in batches])
    modality = np.concatenate([b["modality"] for b in batches])
    for m in (Modality.TEXT, Modality.IMAGE, Modality.AUDIO):
        lo, hi = vocab.range(m)
        assert ((tokens[modality == m] >= lo) & (tokens[modality == m] < hi)).all() and (modality == m).any()
    state = json.loads(json.dumps(pipeline.get_state()))
    expected = next(pipeline)
    resumed = make_pipeline(embedded_config(tiny_data), process_index=0, process_count=1)
    resumed.set_state(state)
    assert all(np.array_equal(expected[k], v) for k, v in next(resumed).items())


def test_two_hosts_split_the_embedded_batch(tiny_data):
    whole = next(make_pipeline(embedded_config(tiny_data), process_index=0, process_count=1))
    parts = [next(make_pipeline(embedded_config(tiny_data), process_index=p, process_count=2)) for p in range(2)]
    for key in whole:
        assert np.array_equal(np.concatenate([parts[0][key], parts[1][key]]), whole[key])


def test_prompts_match_the_training_layout(tiny_data):
    tok = load_tokenizers(tiny_data)
    vocab = tok.vocab
    corpus = reader.open_corpus(tiny_data, "test")
    record = corpus.image[0]
    caption = raw.captioned_images(tiny_data, "test")[0]  # same record order
    # A length rule whose i2t caption length is this record's (tokens + the end id): the fill is given as in training.
    lengths = LengthRule(audio_per_text=1.0, image_caption=min(len(record[1]), tok.text_slot - 1) + 1)
    for task, condition in (("t2i", caption["caption"]), ("i2t", caption["image"])):
        row = make_prompt(tok, task, condition, 128, lengths=lengths)
        example = multimodal_example(corpus, "image", record, task)
        n = len(example["tokens"])
        target = example["loss_mask"] > 0
        for key in ("modality", "loss_mask", "cond_mask", "segment_ids", "positions"):
            assert np.array_equal(row[key][:n], example[key]), (task, key)
        assert np.all(row["tokens"][:n][target] == vocab.mask_id)
        assert np.array_equal(row["tokens"][:n][~target], example["tokens"][~target])
        assert not row["segment_ids"][n:].any()
    row = make_prompt(tok, "t2s", "four hundred", 128)
    assert (row["loss_mask"] > 0).sum() == tok.audio_slot
    wav = raw.speech_wav(raw.speech_items(tiny_data, "test")[0])
    row = make_prompt(tok, "s2t", wav, 128)
    assert (row["loss_mask"] > 0).sum() == tok.text_slot and (row["cond_mask"] > 0).sum() == tok.audio_slot
    row = make_prompt(tok, "text", "In the beginning", 64)
    assert row["cond_mask"].sum() == len(tok.text.encode("In the beginning")) and row["loss_mask"].sum() == 63 - row["cond_mask"].sum()
    # decode_output reads a filled-in target span back.
    filled = dict(row)
    filled["tokens"] = np.where(row["loss_mask"] > 0, vocab.to_global(tok.text.encode(" God")[0], Modality.TEXT), row["tokens"])
    assert decode_output(tok, filled).startswith(" God God")


def test_damaged_file_is_reported_then_rebuilt(tiny_data, tmp_path):
    copy = str(tmp_path / "data")
    shutil.copytree(tiny_data, copy)
    record = next(f for f in read_manifest(copy)["files"] if "mdiff_text-train.array_record" in f)
    with open(os.path.join(copy, record), "r+b") as f:
        f.truncate(os.path.getsize(os.path.join(copy, record)) // 2)
    with pytest.raises(DatasetError, match="checksum"):
        make_pipeline(embedded_config(copy), process_index=0, process_count=1)
    assert verify(copy) == [f"{record} does not match its checksum (corrupted or truncated)"]


def test_damaged_build_is_rebuilt(tiny_data, tmp_path):
    copy = str(tmp_path / "data")
    shutil.copytree(tiny_data, copy)
    record = next(f for f in read_manifest(copy)["files"] if f.endswith("codebook.npy"))
    with open(os.path.join(copy, record), "ab") as f:
        f.write(b"junk")
    build_dataset(copy, scale="tiny", progress=False)
    assert not verify(copy)


def test_settings_and_shape_errors_are_clear(tiny_data):
    with pytest.raises(Exception, match="seq_len=64: too short for a audio example"):
        make_pipeline(embedded_config(tiny_data, seq_len=64), process_index=0, process_count=1)
    config = embedded_config(tiny_data)
    config.data.tokenizer.text_vocab = 1000
    with pytest.raises(DatasetError, match="other data.tokenizer settings"):
        make_pipeline(config, process_index=0, process_count=1)
    with pytest.raises(DatasetError, match="no split 'nope'"):
        make_pipeline(embedded_config(tiny_data), "nope", process_index=0, process_count=1)
    with pytest.raises(DatasetError, match="mdiff data build"):
        make_pipeline(embedded_config("/nonexistent/dir"), process_index=0, process_count=1)


def test_no_data_for_a_weighted_stream(tiny_data):
    # The "real" split holds only speech: text and image weights have no data there.
    with pytest.raises(PipelineError, match="no text examples"):
        make_pipeline(embedded_config(tiny_data), "real", process_index=0, process_count=1)


def test_missing_debian_packages_are_named(monkeypatch):
    monkeypatch.setattr(sources, "FORTUNES_DIR", "/nonexistent/fortunes")
    with pytest.raises(MissingPackageError, match="apt-get install fortunes"):
        sources.fortunes()
    monkeypatch.setattr(sources.shutil, "which", lambda name: None)
    sources._espeak.cache_clear()
    try:
        with pytest.raises(MissingPackageError, match="apt-get install espeak-ng"):
            sources.synthesize("hello")
        with pytest.raises(MissingPackageError, match="apt-get install bible-kjv`"):
            sources.bible_chapters()
    finally:
        sources._espeak.cache_clear()


def test_config_validation_of_data_keys():
    from mdiff.config import ConfigError, validate

    config = base_config()
    config.data.mix = dict(text=0.5, image=0.5, audio=0.5)
    with pytest.raises(ConfigError, match="sum to 1"):
        validate(config)
    config = base_config()
    config.data.seq_len = 64
    with pytest.raises(ConfigError, match="data.seq_len=64"):
        validate(config)
    config = base_config()
    config.data.tokenizer.image_tokens = 15
    with pytest.raises(ConfigError, match="image_tokens"):
        validate(config)


def test_reader_accepts_another_dataset_directory_with_the_same_features(tiny_data, tmp_path):
    """A directory built elsewhere (here: text only, no manifest) is read through the same code path."""
    from mdiff.data import tfds_builders

    other = str(tmp_path / "other")
    shutil.copytree(os.path.join(tiny_data, "tokenizers"), os.path.join(other, "tokenizers"))
    tok = load_tokenizers(other)
    texts = [f"document number {i}: " + "word " * (i % 50) for i in range(40)]
    examples = {"train": [dict(tokens=tok.text.encode(t), text=t, key=str(i), source="x") for i, t in enumerate(texts)]}
    tfds_builders.write("text", other, examples, 16)
    config = embedded_config(other, mix=(1.0, 0.0, 0.0))
    config.data.dataset = other
    batch = next(make_pipeline(config, process_index=0, process_count=1))
    check_batch(batch, tok.vocab, 128)
    decoded = tok.text.decode(tok.vocab.to_local(batch["tokens"][0][1:], "text"), stop_at_eod=False)
    assert decoded.startswith(texts[0]) or any(decoded.startswith(t) for t in texts)
    with pytest.raises(PipelineError, match="no image examples"):
        c = embedded_config(other)
        c.data.dataset = other
        make_pipeline(c, process_index=0, process_count=1)


def test_data_cli_hooks(tiny_data, capsys):
    from mdiff.data.commands import main

    assert main(["info", "--data-dir", tiny_data]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["checksums"] == "ok" and info["scale"] == "tiny" and info["vocab"]["size"] == load_tokenizers(tiny_data).vocab.size
    assert main(["build", "--data-dir", tiny_data, "--scale", "tiny", "--no-progress"]) == 0  # reuses the build
    assert json.loads(capsys.readouterr().out)["data_dir"] == tiny_data
    with pytest.raises(DatasetError, match="no built dataset"):
        main(["info", "--data-dir", "/nonexistent/dir"])


def test_raw_access_reproduces_the_stored_tokens(tiny_data):
    """Evaluators' raw items are the very items the datasets tokenised (speech is re-synthesised)."""
    tok = load_tokenizers(tiny_data)
    audio = reader.records(tiny_data, "audio", "test")
    for i, item in enumerate(raw.speech_items(tiny_data, "test", limit=3)):
        assert np.array_equal(tok.audio.encode(raw.speech_wav(item)), audio[i]["audio_tokens"])
        assert np.array_equal(tok.text.encode(item["transcript"]), audio[i]["transcript_tokens"])
    images = reader.records(tiny_data, "image", "validation")
    for i, item in enumerate(raw.captioned_images(tiny_data, "validation", limit=5)):
        assert np.array_equal(tok.image.encode(item["image"]), images[i]["image_tokens"])
        assert item["source"] in ("emoji", "digits") and item["caption"]
    real = raw.real_speech()
    assert len(real) == 10 and all(r["wav"].dtype == np.float32 and r["transcript"] for r in real)
    assert raw.documents(tiny_data, "validation", limit=2)[0]


def test_build_is_deterministic(tiny_data, tmp_path):
    from mdiff.data.build import content_digest

    manifest = build_dataset(str(tmp_path / "again"), scale="tiny", progress=False)
    assert manifest["content_digest"] == content_digest(tiny_data)
