"""Our hand-written event files read back with TensorBoard's own reader (independent implementation)."""

import pytest

from mdiff.tensorboard import ScalarEventWriter, crc32c


def test_crc32c_known_vectors():
    # RFC 3720 test vectors for CRC32C.
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA


def test_tensorboard_reads_our_scalars(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    writer = ScalarEventWriter(tmp_path)
    for step in range(1, 6):
        writer.write(step, {"loss": 10.0 / step, "loss/text": 2.0 * step, "note": "ignored"})
    writer.close()
    acc = event_accumulator.EventAccumulator(str(tmp_path))
    acc.Reload()
    assert sorted(acc.Tags()["scalars"]) == ["loss", "loss/text"]
    loss = acc.Scalars("loss")
    assert [e.step for e in loss] == [1, 2, 3, 4, 5]
    assert [e.value for e in loss] == pytest.approx([10.0 / s for s in range(1, 6)], rel=1e-6)


def test_metrics_writer_mirrors_to_tensorboard(tmp_path):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    from mdiff.rundir import JsonlWriter, read_jsonl

    with JsonlWriter(tmp_path / "metrics.jsonl", enabled=True, tensorboard_dir=tmp_path / "tb") as w:
        w.write({"step": 3, "loss": 1.25, "lr": 0.5})
    assert read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 3, "loss": 1.25, "lr": 0.5}]
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("lr")] == [(3, 0.5)]
