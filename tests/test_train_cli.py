"""`mdiff train` as a scheduler sees it, end to end: one trainer per workdir, exit 75 on SIGTERM, resume,
and a finished run that says it is complete (slow: a real training process, about two minutes)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from mdiff import rundir

CONFIG = "experiments/quickstart.py:test"


def train(workdir, *extra, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mdiff", "train", "--config", CONFIG, "--workdir", str(workdir), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_lock_preemption_exit_status_resume_and_complete(tmp_path):
    work = tmp_path / "run"
    first = train(work)
    deadline = time.monotonic() + 600
    while not rundir.read_jsonl(work / rundir.METRICS_FILE) and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.2)
    # A second trainer, with or without --overwrite, is refused while the first one trains: one line, exit 2.
    for extra in ((), ("--overwrite",)):
        second = train(work, *extra)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2 and f"being trained by process {first.pid}" in err, err
        assert len(err.strip().splitlines()) == 1
    assert (work / rundir.CONFIG_FILE).exists()
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=300)
    summary = rundir.read_summary(work)
    assert first.returncode == rundir.EXIT_PREEMPTED == 75, err[-2000:]
    assert summary["status"] == "preempted" and summary["steps"] < summary["steps_planned"]
    resumed = train(work)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-2000:]
    assert rundir.read_summary(work)["status"] == "complete" and not (work / rundir.LOCK_FILE).exists()
    before = (work / rundir.SUMMARY_FILE).read_text()
    again = train(work)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "is complete" in err and (work / rundir.SUMMARY_FILE).read_text() == before
    assert json.loads(before)["steps"] == json.loads(before)["steps_planned"]
