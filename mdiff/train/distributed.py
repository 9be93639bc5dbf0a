"""Multi-host start-up: `jax.distributed.initialize`, called before any JAX computation.

* TPU pods and SLURM jobs: JAX finds the coordinator itself (`initialize()` with no arguments).
* Anything else: an explicit coordinator from the environment (or the arguments):
  MDIFF_COORDINATOR=host:port, MDIFF_NUM_PROCESSES=N, MDIFF_PROCESS_ID=i, and optionally
  MDIFF_LOCAL_DEVICES=k (CPU only: k fake devices in this process, for tests on one machine).
* None of these: a single process; nothing to do.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax

from mdiff.config import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Cluster:
    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    local_devices: int | None = None
    auto: bool = False  # let JAX detect the cluster (TPU, SLURM)


def detect(env: dict[str, str] | None = None) -> Cluster | None:
    """What kind of multi-process job this is, from the environment; None for a single process."""
    env = dict(os.environ if env is None else env)
    local = int(env["MDIFF_LOCAL_DEVICES"]) if env.get("MDIFF_LOCAL_DEVICES") else None
    if env.get("MDIFF_COORDINATOR"):
        try:
            return Cluster(
                coordinator=env["MDIFF_COORDINATOR"],
                num_processes=int(env["MDIFF_NUM_PROCESSES"]),
                process_id=int(env["MDIFF_PROCESS_ID"]),
                local_devices=local,
            )
        except (KeyError, ValueError) as e:
            raise ConfigError(
                f"MDIFF_COORDINATOR={env['MDIFF_COORDINATOR']!r} needs MDIFF_NUM_PROCESSES and MDIFF_PROCESS_ID "
                f"as integers too ({e})"
            ) from None
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in env:
        return Cluster(None, None, None, local, auto=True)
    if env.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1 or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return Cluster(None, None, None, local, auto=True)
    if local:
        return Cluster(None, None, None, local)
    return None


def initialize(cluster: Cluster | None = None) -> bool:
    """Start the multi-process runtime if this is a multi-process job. Idempotent; True if distributed."""
    cluster = detect() if cluster is None else cluster
    if cluster is None:
        return False
    if cluster.local_devices:
        jax.config.update("jax_num_cpu_devices", cluster.local_devices)
    if cluster.coordinator is None and not cluster.auto:
        return False
    if jax.distributed.is_initialized():
        return True
    if cluster.auto:
        jax.distributed.initialize()
    else:
        if not 0 <= cluster.process_id < cluster.num_processes:
            raise ConfigError(
                f"MDIFF_PROCESS_ID={cluster.process_id}: must lie in [0, MDIFF_NUM_PROCESSES={cluster.num_processes})"
            )
        jax.distributed.initialize(
            coordinator_address=cluster.coordinator,
            num_processes=cluster.num_processes,
            process_id=cluster.process_id,
        )
    log.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    return True
