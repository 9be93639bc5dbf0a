"""Defaults and checks for `config.mesh`: pure Python, so validating a config builds no JAX objects."""

from __future__ import annotations

import ml_collections

from mdiff.config import ConfigDict, ConfigError, fail, register_validator

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


def parse_rules(raw: object, error: type[Exception] = ValueError) -> dict[str, object]:
    """Rules as a dict; every logical axis mapped exactly once, only to existing mesh axes.

    Config validation and `mdiff.parallel.logical_rules` both call it.
    """
    rules: dict[str, object] = {}
    for entry in raw:  # type: ignore[attr-defined]
        if len(entry) != 2:
            raise error(f"config.mesh.rules entry {entry!r}: expected (logical_axis, mesh_axes)")
        name, target = entry[0], _normalise_target(entry[1])
        if name not in LOGICAL_AXES:
            raise error(f"config.mesh.rules: unknown logical axis {name!r}; known: {', '.join(LOGICAL_AXES)}")
        for axis in () if target is None else (target if isinstance(target, tuple) else (target,)):
            if axis not in MESH_AXES:
                raise error(f"config.mesh.rules[{name!r}] -> {axis!r}: no such mesh axis; mesh axes: {', '.join(MESH_AXES)}")
        if name in rules and rules[name] != target:
            raise error(f"config.mesh.rules maps logical axis {name!r} twice, differently: {rules[name]!r} and {target!r}")
        rules[name] = target
    missing = [a for a in LOGICAL_AXES if a not in rules]
    if missing:
        raise error(f"config.mesh.rules: no rule for logical axes {missing} (use None to replicate)")
    return rules


def _normalise_target(target: object) -> object:
    if target is None or isinstance(target, str):
        return target
    target = tuple(target)  # type: ignore[arg-type]
    return target[0] if len(target) == 1 else (target or None)


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
    try:
        parse_rules(config.mesh.rules)
    except ValueError as err:
        raise ConfigError(str(err)) from None
