"""benchmarks/gpu.py, the one-call check prepared for a session lent a GPU, runs end to end (on CPU, tiny shapes)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_script_smoke_writes_its_tables(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu.py", "--smoke", "--out", str(tmp_path), "--skip", "train_step"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert all(r["ok"] for r in results["correctness"].values()), results["correctness"]
    assert results["large"]["ms_per_step"] > 0 and results["large"]["params"] > 0
    assert 0 < results["large"]["mfu"] < 1
    assert results["sampler"]["steps_16"]["forward_passes"] == 16
    attn = results["attention"]
    assert attn["explicit"]["ms_per_step"] > 0 and attn["fused"]["ms_per_step"] > 0
    assert attn["first_loss_rel_diff"] < 1e-5, attn  # the same computation on CPU (f32)
    table = (tmp_path / "gpu_bench.md").read_text()
    assert "correctness float32" in table and "~1B preset" in table and "steps_16" in table and "attention paths" in table
