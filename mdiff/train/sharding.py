"""Mesh, logical-axis shardings and global batches for the train loop.

Parameters carry logical axis names (`logical_axes` metadata on each nnx.Param); `config.mesh.rules`
maps them to mesh axes. An unknown logical axis or a mesh axis used twice in one array is an error,
never a silent replication.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from mdiff.config import ConfigError
from mdiff.parallel_defaults import MESH_AXES


def mesh_shape(config: Any, num_devices: int) -> dict[str, int]:
    """Resolve `config.mesh.shape` (one axis may be -1) against the device count, or say what fits."""
    shape = {axis: int(config.mesh.shape[axis]) for axis in MESH_AXES}
    fixed = math.prod(v for v in shape.values() if v != -1)
    free = [a for a, v in shape.items() if v == -1]
    if free and num_devices % fixed == 0:
        shape[free[0]] = num_devices // fixed
    if math.prod(shape.values()) != num_devices:
        raise ConfigError(
            f"config.mesh.shape={dict(config.mesh.shape)}: needs {fixed if not free else f'a multiple of {fixed}'} "
            f"devices but {num_devices} are present; e.g. use mesh.shape.data=-1 with fsdp*tensor dividing {num_devices}"
        )
    return shape


def make_mesh(config: Any, devices: list | None = None) -> jax.sharding.Mesh:
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(config, len(devices))
    return jax.make_mesh(
        tuple(shape[a] for a in MESH_AXES), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def rules_dict(config: Any) -> dict[str, Any]:
    return {name: target for name, target in config.mesh.rules}


def logical_spec(axes: tuple, rules: dict[str, Any], what: str = "") -> P:
    """PartitionSpec for logical axis names; unknown names and reused mesh axes are errors."""
    spec, used = [], set()
    for name in axes:
        if name is None:
            spec.append(None)
            continue
        if name not in rules:
            raise ConfigError(f"config.mesh.rules: no rule for logical axis {name!r} ({what}); known: {sorted(rules)}")
        target = rules[name]
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        clash = used.intersection(targets)
        if clash:
            raise ConfigError(f"config.mesh.rules: mesh axis {sorted(clash)} used twice in {what} {axes}")
        used.update(targets)
        spec.append(None if not targets else targets[0] if len(targets) == 1 else targets)
    return P(*spec)


def data_parallel_size(mesh: jax.sharding.Mesh, config: Any) -> int:
    spec = logical_spec(("batch",), rules_dict(config), "the batch")[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else spec
    return math.prod(mesh.shape[a] for a in axes)


def batch_sharding(mesh: jax.sharding.Mesh, config: Any) -> NamedSharding:
    return NamedSharding(mesh, logical_spec(("batch", "sequence"), rules_dict(config), "the batch"))


def param_shardings(abstract_state: nnx.State, mesh: jax.sharding.Mesh, config: Any) -> dict:
    """Pure-dict tree of NamedShardings for the model's parameters, from their logical axes."""
    rules = rules_dict(config)
    out: dict = {}
    for path, var in nnx.to_flat_state(abstract_state):
        axes = var.get_metadata().get("logical_axes") or (None,) * len(var.value.shape)
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = NamedSharding(mesh, logical_spec(tuple(axes), rules, "/".join(map(str, path))))
    return out


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding, global_rows: int) -> dict[str, jax.Array]:
    """Host-local rows -> global arrays (each host passes its own contiguous slice of the batch)."""
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v), (global_rows, *np.shape(v)[1:]))
        for k, v in local.items()
    }
