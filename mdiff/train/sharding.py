"""The train loop's view of `mdiff.parallel`: config in, mesh / shardings / global batches out.

Sharding problems (a mesh that does not fit the devices, a dimension its mesh axes do not divide)
surface as `ConfigError`s, raised before anything compiles. The optimiser and checkpoints want
parameters as pure dicts, so parameter shardings are returned in that form.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding

from mdiff import parallel
from mdiff.config import ConfigError


def _as_config_error(fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except parallel.ShardingError as e:
            raise ConfigError(str(e)) from None

    return wrapped


@_as_config_error
def make_mesh(config: Any, devices: list | None = None) -> jax.sharding.Mesh:
    return parallel.make_mesh(config.mesh, devices)


@_as_config_error
def rules(config: Any) -> parallel.Rules:
    return parallel.logical_rules(config.mesh)


def data_parallel_size(mesh: jax.sharding.Mesh, config: Any) -> int:
    return parallel.batch_parallelism(mesh, rules(config))


def batch_sharding(mesh: jax.sharding.Mesh, config: Any) -> NamedSharding:
    return parallel.batch_sharding(mesh, rules(config))


@_as_config_error
def param_shardings(abstract_state: nnx.State, mesh: jax.sharding.Mesh, config: Any) -> dict:
    """Pure-dict tree of NamedShardings for the model's parameters, from their logical axes."""
    return nnx.to_pure_dict(parallel.state_shardings(abstract_state, mesh, rules(config)))


@contextlib.contextmanager
def activation_mesh(mesh: jax.sharding.Mesh, config: Any) -> Iterator[None]:
    """While tracing inside this, the model's activation constraints target `mesh`."""
    with parallel.use_mesh(mesh, rules(config)):
        yield


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding, global_rows: int) -> dict[str, jax.Array]:
    """Host-local rows -> global arrays (each host passes its own contiguous slice of the batch)."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (global_rows, *np.shape(v)[1:]))
        for k, v in local.items()
    }
