"""Helpers for tests that must run in a fresh interpreter (other device counts, several processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_python(code: str, *, devices: int = 1, env: dict | None = None, timeout: float = 600) -> str:
    """Run `code` in a new interpreter with `devices` fake CPU devices; return stdout, raise on failure."""
    full_env = dict(os.environ)
    full_env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout
