"""`mdiff sample` / `mdiff eval` on a run directory (synthetic data, an untrained checkpoint)."""

from __future__ import annotations

import json

import pytest

from mdiff import cli, rundir
from mdiff.config import load_config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """config.json + a step-0 checkpoint, written the way training writes them; no audio in the mix."""
    from flax import nnx

    from mdiff.data.corpus import SYNTHETIC_VOCAB
    from mdiff.train import loop
    from mdiff.train.checkpoint import Checkpointer

    workdir = tmp_path_factory.mktemp("run")
    config = load_config(
        "experiments/quickstart.py:test",
        ["--config.data.mix.text=0.5", "--config.data.mix.image=0.5", "--config.data.mix.audio=0.0", "--config.sampling.num_eval_samples=4"],
    )
    run = loop.setup(config, workdir, SYNTHETIC_VOCAB)
    checkpointer = Checkpointer(workdir / rundir.CHECKPOINT_DIR, use_async=False)
    checkpointer.save(0, loop.init_state(run), {"param_shapes": loop.param_shapes(nnx.to_pure_dict(run.abstract_params))})
    checkpointer.close()
    rundir.write_config(workdir, config)
    return workdir


def test_sample_writes_outputs_and_settings(run_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("1 12 13\n4 15\n")
    out = tmp_path / "out"
    argv = ["sample", "--workdir", str(run_dir), "--task", "t2i", "--prompts", str(prompts), "--out", str(out), "--steps", "4"]
    assert cli.main(argv) == 0
    meta = json.loads((out / "samples.json").read_text())
    assert meta["task"] == "t2i" and meta["settings"]["steps"] == 4 and meta["settings"]["guidance"] == 1.0  # t2i default
    assert [s["prompt"] for s in meta["samples"]] == ["1 12 13", "4 15"]
    for sample in meta["samples"]:
        assert len(sample["ids"]) == 8 and all(0 <= i < 64 for i in sample["ids"])  # image codes of the synthetic vocab
        assert (out / sample["files"][0]).read_text().split() == [str(i) for i in sample["ids"]]

    assert cli.main(["sample", "--workdir", str(run_dir), "--task", "text", "--num", "2", "--out", str(out / "text"), "--steps", "3"]) == 0
    text = json.loads((out / "text" / "samples.json").read_text())
    assert len(text["samples"]) == 2 and len(text["samples"][0]["ids"]) == 31  # seq_len 32 minus the task token


def test_eval_writes_scores_with_real_data_references(run_dir, tmp_path):
    out = tmp_path / "eval.json"
    assert cli.main(["eval", "--workdir", str(run_dir), "--tasks", "text,i2t", "--num-samples", "3", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    text = results["tasks"]["text"]
    assert text["gen_ppl"] > 0 and text["ceiling"]["gen_ppl"] < text["shuffled"]["gen_ppl"]
    assert text["settings"]["method"] == "ancestral"  # config.sampling.text
    i2t = results["tasks"]["i2t"]
    assert i2t["ceiling"]["token_accuracy"] == 1.0 > i2t["shuffled"]["token_accuracy"]
    assert i2t["settings"]["method"] == "confidence" and i2t["settings"]["temperature"] == 0.0


def test_eval_defaults_to_every_trained_task(run_dir):
    assert cli.main(["eval", "--workdir", str(run_dir), "--num-samples", "2"]) == 0
    results = json.loads((run_dir / "eval_samples.json").read_text())
    assert sorted(results["tasks"]) == ["i2t", "t2i", "text"]  # no audio in this run's mix


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--task", "t2s", "--prompt", "1 2"], "task 't2s': this run was not trained for it"),
        (["--task", "t2i", "--prompt", "1 2 3 4 5 6 7"], "has 7 text tokens; the text slot holds at most 5"),
        (["--task", "text", "--steps", "0"], "sampling.text.steps=0: must be an integer >= 1"),
        (["--task", "t2i", "--prompt", "1", "--top-p", "0"], "sampling.t2i.top_p=0.0: must lie in (0, 1]"),
        (["--task", "text", "--guidance", "2"], "sampling.text.guidance=2.0: classifier-free guidance needs a conditional task"),
        (["--task", "t2i", "--prompt", "one two"], "this run has no tokenizers"),
    ],
)
def test_bad_input_is_a_clear_error(run_dir, tmp_path, capsys, extra, message):
    code = cli.main(["sample", "--workdir", str(run_dir), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == cli.EXIT_BAD_INPUT and message in err, err
    assert not (tmp_path / "o").exists()  # nothing written


def test_missing_run_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["eval", "--workdir", str(tmp_path)]) == cli.EXIT_BAD_INPUT
    assert "no config.json" in capsys.readouterr().err
