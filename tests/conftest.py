"""Test set-up shared by every test.

* 8 fake CPU devices, set before JAX initialises, so sharding tests run anywhere. Single-device tests
  just use the default device; tests that need another device count start a subprocess
  (`tests/helpers.py: run_with_devices`).
* absl flags marked parsed: grain's worker processes read them.
* glibc told to keep freed memory (mdiff.runtime), as the CLI and the benchmarks do.
* the persistent compilation cache on, as the CLI has it, but in a directory of this session only (so a
  test never reads what another session compiled); subprocesses inherit it through MDIFF_COMPILATION_CACHE.
"""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("MDIFF_PROGRESS", "0")
_CACHE = os.environ["MDIFF_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="mdiff-test-xla-")

from absl import flags  # noqa: E402

from mdiff.runtime import keep_freed_memory, use_compilation_cache  # noqa: E402

keep_freed_memory()  # as the CLI does: the suite runs faster without per-step page faults
use_compilation_cache()

flags.FLAGS.mark_as_parsed()


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_CACHE, ignore_errors=True)
