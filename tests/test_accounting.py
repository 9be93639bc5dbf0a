"""What a run records means what it says: token counts, the compute model and the optimiser plan's units.

One tiny anti-masked training run of the test config (12 steps of 16 x 32 tokens: the test devices are 8
data-parallel CPUs, and anti-masking pairs rows). Expected values are
the definitions: with anti-masking a step computes on batch x seq_len tokens (`tokens_processed`) of
which half are distinct data (`tokens`, the D of fits); `flops` = tokens_processed x flops_per_token;
non-embedding + embedding parameters = total.
"""

import json

import pytest

from mdiff import rundir
from mdiff.config import load_config
from mdiff.train import loop


@pytest.fixture(scope="module")
def anti_masked_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("accounting")
    config = load_config("experiments/quickstart.py:test", ["--config.diffusion.anti_masking=True", "--config.train.batch=16",
                                                            "--config.train.eval_batch=16", f"--config.train.tokens={12 * 16 * 32}"])
    loop.train_and_evaluate(config, workdir)
    return workdir


def test_tokens_count_distinct_data_and_processed(anti_masked_run):
    records = rundir.read_jsonl(anti_masked_run / rundir.METRICS_FILE)
    for r in records:
        assert r["tokens_processed"] == r["step"] * 16 * 32
        assert r["tokens"] == r["step"] * 8 * 32  # every row appears twice (mask + complement)
    summary = json.loads((anti_masked_run / rundir.SUMMARY_FILE).read_text())
    assert summary["tokens"] == 12 * 8 * 32 and summary["tokens_processed"] == 12 * 16 * 32
    for e in rundir.read_jsonl(anti_masked_run / rundir.EVAL_FILE):
        assert e["tokens"] == e["step"] * 8 * 32


def test_one_compute_model_is_recorded(anti_masked_run):
    s = json.loads((anti_masked_run / rundir.SUMMARY_FILE).read_text())
    assert s["params_nonembedding"] == s["params"]
    assert s["params_nonembedding"] + s["params_embedding"] == s["params_total"]
    assert s["flops"] == pytest.approx(s["tokens_processed"] * s["flops_per_token"])
    plan = s["plan"]
    assert plan["batch_tokens"] == 16 * 32 and plan["batch_tokens_base"] == 8 * 32
    assert plan["units"]["batch_tokens"] == "tokens per step"
