"""Sweeps as data: a base experiment plus a list of override points built with small combinators.

A sweep file (`sweeps/NAME.py`) defines `VARIANTS` and `get_sweep(variant) -> Sweep`. Its points are
plain `{dotted config key: value}` dicts built with:

* `sweep(key, values)`: one point per value,
* `product(a, b, ...)`: every combination (keys must not overlap),
* `zipit(a, b, ...)`: element-wise pairs (equal lengths),
* `chain(a, b, ...)`: one list after the other,
* `fixed(key, value)`: a single point, handy inside `product`,
* `simplex(keys, divisions)`: mixing fractions on a grid of the probability simplex.

Nothing here imports JAX: sweep files load in milliseconds and the CLI stays fast.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

from mdiff.errors import InputError

Point = dict[str, Any]


class SweepError(InputError):
    """A sweep that cannot run: unknown file/variant, invalid points, a directory of another sweep."""


# ---------------------------------------------------------------------------------------------
# Combinators
# ---------------------------------------------------------------------------------------------
def sweep(key: str, values: Iterable[Any]) -> list[Point]:
    """One point per value of `key`."""
    values = [_plain(v) for v in values]
    if not values:
        raise SweepError(f"sweep({key!r}, ...): no values")
    return [{key: v} for v in values]


def _plain(value: Any) -> Any:
    """numpy scalars (np.linspace, np.logspace ...) become Python numbers, which print back exactly."""
    if hasattr(value, "item") and not isinstance(value, (str, bytes, tuple, list)):
        return value.item()
    return value


def fixed(key: str, value: Any) -> list[Point]:
    """A single point; `product(fixed(...), grid)` sets a key on every point of `grid`."""
    return [{key: _plain(value)}]


def product(*grids: Sequence[Point]) -> list[Point]:
    """Every combination of one point from each grid (the first grid varies slowest)."""
    keys = [set().union(*(p.keys() for p in g)) for g in grids]
    for (i, a), (j, b) in itertools.combinations(enumerate(keys), 2):
        if a & b:
            raise SweepError(f"product: grids {i} and {j} both set {sorted(a & b)}; use chain or zipit")
    return [_merge(combo) for combo in itertools.product(*grids)]


def zipit(*grids: Sequence[Point]) -> list[Point]:
    """Point i of every grid merged together; the grids must have equal lengths."""
    lengths = {len(g) for g in grids}
    if len(lengths) > 1:
        raise SweepError(f"zipit: grids have different lengths {[len(g) for g in grids]}")
    return [_merge(combo) for combo in zip(*grids)]


def chain(*grids: Sequence[Point]) -> list[Point]:
    """The points of each grid, one grid after the other."""
    return [dict(p) for g in grids for p in g]


def simplex(keys: Sequence[str], divisions: int, *, min_parts: int = 0) -> list[Point]:
    """Fractions k_i / divisions over `keys` that sum to one, each using at least `min_parts` parts.

    simplex(["data.mix.text", "data.mix.image"], 4, min_parts=1) -> (0.25, 0.75), (0.5, 0.5), (0.75, 0.25).
    """
    if divisions < 1 or min_parts < 0 or min_parts * len(keys) > divisions:
        raise SweepError(f"simplex: cannot split {divisions} parts over {len(keys)} keys with >= {min_parts} each")
    points = []
    for parts in itertools.product(range(min_parts, divisions + 1), repeat=len(keys)):
        if sum(parts) == divisions:
            points.append({k: round(p / divisions, 6) for k, p in zip(keys, parts)})
    return points


def _merge(points: Iterable[Point]) -> Point:
    merged: Point = {}
    for p in points:
        merged.update(p)
    return merged


# ---------------------------------------------------------------------------------------------
# The sweep object
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Sweep:
    """A base experiment and the override points to run it at.

    config:   the base experiment, `experiments/FILE.py:VARIANT`.
    points:   override dicts (see the combinators); each becomes one run named from its overrides.
    common:   overrides applied to every point; not axes, so they do not appear in run names.
    command:  the `mdiff` subcommand (and any fixed arguments) that runs one point: `("train",)`,
              `("symmetry", "train")`, or `("eval", "--run", DIR)` for a sampling sweep.
    module:   the Python module run as `python -m MODULE COMMAND ...` (`mdiff`, the CLI, for training;
              `mdiff.sweeps.sample_point` for sampling sweeps).
    devices:  devices each run uses (the mesh must fit them; batches must divide the data axes).
    hosts:    processes (hosts) each run spans; `mdiff sweep emit` asks the scheduler for this many nodes.
    """

    config: str
    points: list[Point]
    description: str = ""
    common: Point = dataclasses.field(default_factory=dict)
    command: tuple[str, ...] = ("train",)
    module: str = "mdiff"
    devices: int = 1
    hosts: int = 1
    name: str = ""  # filled in by the loader from the spec, e.g. "scaling:cpu"

    def axes(self) -> list[str]:
        """Swept keys in first-seen order."""
        seen: dict[str, None] = {}
        for p in self.points:
            for k in p:
                seen.setdefault(k, None)
        return list(seen)


# ---------------------------------------------------------------------------------------------
# Run names and override strings
# ---------------------------------------------------------------------------------------------
_SAFE = re.compile(r"[^A-Za-z0-9.+]+")


def format_value(value: Any) -> str:
    """Short, filesystem-safe text for a value in a run name: 2000000 -> 2M, 0.25 -> 0.25, True -> true."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return _si(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 10_000:
            return _si(int(value))
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return "x".join(format_value(v) for v in value)
    return _SAFE.sub("-", str(value)).strip("-") or "empty"


def _si(n: int) -> str:
    """Below 10000 as is; above, 4 significant digits and an SI suffix: 88064 -> 88.06k, 2000000 -> 2M."""
    if abs(n) < 10_000:
        return str(n)
    for suffix, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{suffix}"
    return str(n)


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that is unique among `keys` (model.size -> size)."""
    out: dict[str, str] = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            clashes = [k for k in keys if k != key and (k == suffix or k.endswith("." + suffix))]
            if not clashes:
                out[key] = suffix
                break
        else:
            out[key] = key
    return out


def point_name(point: Point, shorts: dict[str, str]) -> str:
    return "_".join(f"{shorts[k]}-{format_value(v)}" for k, v in point.items()) or "base"


def override_text(value: Any) -> str:
    """How a value is written on the command line (`--config.KEY=TEXT`); mdiff.config parses it back."""
    if isinstance(value, str):
        return value
    if isinstance(value, float) and not math.isfinite(value):
        raise SweepError(f"override value {value!r} is not finite")
    return repr(value)


def override_args(point: Point) -> list[str]:
    return [f"--config.{k}={override_text(v)}" for k, v in point.items()]
