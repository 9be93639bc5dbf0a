"""Run-directory writers and workdir decisions."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mdiff import rundir
from mdiff.rundir import WorkdirError


def test_jsonl_writer_appends_complete_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with rundir.JsonlWriter(path, enabled=True) as w:
        w.write({"step": 1, "loss": 2.5})
        w.write({"step": 2, "loss": float("nan")})  # non-finite -> null, still valid JSON
    records = rundir.read_jsonl(path)
    assert records == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": None}]
    assert path.read_text().endswith("\n")


def test_disabled_writer_writes_nothing(tmp_path):
    w = rundir.JsonlWriter(tmp_path / "m.jsonl", enabled=False)
    w.write({"step": 1})
    w.close()
    assert not (tmp_path / "m.jsonl").exists()


def test_killed_writer_leaves_valid_json_lines(tmp_path):
    """SIGKILL while writing as fast as possible: every line on disk parses, none is lost mid-way."""
    path = tmp_path / "metrics.jsonl"
    code = textwrap.dedent(f"""
        from mdiff.rundir import JsonlWriter
        w = JsonlWriter({str(path)!r}, enabled=True)
        step = 0
        while True:
            w.write({{"step": step, "loss": 1.0 / (step + 1), "pad": "x" * 200}})
            step += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.time() + 30
    while (not path.exists() or path.stat().st_size < 50_000) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"", "the file must end on a complete line"
    steps = [json.loads(line)["step"] for line in lines[:-1]]
    assert len(steps) > 100 and steps == list(range(len(steps)))


def test_reader_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["step"] for r in rundir.read_jsonl(path)] == [1, 2]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(ValueError, match="line 2"):
        rundir.read_jsonl(path)


def test_resumed_writer_drops_steps_after_the_checkpoint(tmp_path):
    path = tmp_path / "m.jsonl"
    with rundir.JsonlWriter(path, enabled=True) as w:
        for step in range(10):
            w.write({"step": step})
    with rundir.JsonlWriter(path, enabled=True, keep_until_step=4) as w:
        w.write({"step": 5})
    assert [r["step"] for r in rundir.read_jsonl(path)] == [0, 1, 2, 3, 4, 5]


def test_summary_is_atomic_and_checked(tmp_path):
    rundir.write_summary(tmp_path, {"status": "complete", "loss": 1.5})
    assert rundir.read_summary(tmp_path) == {"status": "complete", "loss": 1.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temp file left
    with pytest.raises(ValueError, match="status 'done'"):
        rundir.write_summary(tmp_path, {"status": "done"})
    assert rundir.read_summary(tmp_path)["status"] == "complete"


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    rundir.write_json_atomic(tmp_path / "a.json", {"x": 1})
    with pytest.raises(TypeError):
        rundir.write_text_atomic(tmp_path / "a.json", None)
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


CONFIG = {"model": {"width": 64}, "train": {"batch": 8, "progress": True}}


def test_prepare_workdir_new_same_and_different(tmp_path):
    work = tmp_path / "run"
    assert rundir.prepare_workdir(work, CONFIG) == "new"
    rundir.release_workdir(work)
    assert not work.exists()  # the lock's folder goes with it when nothing was written
    work.mkdir()
    assert rundir.prepare_workdir(work, CONFIG) == "new"  # empty folder
    rundir.write_config(work, CONFIG)
    assert rundir.prepare_workdir(work, CONFIG) == "resume"
    volatile = {"model": {"width": 64}, "train": {"batch": 8, "progress": False}}
    assert rundir.prepare_workdir(work, volatile) == "resume"
    other = {"model": {"width": 128}, "train": {"batch": 8, "progress": True}}
    with pytest.raises(WorkdirError, match=r"model.width: 64 -> 128.*--resume.*--overwrite"):
        rundir.prepare_workdir(work, other)
    assert rundir.prepare_workdir(work, other, resume=True) == "resume"
    assert rundir.read_config(work) == CONFIG  # refusing or resuming rewrote nothing
    assert rundir.prepare_workdir(work, other, overwrite=True) == "new"
    assert [p.name for p in work.iterdir()] == [rundir.LOCK_FILE]  # the old run is gone; the lock stays held
    rundir.release_workdir(work)
    assert list(work.iterdir()) == []


def test_a_trainer_killed_while_starting_leaves_a_new_run(tmp_path):
    # Killed after its lock and checkpoints/ folder but before config.json: nothing of a run was written,
    # so the next trainer starts it; a folder with a file in it still is not ours to take.
    work = tmp_path / "run"
    (work / rundir.CHECKPOINT_DIR).mkdir(parents=True)
    (work / rundir.LOCK_FILE).write_text("pid 999999\n")
    assert rundir.prepare_workdir(work, CONFIG) == "new"
    rundir.release_workdir(work)
    (work / rundir.CHECKPOINT_DIR / "stray").write_text("x")
    with pytest.raises(WorkdirError, match="not an mdiff run"):
        rundir.prepare_workdir(work, CONFIG)


def test_prepare_workdir_refuses_foreign_folders(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(WorkdirError, match="not an mdiff run"):
            rundir.prepare_workdir(tmp_path, CONFIG, overwrite=overwrite)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(WorkdirError, match="contradict"):
        rundir.prepare_workdir(tmp_path / "x", CONFIG, resume=True, overwrite=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_prepare_workdir_unwritable(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(WorkdirError, match="no permission"):
        rundir.prepare_workdir(locked / "run", CONFIG)


# ---------------------------------------------------------------------------------------------
# One trainer per run directory
# ---------------------------------------------------------------------------------------------
HOLDER = """
import sys, time
from mdiff import rundir
rundir.prepare_workdir(sys.argv[1], {config!r})
print("locked", flush=True)
time.sleep(120)
"""


def _hold(work) -> subprocess.Popen:
    """Another process that takes `work`'s trainer lock (as `mdiff train` does) and keeps it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER.format(config=CONFIG), str(work)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def _tree(path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(path.rglob("*"))}


def test_a_second_trainer_and_overwrite_are_refused_while_one_runs(tmp_path):
    work = tmp_path / "run"
    rundir.write_config(work, CONFIG)
    (work / rundir.METRICS_FILE).write_text('{"step": 1}\n')
    proc = _hold(work)
    try:
        before = _tree(work)
        holder = rundir.lock_holder(work)
        assert holder["pid"] == proc.pid and holder["host"]
        with pytest.raises(rundir.WorkdirBusy, match=rf"being trained by process {proc.pid} on .*not started"):
            rundir.prepare_workdir(work, CONFIG)
        with pytest.raises(rundir.WorkdirBusy, match=rf"process {proc.pid} .*--overwrite refused"):
            rundir.prepare_workdir(work, CONFIG, overwrite=True)
        assert _tree(work) == before  # the running run lost nothing, and nothing was written
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_left_by_a_killed_trainer_is_taken_over_with_a_message(tmp_path, capsys):
    work = tmp_path / "run"
    rundir.write_config(work, CONFIG)
    proc = _hold(work)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (work / rundir.LOCK_FILE).exists() and rundir.lock_holder(work) is None  # left behind, but held by no one
    try:
        assert rundir.prepare_workdir(work, CONFIG) == "resume"
        err = capsys.readouterr().err
        assert f"taking over the lock left by process {proc.pid}" in err and "no longer running" in err
        assert rundir.lock_holder(work)["pid"] == os.getpid()
    finally:
        rundir.release_workdir(work)
    assert not (work / rundir.LOCK_FILE).exists() and rundir.read_config(work) == CONFIG


def test_refused_workdir_keeps_no_lock(tmp_path):
    work = tmp_path / "run"
    rundir.write_config(work, {"model": {"width": 1}})
    with pytest.raises(WorkdirError, match="different config"):
        rundir.prepare_workdir(work, CONFIG)
    assert sorted(p.name for p in work.iterdir()) == [rundir.CONFIG_FILE] and rundir.lock_holder(work) is None


def test_only_process_zero_takes_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert rundir.launcher_rank() == 1
    assert rundir.prepare_workdir(tmp_path / "run", CONFIG) == "new"
    assert not (tmp_path / "run").exists()
