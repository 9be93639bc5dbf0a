"""Loading sweep files and expanding them into validated, named runs (all checked before any starts)."""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any

from mdiff.config import call_variant, import_python_file
from mdiff.sweeps.define import Point, Sweep, SweepError, override_args, point_name, short_keys

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
SWEEPS_DIR = REPO_ROOT / "sweeps"


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One point of a sweep, ready to run: its name, its overrides and what a validated config says."""

    name: str
    overrides: Point
    config: str
    command: tuple[str, ...]
    planned_tokens: int = 0  # train.tokens of the resolved config (progress display), 0 if unknown
    module: str = "mdiff"  # run as `python -m MODULE ARGS`

    def args(self, workdir: str | pathlib.Path, common: Point | None = None) -> list[str]:
        """Arguments that run this point in `workdir` (after `python -m MODULE`)."""
        merged = {**(common or {}), **self.overrides}
        return [*self.command, "--config", self.config, "--workdir", str(workdir), *override_args(merged)]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def available_sweeps() -> list[str]:
    return sorted(p.stem for p in SWEEPS_DIR.glob("*.py") if not p.name.startswith("_"))


def load_sweep(spec: str) -> Sweep:
    """`scaling:cpu` (a file in sweeps/) or `path/to/file.py:variant` -> the Sweep, named by the spec.

    Arguments may follow the variant, big_vision style: `sampling:cpu,run=out/runs/x` calls
    `get_sweep("cpu", run="out/runs/x")`.
    """
    file_part, _, variant_args = spec.partition(":")
    variant, *arg_items = variant_args.split(",") if variant_args else [""]
    kwargs = {}
    for item in arg_items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SweepError(f"sweep {spec!r}: argument {item!r} is not KEY=VALUE")
        kwargs[key] = value
    if file_part.endswith(".py"):
        path = pathlib.Path(file_part)
        if not path.is_absolute() and not path.exists():
            path = REPO_ROOT / path
    else:
        path = SWEEPS_DIR / f"{file_part}.py"
    if not path.is_file():
        raise SweepError(f"sweep {spec!r}: no file {str(path)!r}; shipped sweeps: {', '.join(available_sweeps())}")
    variant, result = call_variant(_import(path), "get_sweep", variant, what="sweep", spec=spec, path=path, error=SweepError, **kwargs)
    if not isinstance(result, Sweep):
        raise SweepError(f"sweep {spec!r}: get_sweep returned {type(result).__name__}, not a Sweep")
    result.name = f"{path.stem}:{','.join([variant, *arg_items])}" if variant else path.stem
    return result


def _import(path: pathlib.Path) -> Any:
    return import_python_file(path, prefix="_mdiff_sweep_", error=SweepError)


# ---------------------------------------------------------------------------------------------
# Expansion and validation
# ---------------------------------------------------------------------------------------------
def expand(sweep: Sweep, *, check: bool = True) -> list[RunSpec]:
    """Name every point and (with `check`) validate it; raise one SweepError listing every bad point."""
    if not sweep.points:
        raise SweepError(f"sweep {sweep.name!r} has no points")
    shorts = short_keys(sweep.axes())
    names = [point_name(p, shorts) for p in sweep.points]
    _check_unique(sweep, names)
    runs, problems = [], []
    for name, point in zip(names, sweep.points):
        try:
            tokens = check_point(sweep, point) if check else 0
        except (SweepError, ValueError) as e:  # ConfigError is a ValueError
            problems.append(f"  {name}: {e}")
            continue
        runs.append(RunSpec(name, dict(point), sweep.config, tuple(sweep.command), tokens, sweep.module))
    if problems:
        raise SweepError(
            f"sweep {sweep.name!r}: {len(problems)} of {len(names)} points are invalid; nothing was run:\n"
            + "\n".join(problems)
        )
    return runs


def _check_unique(sweep: Sweep, names: list[str]) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            a, b = sweep.points[seen[name]], sweep.points[i]
            raise SweepError(f"sweep {sweep.name!r}: points {a} and {b} both get the run name {name!r}")
        seen[name] = i


def check_point(sweep: Sweep, point: Point) -> int:
    """Build the point's config exactly as `mdiff train` will, then check it fits its devices.

    Returns the planned token horizon (0 for configs without one).
    """
    from mdiff.config import load_config, parse_value

    for key, text in zip(point, override_args(point)):
        value = point[key]
        if parse_value(text.partition("=")[2]) != value and not isinstance(value, (tuple, list, str)):
            raise SweepError(f"{key}={value!r} does not survive the command line (parses back differently)")
    config = load_config(sweep.config, override_args({**sweep.common, **point}))
    check_fit(config, sweep.devices, sweep.hosts)
    train = config.get("train")
    return int(train.get("tokens", 0)) if train is not None else 0


def mesh_sizes(shape: dict[str, int], devices: int) -> dict[str, int]:
    """The mesh shape on each run's `devices` (the one rule: mdiff.parallel.defaults.resolve_mesh_shape)."""
    from mdiff.parallel.defaults import resolve_mesh_shape

    return resolve_mesh_shape(shape, devices, SweepError)


def check_fit(config: Any, devices: int, hosts: int = 1) -> None:
    """The mesh uses the run's devices; every (micro)batch splits evenly over the batch's mesh axes."""
    if devices < 1 or hosts < 1 or devices % hosts:
        raise SweepError(f"devices={devices} must be a positive multiple of hosts={hosts}")
    mesh = config.get("mesh")
    train = config.get("train")
    if mesh is None or train is None or "batch" not in train:
        return
    sizes = mesh_sizes(dict(mesh.shape), devices)
    rules = dict((name, target) for name, target in mesh.rules)
    target = rules.get("batch")
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    split = math.prod(sizes.get(a, 1) for a in axes)
    from mdiff.data.pipeline import rows_per_host, rows_repeated  # the trainer's own rules
    from mdiff.train.defaults import check_batch_layout

    check_batch_layout(config, split)
    rows_per_host(train.batch, hosts, rows_repeated(config, "train"))
    _check_heads(config, sizes)


def _check_heads(config: Any, sizes: dict[str, int]) -> None:
    """Attention heads split over the `tensor` axis."""
    tensor = sizes.get("tensor", 1)
    if tensor == 1:
        return
    from mdiff.model.scaling import resolve_shape

    heads = resolve_shape(config.model).heads
    if heads % tensor:
        raise SweepError(f"model heads={heads} are not divisible by mesh tensor={tensor}")
