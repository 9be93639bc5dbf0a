"""Defaults and checks for `config.mesh` (kept apart from parallel.py so configs import no JAX)."""

from __future__ import annotations

import ml_collections

from mdiff.config import ConfigDict, fail, register_validator

MESH_AXES = ("data", "fsdp", "tensor")
LOGICAL_AXES = ("batch", "sequence", "embed", "heads", "kv", "mlp", "vocab", "layers")


def default_rules() -> tuple[tuple[str, object], ...]:
    """Logical axis -> mesh axis (or None = replicated, or a tuple of mesh axes)."""
    return (
        ("batch", ("data", "fsdp")),
        ("sequence", None),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv", None),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
        ("layers", None),
    )


def mesh_defaults() -> ml_collections.ConfigDict:
    # -1 means "all remaining devices"; at most one axis may say so.
    return ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, tensor=1), rules=default_rules()))


@register_validator("mesh")
def validate_mesh(config: ConfigDict) -> None:
    shape = dict(config.mesh.shape)
    if set(shape) != set(MESH_AXES):
        fail("mesh.shape", shape, f"must name exactly the axes {MESH_AXES}")
    if sum(1 for v in shape.values() if v == -1) > 1:
        fail("mesh.shape", shape, "at most one axis may be -1 (all remaining devices)")
    for axis, size in shape.items():
        if size == 0 or size < -1:
            fail(f"mesh.shape.{axis}", size, "must be a positive int or -1")
