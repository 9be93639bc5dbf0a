"""Loading, overriding and validating ml-collections configs.

A config is named ``path/to/file.py:variant``; the file defines ``get_config(variant: str)``.
Overrides look like ``--config.model.width=256`` (or ``model.width=256``). Every error names the key,
the value and what would be allowed, and is raised before anything is compiled or written.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import pathlib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import ml_collections

from mdiff.errors import InputError

ConfigDict = ml_collections.ConfigDict


class ConfigError(InputError):
    """A config that cannot run: unknown file, variant or key, wrong type, impossible combination."""


# ---------------------------------------------------------------------------------------------
# Validators: each subsystem registers checks on the sections it owns.
# ---------------------------------------------------------------------------------------------
Validator = Callable[[ConfigDict], None]
_VALIDATORS: dict[tuple[str, str], Validator] = {}


def register_validator(section: str, kind: str = "diffusion") -> Callable[[Validator], Validator]:
    """Decorator: `validate` runs `fn(config)` on configs of `kind` that have `section`.

    `kind` separates model families that share section names (a symmetry config has its own `data`).
    """

    def wrap(fn: Validator) -> Validator:
        _VALIDATORS[(section, kind)] = fn
        return fn

    return wrap


def fail(key: str, value: Any, allowed: str) -> None:
    """Raise the project's standard one-line config error."""
    raise ConfigError(f"config.{key}={value!r}: {allowed}")


# Resolvers: run after overrides, before validation, to turn shorthands into the explicit fields that
# run (a model.size preset into width/depth/heads/mlp_hidden), so config.json records what trained.
_RESOLVERS: dict[tuple[str, str], Validator] = {}


def register_resolver(section: str, kind: str = "diffusion") -> Callable[[Validator], Validator]:
    """Decorator: `resolve` runs `fn(config)` (which may set keys) on configs of `kind` that have `section`."""

    def wrap(fn: Validator) -> Validator:
        _RESOLVERS[(section, kind)] = fn
        return fn

    return wrap


def resolve(config: ConfigDict) -> ConfigDict:
    """Run every registered resolver that applies (same kind, section present)."""
    kind = config.get("kind", "diffusion")
    for (section, resolver_kind), fn in _RESOLVERS.items():
        if resolver_kind == kind and section in config:
            fn(config)
    return config


def validate(config: ConfigDict) -> ConfigDict:
    """Run every registered validator that applies: same kind, and the config has the section."""
    kind = config.get("kind", "diffusion")
    for (section, validator_kind), fn in _VALIDATORS.items():
        if validator_kind == kind and (section == "*" or section in config):
            fn(config)
    return config


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ConfigSpec:
    path: pathlib.Path
    variant: str

    def __str__(self) -> str:
        return f"{self.path}:{self.variant}" if self.variant else str(self.path)


def parse_spec(spec: str) -> ConfigSpec:
    path, _, variant = spec.partition(":")
    if not path.endswith(".py"):
        raise ConfigError(f"config {spec!r}: expected FILE.py[:VARIANT], e.g. experiments/quickstart.py:tiny")
    return ConfigSpec(pathlib.Path(path), variant)


def _import_file(path: pathlib.Path) -> Any:
    resolved = path if path.is_absolute() else pathlib.Path.cwd() / path
    if not resolved.is_file():
        # Relative paths also resolve against the repository root, so commands work from anywhere.
        alt = pathlib.Path(__file__).resolve().parent.parent / path
        if alt.is_file():
            resolved = alt
        else:
            known = ", ".join(sorted(p.name for p in (alt.parent.glob("*.py") if alt.parent.is_dir() else [])))
            raise ConfigError(f"config file {str(path)!r} does not exist" + (f"; files there: {known}" if known else ""))
    return import_python_file(resolved, prefix="_mdiff_config_")


def import_python_file(path: pathlib.Path, *, prefix: str, error: type[ValueError] = ConfigError) -> Any:
    """Import a .py file by path (config and sweep files are not in a package); a file that fails to load
    (syntax error, an exception at import) raises `error` in one line naming the file and line."""
    name = f"{prefix}{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    assert module_spec and module_spec.loader
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - whatever the file does wrong, the user gets one line
        sys.modules.pop(name, None)
        raise error(f"file {str(path)!r} cannot be loaded: {describe_exception(e, path)}") from None
    return module


def describe_exception(e: BaseException, path: pathlib.Path) -> str:
    """`Type: message (FILE line N)`, N being the deepest line of `path` in the traceback (or the syntax error's)."""
    line = e.lineno if isinstance(e, SyntaxError) else None
    tb = e.__traceback__
    while tb is not None:
        if pathlib.Path(tb.tb_frame.f_code.co_filename).resolve() == pathlib.Path(path).resolve():
            line = tb.tb_lineno
        tb = tb.tb_next
    message = (e.msg if isinstance(e, SyntaxError) else str(e)).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {message}" + (f" ({pathlib.Path(path).name} line {line})" if line else "")


def variants_of(module: Any) -> tuple[str, ...]:
    return tuple(getattr(module, "VARIANTS", ()))


def call_variant(
    module: Any, function: str, variant: str, *, what: str, spec: str, path: pathlib.Path,
    error: type[InputError] = ConfigError, **kwargs: Any,
) -> tuple[str, Any]:
    """The one `FILE.py:VARIANT` rule (configs and sweeps): `module.function(variant, **kwargs)`, where no
    variant means the file's first in VARIANTS, an unknown one is refused, and an exception the file raises
    becomes one line naming the file and line. Returns (the variant used, the result)."""
    if not hasattr(module, function):
        raise error(f"{what} file {str(path)!r} defines no {function}(variant)")
    known = variants_of(module)
    variant = variant or (known[0] if known else "")
    if known and variant not in known:
        raise error(f"{what} {spec!r}: unknown variant {variant!r}; known: {', '.join(known)}")
    try:
        return variant, getattr(module, function)(variant, **kwargs)
    except error:
        raise
    except TypeError as e:
        if not kwargs:
            raise error(f"{what} {spec!r}: {function}({variant!r}) raised {describe_exception(e, path)}") from None
        raise error(f"{what} {spec!r}: {function} does not take {sorted(kwargs)} ({e})") from None
    except Exception as e:  # noqa: BLE001 - a bug in the file: one line naming where
        raise error(f"{what} {spec!r}: {function}({variant!r}) raised {describe_exception(e, path)}") from None


def load_config(spec: str, overrides: Sequence[str] = (), *, check: bool = True) -> ConfigDict:
    """Build the config `FILE.py:VARIANT`, apply overrides, validate, and lock it."""
    parsed = parse_spec(spec)
    module = _import_file(parsed.path)
    _, config = call_variant(module, "get_config", parsed.variant, what="config", spec=spec, path=parsed.path)
    if not isinstance(config, ConfigDict):
        raise ConfigError(f"config {spec!r}: get_config returned {type(config).__name__}, not a ConfigDict")
    apply_overrides(config, overrides)
    resolve(config)
    if check:
        validate(config)
    config.lock()
    return config


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------
def parse_override(text: str) -> tuple[str, str]:
    """'--config.model.width=256' -> ('model.width', '256')."""
    body = text[2:] if text.startswith("--") else text
    body = body[len("config.") :] if body.startswith("config.") else body
    key, sep, value = body.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {text!r}: expected --config.KEY=VALUE")
    return key, value


def parse_value(raw: str) -> Any:
    """A command-line value as Python: a literal if it parses as one, else the bare string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare string, e.g. model.mlp_type=gelu


def _coerce(key: str, current: Any, value: Any) -> Any:
    """Convert `value` to the type of the default, or raise naming the key and the expected type."""
    if current is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        fail(key, value, "expected a bool (True/False)")
    if isinstance(current, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        fail(key, value, "expected an int")
    if isinstance(current, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        fail(key, value, "expected a float")
    if isinstance(current, str):
        if isinstance(value, str):
            return value
        return str(value) if isinstance(value, (int, float)) else fail(key, value, "expected a string")
    if isinstance(current, (tuple, list)):
        if isinstance(value, (tuple, list)):
            return type(current)(value)
        fail(key, value, f"expected a {type(current).__name__}")
    if isinstance(current, (dict, ConfigDict)):
        fail(key, value, "is a section; override one of its keys: " + ", ".join(sorted(current.keys())))
    return value


def set_key(config: ConfigDict, key: str, value: Any) -> None:
    """Set a dotted key that must already exist, converting to the default's type."""
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ConfigDict) or part not in node:
            known = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else "(not a section)"
            raise ConfigError(f"unknown config key {key!r}: no section {'.'.join(parents[: i + 1])!r}; known: {known}")
        node = node[part]
    if not isinstance(node, ConfigDict) or leaf not in node:
        known = ", ".join(sorted(node.keys())) if isinstance(node, ConfigDict) else "(not a section)"
        raise ConfigError(f"unknown config key {key!r}; known keys here: {known}")
    if isinstance(node[leaf], ConfigDict) and isinstance(value, (dict, ConfigDict)):
        # A section set from a mapping: each key must exist (sweeps set data.mix this way).
        for sub_key, sub_value in value.items():
            set_key(config, f"{key}.{sub_key}", sub_value)
        return
    coerced = _coerce(key, node[leaf], value)
    with node.unlocked():
        node[leaf] = coerced


def apply_overrides(config: ConfigDict, overrides: Iterable[str] | dict[str, Any]) -> ConfigDict:
    """Apply CLI-style strings or a {dotted key: value} mapping (as sweeps produce)."""
    if isinstance(overrides, dict):
        items = list(overrides.items())
    else:
        items = [(k, parse_value(v)) for k, v in map(parse_override, overrides)]
    for key, value in items:
        set_key(config, key, value)
    return config


# ---------------------------------------------------------------------------------------------
# Serialisation
# ---------------------------------------------------------------------------------------------
def to_dict(config: ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort(sort_keys=True))


def to_json(config: ConfigDict) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_dict(d: dict[str, Any]) -> ConfigDict:
    return ConfigDict(d)


def get(config: Any, dotted: str, default: Any = None) -> Any:
    """The one way to read a (dotted) key from a ConfigDict, a dict or an attribute object; `default` if absent."""
    node: Any = config
    for part in dotted.split("."):
        if isinstance(node, (ConfigDict, Mapping)):
            if part not in node:
                return default
            node = node[part]
        else:
            node = getattr(node, part, _ABSENT)
            if node is _ABSENT:
                return default
    return node


_ABSENT = object()
