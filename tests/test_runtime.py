"""mdiff.runtime: glibc keeps XLA:CPU's freed buffers, so a step does not page-fault its temporaries back in."""

import json
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
    return json.loads(run_python(FAULTS_PER_CALL, env=env).strip().splitlines()[-1])


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
