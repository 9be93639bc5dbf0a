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


# ---------------------------------------------------------------------------------------------
# Persistent compilation cache
# ---------------------------------------------------------------------------------------------
AVX512 = "processor : 0\nflags : fpu sse2 avx2 avx512f\n\nprocessor : 1\nflags : fpu sse2 avx2 avx512f\n"


def test_cache_entries_are_kept_apart_per_cpu_feature_set_and_jax_version():
    key = runtime.host_fingerprint(AVX512, "jax 1")
    assert key == runtime.host_fingerprint(AVX512.replace("sse2 avx2", "avx2 sse2"), "jax 1")  # flag order: same CPU
    assert key != runtime.host_fingerprint(AVX512.replace(" avx512f", ""), "jax 1")  # no AVX-512: other programs
    assert key != runtime.host_fingerprint(AVX512, "jax 2")
    assert key != runtime.host_fingerprint("", "jax 1")


def test_cache_directory_from_the_environment(tmp_path):
    assert runtime.compilation_cache_dir({"MDIFF_COMPILATION_CACHE": "0"}) is None
    assert runtime.compilation_cache_dir({"MDIFF_COMPILATION_CACHE": str(tmp_path)}) == tmp_path
    assert runtime.compilation_cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "mdiff" / "xla"


CACHE_USER = """
import json, os
from mdiff import runtime
import jax
first = runtime.use_compilation_cache()
print(json.dumps({"dir": None if first is None else str(first), "jax": jax.config.jax_compilation_cache_dir,
                  "again": str(runtime.use_compilation_cache())}))
"""


def test_use_compilation_cache_sets_a_host_subdirectory_and_respects_the_users_setting(tmp_path):
    env = {"MDIFF_COMPILATION_CACHE": str(tmp_path), "JAX_COMPILATION_CACHE_DIR": ""}
    out = json.loads(run_python(CACHE_USER, env=env).strip().splitlines()[-1])
    assert out["dir"] == out["jax"] == out["again"] and out["dir"].startswith(str(tmp_path) + os.sep)
    off = json.loads(run_python(CACHE_USER, env={**env, "MDIFF_COMPILATION_CACHE": "0"}).strip().splitlines()[-1])
    assert off["dir"] is None and not off["jax"]
    mine = json.loads(run_python(CACHE_USER, env={**env, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine")})
                      .strip().splitlines()[-1])
    assert mine["dir"] == mine["jax"] == str(tmp_path / "mine")
