"""The `mdiff` command: help everywhere, bad input as one line with exit code 2 and nothing written."""

import json
import re
import subprocess
import sys

import pytest

from mdiff import cli

TINY = "tests/configs/tiny.py"


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "mdiff", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for name in cli.SUBCOMMANDS:
        assert name in proc.stdout


@pytest.mark.parametrize("name", list(cli.SUBCOMMANDS))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([name, "--help"])
    assert info.value.code == 0
    assert "usage: mdiff " + name in capsys.readouterr().out


def test_no_command_prints_help_and_fails(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config", "tests/configs/nope.py:x"], "does not exist"),
        (["--config", f"{TINY}:huge"], "unknown variant 'huge'"),
        (["--config", TINY, "--config.model.nope=1"], "unknown config key 'model.nope'"),
        (["--config", TINY, "--config.model.width=wide"], "expected an int"),
        (["--config", TINY, "--config.train.batch", "seven"], "expected an int"),
    ],
)
def test_train_bad_input_is_one_line_exit_2_nothing_written(tmp_path, capsys, args, message):
    work = tmp_path / "run"
    assert cli.main(["train", *args, "--workdir", str(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("mdiff train: error:") and "\n" not in err
    assert not work.exists()


def test_train_refuses_a_workdir_of_another_config(tmp_path, capsys):
    work = tmp_path / "run"
    work.mkdir()
    (work / "config.json").write_text(json.dumps({"model": {"width": 999}}))
    assert cli.main(["train", "--config", TINY, "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert "different config" in err and "--overwrite" in err
    assert sorted(p.name for p in work.iterdir()) == ["config.json"]


def test_resume_and_overwrite_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["train", "--config", TINY, "--workdir", str(tmp_path), "--resume", "--overwrite"])
    assert info.value.code == 2


def test_overrides_split_from_other_arguments():
    rest, overrides = cli._split_overrides(["train", "--config", "a.py:b", "--config.x.y=1", "--config.z", "2", "--workdir", "w"])
    assert rest == ["train", "--config", "a.py:b", "--workdir", "w"]
    assert overrides == ["--config.x.y=1", "--config.z=2"]


def test_python_dash_m_and_console_script_agree():
    proc = run_cli("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("mdiff ")


def test_train_on_a_complete_run_says_so_and_changes_nothing(tmp_path, capsys):
    from mdiff import rundir
    from mdiff.config import load_config

    work = tmp_path / "run"
    rundir.write_config(work, load_config(f"{TINY}:small"))
    rundir.write_summary(work, {"status": "complete", "steps": 12, "steps_planned": 12})
    before = {p.name: p.read_bytes() for p in work.iterdir()}
    assert cli.main(["train", "--config", f"{TINY}:small", "--workdir", str(work)]) == 0
    err = capsys.readouterr().err
    assert "is complete (12 of 12 steps); nothing to do" in err
    assert {p.name: p.read_bytes() for p in work.iterdir()} == before  # no lock left, nothing rewritten


def test_train_help_documents_the_lock_exit_statuses_and_variant_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "75 preempted" in out and "One trainer per workdir" in out and "first variant" in out


@pytest.mark.parametrize("status, code", [("complete", 0), ("failed", 1), ("preempted", 75)])
def test_train_exit_status_tells_preempted_from_done(tmp_path, monkeypatch, status, code):
    """A scheduler reads the exit status: 75 (EX_TEMPFAIL) means stopped early with a checkpoint, resumable."""
    import mdiff.train.loop

    seen = {}

    def fake_train(config, workdir):
        from mdiff import rundir

        seen["holder"] = rundir.lock_holder(workdir)  # the lock is held while training
        return {"status": status}

    monkeypatch.setattr(mdiff.train.loop, "train_and_evaluate", fake_train)
    work = tmp_path / "run"
    assert cli.main(["train", "--config", f"{TINY}:small", "--workdir", str(work)]) == code
    import os

    assert seen["holder"]["pid"] == os.getpid()
    assert not work.exists()  # the lock went with the process's claim; the fake trainer wrote nothing


@pytest.mark.parametrize(
    "source, message",
    [
        ("def get_config(variant)\n    return None\n", r"file '.*bad.py' cannot be loaded: SyntaxError: .*\(bad.py line 1\)"),
        ("import no_such_module_xyz\n", r"cannot be loaded: ModuleNotFoundError: No module named 'no_such_module_xyz' \(bad.py line 1\)"),
        ("VARIANTS = ('a',)\n\ndef get_config(variant):\n    return {}['model']\n",
         r"get_config\('a'\) raised KeyError: 'model' \(bad.py line 4\)"),
    ],
)
def test_a_broken_config_file_is_one_line_exit_2_nothing_written(tmp_path, capsys, source, message):
    (tmp_path / "bad.py").write_text(source)
    work = tmp_path / "run"
    assert cli.main(["train", "--config", f"{tmp_path / 'bad.py'}:a", "--workdir", str(work)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mdiff train: error:") and "\n" not in err and re.search(message, err), err
    assert not work.exists()
