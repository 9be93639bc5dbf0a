"""mdiff.runtime: glibc keeps XLA:CPU's freed buffers, so a step does not page-fault its temporaries back in."""

import json
import os
import subprocess
import sys

import pytest

from mdiff import runtime
from helpers import run_python

# A jitted function whose 64 MB temporary is freed after every call; prints minor page faults per call.
FAULTS_PER_CALL = """
import json, resource
from mdiff.runtime import keep_freed_memory
tuned = keep_freed_memory()
import jax, jax.numpy as jnp
x, w = jnp.ones((4096, 128)), jnp.ones((128, 4096)) / 128
f = jax.jit(lambda x, w: jnp.sum(jnp.tanh(x @ w) @ w.T))
jax.block_until_ready(f(x, w))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    jax.block_until_ready(f(x, w))
print(json.dumps({"tuned": tuned, "faults": (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10}))
"""

linux_glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")


def _faults(env: dict[str, str]) -> dict:
    # No huge-page tunable (`make test` sets one): this measures the mallopt settings alone.
    return json.loads(run_python(FAULTS_PER_CALL, env={"GLIBC_TUNABLES": "", **env}).strip().splitlines()[-1])


@linux_glibc
def test_tuned_malloc_reuses_freed_pages_instead_of_faulting_them_in():
    tuned, untuned = _faults({}), _faults({"MDIFF_MALLOC_TUNING": "0"})
    assert tuned["tuned"] and not untuned["tuned"]
    # 64 MB of fresh pages is 16,384 faults per call; reused pages fault (almost) never.
    assert untuned["faults"] > 4000, untuned
    assert tuned["faults"] < 200, tuned


@linux_glibc
def test_keep_freed_memory_is_idempotent():
    first = runtime.keep_freed_memory()  # conftest already applied it
    assert first is True and runtime.keep_freed_memory() is True


def test_huge_pages_environ_adds_the_tunable_once():
    tunable = runtime.HUGE_PAGES_TUNABLE
    env = runtime.huge_pages_environ({"PATH": "/bin"}, "always [madvise] never")
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": tunable}
    assert runtime.huge_pages_environ(env, "always [madvise] never") is None, "already set: no second re-exec"
    merged = runtime.huge_pages_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "[always] madvise never")
    assert merged["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{tunable}"
    assert runtime.huge_pages_environ({}, "always madvise [never]") is None, "kernel has THP off"
    assert runtime.huge_pages_environ({}, None) is None, "no THP support"
    assert runtime.huge_pages_environ({"MDIFF_MALLOC_TUNING": "0"}, "always [madvise] never") is None


def _thp_mode() -> str:
    try:
        with open(runtime.THP_MODE_FILE) as f:
            return f.read()
    except OSError:
        return "[never]"


@linux_glibc
@pytest.mark.skipif("[never]" in _thp_mode(), reason="transparent huge pages are off on this kernel")
def test_reexec_restarts_the_command_once_with_the_tunable():
    code = """
import os, sys
print("start", flush=True)
from mdiff.runtime import reexec_with_huge_pages
reexec_with_huge_pages()
print("tunables", os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
"""
    out = subprocess.run([sys.executable, "-c", code, "arg1"], capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "MDIFF_MALLOC_TUNING")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("start") == 2, "ran once without, once with the tunable"
    assert out.stdout.strip().splitlines()[-1] == f"tunables {runtime.HUGE_PAGES_TUNABLE} ['arg1']"
