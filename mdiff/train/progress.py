"""A one-line progress bar on stderr (process 0; off with train.progress=False or MDIFF_PROGRESS=0)."""

from __future__ import annotations

import os
import sys
import time

import jax


def progress_enabled(config_flag: bool) -> bool:
    return bool(config_flag) and os.environ.get("MDIFF_PROGRESS", "1") != "0" and jax.process_index() == 0


class Progress:
    def __init__(self, total: int, start: int = 0, *, enabled: bool = True, stream=None):
        self.total, self.start = total, start
        self.enabled = progress_enabled(enabled)
        self.stream = stream or sys.stderr
        self.t0 = time.time()

    def update(self, step: int, loss: float | None = None) -> None:
        if not self.enabled:
            return
        width = 30
        done = int(width * step / max(self.total, 1))
        rate = (step - self.start) / max(time.time() - self.t0, 1e-9)
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        text = f"\r[{'#' * done}{'.' * (width - done)}] {step}/{self.total} loss {loss:.4f} {rate:.2f} it/s eta {eta:.0f}s"
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
