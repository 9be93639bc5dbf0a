"""Test set-up shared by every test.

* 8 fake CPU devices, set before JAX initialises, so sharding tests run anywhere. Single-device tests
  just use the default device; tests that need another device count start a subprocess
  (`tests/helpers.py: run_with_devices`).
* absl flags marked parsed: grain's worker processes read them.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("MDIFF_PROGRESS", "0")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()
