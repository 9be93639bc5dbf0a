"""Model FLOP utilisation: achieved model FLOP/s over the devices' peak.

Peaks are dense matmul FLOP/s per device (vendor data sheets) for the compute dtype: bfloat16, and for
float32 what the default matmul precision uses (TF32 tensor cores on NVIDIA, bf16 passes on TPU).
CPU has no data-sheet peak: its entry is a nominal 32 float32 FLOP per cycle per core (two AVX2 FMA
units) at 2.5 GHz, shared among the fake devices of the process. `train.peak_flops` overrides the table.
"""

from __future__ import annotations

import os
import re

import jax

# (pattern on device_kind, lower case) -> {dtype: FLOP/s per device}; first match wins.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    (r"h200", {"bfloat16": 989e12, "float32": 494.7e12}),
    (r"h100.*pcie", {"bfloat16": 756e12, "float32": 378e12}),
    (r"h100", {"bfloat16": 989e12, "float32": 494.7e12}),
    (r"a100", {"bfloat16": 312e12, "float32": 156e12}),
    (r"tpu v4", {"bfloat16": 275e12, "float32": 275e12}),
    (r"tpu v5 ?(lite|e)", {"bfloat16": 197e12, "float32": 197e12}),
    (r"tpu v5p?", {"bfloat16": 459e12, "float32": 459e12}),
    (r"tpu v6", {"bfloat16": 918e12, "float32": 918e12}),
)
CPU_FLOPS_PER_CORE = 32 * 2.5e9


def peak_flops_per_device(device: jax.Device | None = None, dtype: str = "bfloat16") -> float | None:
    """The table's peak for `device` (default: the first device), or None when unknown."""
    device = device or jax.devices()[0]
    if device.platform == "cpu":
        cores = os.cpu_count() or 1
        return CPU_FLOPS_PER_CORE * cores / max(jax.local_device_count(), 1)
    kind = device.device_kind.lower()
    for pattern, peaks in PEAK_FLOPS:
        if re.search(pattern, kind):
            return peaks.get(dtype, peaks["bfloat16"])
    return None


def mfu(flops_per_s: float, num_devices: int, peak_per_device: float | None) -> float | None:
    """Fraction of the peak the model's FLOPs reach (None when the peak is unknown)."""
    if not peak_per_device:
        return None
    return flops_per_s / (num_devices * peak_per_device)
