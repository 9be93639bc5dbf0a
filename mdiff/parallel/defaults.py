"""Defaults and checks for `config.mesh`: pure Python, so validating a config builds no JAX objects."""

from __future__ import annotations

import math
from collections.abc import Mapping

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


def check_mesh_shape(shape: Mapping[str, int], error: type[Exception] = ConfigError) -> dict[str, int]:
    """The mesh shape's form, before devices are known: exactly MESH_AXES, each a positive int or -1
    ("all remaining devices"), at most one -1. Returns it ordered as MESH_AXES."""
    if set(shape) != set(MESH_AXES):
        raise error(f"config.mesh.shape={dict(shape)}: must name exactly the axes {MESH_AXES}")
    if sum(1 for v in shape.values() if v == -1) > 1:
        raise error(f"config.mesh.shape={dict(shape)}: at most one axis may be -1 (all remaining devices)")
    for axis, size in shape.items():
        if size == 0 or size < -1:
            raise error(f"config.mesh.shape.{axis}={size!r}: must be a positive int or -1")
    return {axis: int(shape[axis]) for axis in MESH_AXES}


def resolve_mesh_shape(shape: Mapping[str, int], devices: int, error: type[Exception] = ConfigError) -> dict[str, int]:
    """The mesh shape on `devices` devices: the -1 axis takes what the fixed axes leave; all are used."""
    shape = check_mesh_shape(shape, error)
    fixed = math.prod(v for v in shape.values() if v != -1)
    free = [axis for axis, v in shape.items() if v == -1]
    if free:
        if devices % fixed:
            raise error(
                f"config.mesh.shape={shape} does not fit {devices} devices: its fixed axes need a multiple of {fixed}"
            )
        shape[free[0]] = devices // fixed
    elif fixed != devices:
        raise error(f"config.mesh.shape={shape} needs {fixed} devices, have {devices}; shapes that fit: {_fitting_shapes(devices)}")
    return shape


def _fitting_shapes(n: int) -> str:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    examples = [dict(data=n // (f * t), fsdp=f, tensor=t) for f in divisors for t in divisors if n % (f * t) == 0]
    return "; ".join(str(e) for e in examples[:6]) + (" ..." if len(examples) > 6 else "") + " (or one axis -1)"


def mesh_defaults() -> ml_collections.ConfigDict:
    # -1 means "all remaining devices"; at most one axis may say so.
    return ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, tensor=1), rules=default_rules()))


@register_validator("mesh")
def validate_mesh(config: ConfigDict) -> None:
    shape = dict(config.mesh.shape)
    check_mesh_shape(shape)
    try:
        parse_rules(config.mesh.rules)
    except ValueError as err:
        raise ConfigError(str(err)) from None
