"""Device mesh, logical-axis rules, sharded initialisation and global batches.

One global mesh with axes (data, fsdp, tensor). Parameters carry logical axis names (`logical_axes`
metadata, see mdiff.model.transformer); `config.mesh.rules` maps each logical name to a mesh axis, a
tuple of mesh axes or None (replicated). An unmapped, doubly mapped or unknown axis is an error,
never a silent replication. State is created already sharded: `nnx.eval_shape` gives the abstract
model, its logical axes give shardings, and a jitted init writes each shard where it lives.

`defaults` holds `config.mesh` (defaults, rule parsing, validation) without JAX objects.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from mdiff.config import get
from mdiff.errors import InputError
from mdiff.parallel.defaults import MESH_AXES, parse_rules, resolve_mesh_shape

Rules = dict[str, Any]  # logical axis -> None | mesh axis | tuple of mesh axes


class ShardingError(InputError):
    """A mesh, rule set or array that cannot be sharded as asked."""


# ---------------------------------------------------------------------------------------------
# Mesh
# ---------------------------------------------------------------------------------------------
def mesh_shape(shape_cfg: Mapping[str, int], n_devices: int) -> tuple[int, ...]:
    """The mesh shape on `n_devices` (-1 resolved, all devices used), ordered as MESH_AXES."""
    return tuple(resolve_mesh_shape(shape_cfg, n_devices, ShardingError).values())


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp, tensor) mesh `config.mesh` describes, with Auto (GSPMD) axis types."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(dict(get(mesh_cfg, "shape")), len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices)


# ---------------------------------------------------------------------------------------------
# Logical-axis rules
# ---------------------------------------------------------------------------------------------
def logical_rules(mesh_cfg: Any) -> Rules:
    """Validated rules: every logical axis mapped exactly once, only to existing mesh axes."""
    return parse_rules(get(mesh_cfg, "rules"), ShardingError)


def logical_to_spec(axes: Sequence[str | None], rules: Rules) -> PartitionSpec:
    """PartitionSpec for an array whose dims have these logical names (None = replicated dim)."""
    out, used = [], []
    for name in axes:
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise ShardingError(f"logical axis {name!r} has no rule in config.mesh.rules")
        target = rules[name]
        flat = () if target is None else (target if isinstance(target, tuple) else (target,))
        clash = [a for a in flat if a in used]
        if clash:
            raise ShardingError(f"logical axes {tuple(axes)} would use mesh axis {clash[0]!r} twice")
        used.extend(flat)
        out.append(target)
    return PartitionSpec(*out)


def _axis_size(mesh: Mesh, target: Any) -> int:
    if target is None:
        return 1
    flat = target if isinstance(target, tuple) else (target,)
    return math.prod(mesh.shape[a] for a in flat)


def named_sharding(mesh: Mesh, shape: Sequence[int], axes: Sequence[str | None], rules: Rules, what: str = "array") -> NamedSharding:
    """NamedSharding for logical axes, with a clear error when a dim does not divide its mesh axes."""
    spec = logical_to_spec(axes, rules)
    for dim, target, name in zip(shape, spec, axes):
        size = _axis_size(mesh, target)
        if dim % size:
            raise ShardingError(
                f"{what}: dim {name!r} of size {dim} is not divisible by mesh axes {target!r} (size {size})"
            )
    return NamedSharding(mesh, spec)


# ---------------------------------------------------------------------------------------------
# Model state
# ---------------------------------------------------------------------------------------------
def _is_var(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def state_shardings(state: Any, mesh: Mesh, rules: Rules) -> Any:
    """Sharding tree for an (abstract) nnx State: from each Variable's `logical_axes` metadata."""

    def one(path: tuple, var: Any) -> Any:
        where = "/".join(str(p) for p in path)
        if not _is_var(var):
            return NamedSharding(mesh, PartitionSpec())
        axes = var.get_metadata().get("logical_axes")
        if axes is None:
            raise ShardingError(f"parameter {where} has no logical_axes annotation")
        return var.replace(named_sharding(mesh, var.shape, axes, rules, what=f"parameter {where}"))

    return jax.tree_util.tree_map_with_path(one, state, is_leaf=_is_var)


def sharded_init(make_model: Callable[[], nnx.Module], mesh: Mesh, rules: Rules) -> nnx.Module:
    """Build a model directly in its sharded layout (no full copy on any single device)."""
    abstract = nnx.eval_shape(make_model)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    def init() -> Any:
        return nnx.state(make_model())

    with use_mesh(mesh, rules):
        state = jax.jit(init, out_shardings=shardings)()
    return nnx.merge(graphdef, state)


# ---------------------------------------------------------------------------------------------
# Activations: the model calls `constrain`, a no-op unless a mesh is active
# ---------------------------------------------------------------------------------------------
_ACTIVE: list[tuple[Mesh, Rules]] = []


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules: Rules) -> Iterator[None]:
    """Make `mesh`/`rules` the target of `constrain` while tracing (and the ambient jax mesh)."""
    _ACTIVE.append((mesh, rules))
    try:
        with jax.set_mesh(mesh):
            yield
    finally:
        _ACTIVE.pop()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
    if not _ACTIVE:
        return x
    mesh, rules = _ACTIVE[-1]
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(axes, rules)))


# ---------------------------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------------------------
def batch_sharding(mesh: Mesh, rules: Rules, ndim: int = 2) -> NamedSharding:
    """Leading dim over the mesh axes of logical 'batch'; the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (ndim - 1), rules))


def batch_parallelism(mesh: Mesh, rules: Rules) -> int:
    """How many ways the global batch is split (product of the 'batch' mesh axes)."""
    return _axis_size(mesh, rules["batch"])


def check_divisible(global_batch_size: int, mesh: Mesh, rules: Rules, what: str = "config.train.batch") -> None:
    """Rows of a global array must split evenly over the batch mesh axes: the guard on the arrays
    actually built; configs are checked before training by `mdiff.train.defaults.check_batch_layout`, and
    the split over processes by the pipeline, which hands each host its share."""
    ways = batch_parallelism(mesh, rules)
    if global_batch_size % ways:
        raise ShardingError(
            f"{what}={global_batch_size} is not divisible by the data-parallel size {ways} "
            f"(mesh axes {rules['batch']!r} of shape {dict(mesh.shape)}); use a multiple of {ways}"
        )


def global_batch(host_batch: Mapping[str, Any], mesh: Mesh, rules: Rules) -> dict[str, jax.Array]:
    """This host's rows -> global jax.Arrays sharded over the batch axes (multi-host safe)."""
    out = {}
    for key, value in host_batch.items():
        value = np.asarray(value)
        global_rows = value.shape[0] * jax.process_count()
        check_divisible(global_rows, mesh, rules, what=f"global batch rows of {key!r}")
        sharding = batch_sharding(mesh, rules, value.ndim)
        global_shape = (global_rows,) + value.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
    return out
