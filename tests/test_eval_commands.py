"""`mdiff sample` / `mdiff eval` on a run directory (synthetic data, an untrained checkpoint)."""

from __future__ import annotations

import json

import pytest

from mdiff import cli, rundir
from mdiff.config import load_config
from mdiff.errors import InputError


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


# ---------------------------------------------------------------------------------------------
# Readers never change a run; an older step only when asked for
# ---------------------------------------------------------------------------------------------
def _tree(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(path.rglob("*"))}


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory):
    """Checkpoints of steps 1 and 2, summary complete at 2, and a save in progress (orbax's tmp folder)."""
    import jax
    import numpy as np
    from flax import nnx

    from mdiff.data.corpus import SYNTHETIC_VOCAB
    from mdiff.train import loop
    from mdiff.train.checkpoint import Checkpointer

    workdir = tmp_path_factory.mktemp("two_steps")
    config = load_config("experiments/quickstart.py:test", ["--config.data.mix.text=1.0", "--config.data.mix.image=0.0",
                                                            "--config.data.mix.audio=0.0"])
    run = loop.setup(config, workdir, SYNTHETIC_VOCAB)
    checkpointer = Checkpointer(workdir / rundir.CHECKPOINT_DIR, keep=3, use_async=False)
    meta = {"param_shapes": loop.param_shapes(nnx.to_pure_dict(run.abstract_params))}
    # Zeros in the trained state's shapes and shardings: what is read back matters here, not its values
    # (and no initialiser to compile).
    state = jax.tree.map(lambda s: jax.device_put(np.zeros(s.shape, s.dtype), s.sharding), run.abstract_state)
    for step in (1, 2):
        checkpointer.save(step, state, meta)
    checkpointer.close()
    rundir.write_config(workdir, config)
    rundir.write_summary(workdir, {"status": "complete", "steps": 2})
    (workdir / rundir.CHECKPOINT_DIR / "3.orbax-checkpoint-tmp-1").mkdir()  # a trainer saving right now
    return workdir


def _corrupt(step_dir) -> None:
    for path in sorted(step_dir.rglob("*")):
        if path.is_file() and path.stat().st_size:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_unreadable_final_step_is_an_error_and_the_run_is_untouched(two_step_run, tmp_path, capsys):
    import shutil

    work = tmp_path / "run"
    shutil.copytree(two_step_run, work)
    _corrupt(work / rundir.CHECKPOINT_DIR / "2" / "state")
    before = _tree(work)
    sample = ["sample", "--workdir", str(work), "--task", "text", "--num", "1", "--steps", "2"]
    assert cli.main([*sample, "--out", str(tmp_path / "s")]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert "checkpoint step 2 is unreadable" in err and "pass --step 1" in err and "\n" not in err, err
    assert _tree(work) == before and not (tmp_path / "s").exists()
    assert cli.main(["eval", "--workdir", str(work), "--num-samples", "1", "--out", str(tmp_path / "e.json")]) == cli.EXIT_BAD_INPUT
    assert "pass --step 1" in capsys.readouterr().err and _tree(work) == before
    # Asked for by number, the older step is used and recorded.
    assert cli.main([*sample, "--out", str(tmp_path / "s"), "--step", "1"]) == 0
    meta = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert meta["step"] == 1 and meta["final_step"] == 2
    assert _tree(work) == before  # no step renamed, no tmp folder cleaned, nothing added


def test_final_step_missing_needs_an_explicit_step(two_step_run, tmp_path, capsys):
    import shutil

    work = tmp_path / "run"
    shutil.copytree(two_step_run, work)
    rundir.write_summary(work, {"status": "complete", "steps": 3})  # its last checkpoint was set aside
    before = _tree(work)
    assert cli.main(["sample", "--workdir", str(work), "--task", "text", "--out", str(tmp_path / "s")]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "no checkpoint of step 3 (the run's final step); on disk: [1, 2]; pass --step 2" in err
    assert cli.main(["sample", "--workdir", str(work), "--task", "text", "--out", str(tmp_path / "s"), "--step", "5"]) == 2
    assert "no checkpoint of step 5 (--step)" in capsys.readouterr().err and _tree(work) == before


@pytest.mark.parametrize("flag, value", [("--batch-size", "-3"), ("--batch-size", "0"), ("--num", "0")])
def test_non_positive_counts_are_one_line_errors(run_dir, tmp_path, capsys, flag, value):
    assert cli.main(["sample", "--workdir", str(run_dir), "--task", "text", flag, value, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{flag}={value}: must be >= 1" in err and "\n" not in err and not (tmp_path / "o").exists()


def test_out_naming_an_existing_file_is_refused(run_dir, tmp_path, capsys):
    out = tmp_path / "taken.txt"
    out.write_text("mine")
    assert cli.main(["sample", "--workdir", str(run_dir), "--task", "text", "--out", str(out)]) == 2
    assert "is an existing file" in capsys.readouterr().err and out.read_text() == "mine"
    assert cli.main(["eval", "--workdir", str(run_dir), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_a_prompt_file_that_is_not_wav_or_image_is_a_clear_error(tmp_path):
    from mdiff.diffusion.sampling import SamplingError
    from mdiff.eval.commands import _load_condition

    bad = tmp_path / "speech.wav"
    bad.write_text("not audio at all")
    with pytest.raises(SamplingError, match=r"task 's2t': prompt .* is not a 16-bit PCM WAV file: not a WAV file"):
        _load_condition("s2t", str(bad), has_tokenizers=True)
    with pytest.raises(SamplingError, match=r"task 'i2t': prompt .* is not an image file"):
        _load_condition("i2t", str(bad), has_tokenizers=True)
    assert issubclass(SamplingError, InputError)


def test_abandoned_reads_of_a_bad_checkpoint_stay_quiet(monkeypatch):
    """Only the `Event loop is closed` aftermath of a failed restore is dropped; other unraisables still print."""
    import sys
    import types

    from mdiff.train import checkpoint

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    checkpoint._quiet_abandoned_reads()
    checkpoint._quiet_abandoned_reads()  # installed once
    sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError("Event loop is closed")))
    other = RuntimeError("something else")
    sys.unraisablehook(types.SimpleNamespace(exc_value=other))
    assert seen == [other]
