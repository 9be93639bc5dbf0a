"""Masking schedules, named by formula.

alpha(t) is the probability that a token is still *unmasked* at time t in [0, 1]. Each schedule
object gives alpha, its derivative alpha' and the continuous-time ELBO weight
w(t) = -alpha'(t) / (1 - alpha(t)). All methods accept floats or jnp arrays.

Names (the registry parses them; an unknown name lists the known forms):

    linear                 alpha = 1 - t
    polynomial(p)          alpha = 1 - t^p
    cosine                 alpha = cos(pi t / 2)
    sine                   alpha = 1 - sin(pi t / 2)        (md4 calls this one "cosine")
    geometric(smin,smax)   alpha = exp(-smin^(1-t) smax^t)  (alpha(0) = exp(-smin), alpha(1) = exp(-smax))

The bound is complete for every schedule, including those with alpha(0) < 1 or alpha(1) > 0 and the
clipped times: the diffusion runs over s in [t_min, 1 - t_min], and what it does not cover is
`endpoint_mass(t_min)` = (1 - alpha(t_min)) + alpha(1 - t_min) per target token, charged log V_m
nats each by mdiff.diffusion.loss (md4's reconstruction term, plus the matching prior term). So
(1 - 2 t_min) E_s[w(s)(1 - alpha(s))] + endpoint_mass = alpha(t_min) - alpha(1 - t_min) +
endpoint_mass = 1 exactly: a denoiser that predicts uniformly gets NELBO = log V per token.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from mdiff.config import get
from mdiff.errors import InputError
from mdiff.vocab import MODALITY_BY_NAME, Modality


class ScheduleError(InputError):
    """An unknown or malformed schedule name."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base class: subclasses define `alpha` and `alpha_prime`; the weight follows."""

    def alpha(self, t: Any) -> Any:
        raise NotImplementedError

    def alpha_prime(self, t: Any) -> Any:
        raise NotImplementedError

    def weight(self, t: Any) -> Any:
        """ELBO weight w(t) = -alpha'(t) / (1 - alpha(t)) >= 0 (undefined at t = 0; clip t)."""
        return -self.alpha_prime(t) / (1.0 - self.alpha(t))

    def complement_weight(self, t: Any) -> Any:
        """Weight -alpha'(t) / alpha(t) of the complementary mask (masked with probability alpha(t)).

        With t ~ U(0, 1), a mask whose positions are masked with probability alpha(t) is an unbiased
        ELBO sample when weighted by this (the anti-masking partner; see mdiff.diffusion.loss).
        """
        return -self.alpha_prime(t) / self.alpha(t)

    def endpoint_mass(self, t_min: float) -> float:
        """Per-token mass the clipped diffusion [t_min, 1 - t_min] leaves out: (1 - alpha(t_min)) + alpha(1 - t_min).

        The first part is md4's reconstruction term (tokens already masked at the start, decoded
        uniformly), the second the prior term (tokens still visible at the end, against a prior that
        keeps each visible with that probability and draws it uniformly).
        """
        with jax.ensure_compile_time_eval():  # a constant even when called while tracing
            return float(1.0 - self.alpha(t_min) + self.alpha(1.0 - t_min))

    @property
    def name(self) -> str:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Linear(Schedule):
    def alpha(self, t: Any) -> Any:
        return 1.0 - t

    def alpha_prime(self, t: Any) -> Any:
        return -jnp.ones_like(jnp.asarray(t, jnp.float32))

    def weight(self, t: Any) -> Any:
        return 1.0 / t  # exact simplification, avoids 0/0 noise near t = 0

    @property
    def name(self) -> str:
        return "linear"


@dataclasses.dataclass(frozen=True)
class Polynomial(Schedule):
    p: float

    def alpha(self, t: Any) -> Any:
        return 1.0 - t**self.p

    def alpha_prime(self, t: Any) -> Any:
        return -self.p * t ** (self.p - 1.0)

    def weight(self, t: Any) -> Any:
        return self.p / t

    @property
    def name(self) -> str:
        return f"polynomial({_fmt(self.p)})"


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
    def alpha(self, t: Any) -> Any:
        return jnp.cos(0.5 * jnp.pi * t)

    def alpha_prime(self, t: Any) -> Any:
        return -0.5 * jnp.pi * jnp.sin(0.5 * jnp.pi * t)

    def weight(self, t: Any) -> Any:
        return 0.5 * jnp.pi / jnp.tan(0.25 * jnp.pi * t)  # (pi/2) sin x / (1 - cos x) = (pi/2) cot(x/2); finite in f32 near 0

    @property
    def name(self) -> str:
        return "cosine"


@dataclasses.dataclass(frozen=True)
class Sine(Schedule):
    def alpha(self, t: Any) -> Any:
        return 1.0 - jnp.sin(0.5 * jnp.pi * t)

    def alpha_prime(self, t: Any) -> Any:
        return -0.5 * jnp.pi * jnp.cos(0.5 * jnp.pi * t)

    def weight(self, t: Any) -> Any:
        return 0.5 * jnp.pi * jnp.cos(0.5 * jnp.pi * t) / jnp.sin(0.5 * jnp.pi * t)

    @property
    def name(self) -> str:
        return "sine"


@dataclasses.dataclass(frozen=True)
class Geometric(Schedule):
    s_min: float
    s_max: float

    def _sigma(self, t: Any) -> Any:
        return self.s_min ** (1.0 - t) * self.s_max**t

    def alpha(self, t: Any) -> Any:
        return jnp.exp(-self._sigma(t))

    def alpha_prime(self, t: Any) -> Any:
        sigma = self._sigma(t)
        return -jnp.exp(-sigma) * sigma * math.log(self.s_max / self.s_min)

    def weight(self, t: Any) -> Any:
        sigma = self._sigma(t)
        return sigma * math.log(self.s_max / self.s_min) / jnp.expm1(sigma)  # stable form of -a'/(1-a)

    @property
    def name(self) -> str:
        return f"geometric({_fmt(self.s_min)},{_fmt(self.s_max)})"


def _fmt(x: float) -> str:
    return f"{x:g}"


# Registry: name -> (number of float arguments, constructor, argument check).
_REGISTRY: dict[str, tuple[int, Callable[..., Schedule], Callable[..., str | None]]] = {
    "linear": (0, Linear, lambda: None),
    "cosine": (0, Cosine, lambda: None),
    "sine": (0, Sine, lambda: None),
    "polynomial": (1, Polynomial, lambda p: None if p > 0 else "p must be > 0"),
    "geometric": (
        2,
        Geometric,
        lambda lo, hi: None if 0 < lo < hi else "need 0 < s_min < s_max",
    ),
}
KNOWN_FORMS = ("linear", "polynomial(p)", "cosine", "sine", "geometric(s_min,s_max)")
_NAME_RE = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")


def get_schedule(name: str) -> Schedule:
    """Parse a schedule name such as ``"polynomial(2)"`` into its schedule object."""
    match = _NAME_RE.match(str(name))
    if not match or match.group(1) not in _REGISTRY:
        raise ScheduleError(f"unknown schedule {name!r}; known: {', '.join(KNOWN_FORMS)}")
    kind, arg_text = match.group(1), match.group(2)
    n_args, make, check = _REGISTRY[kind]
    args = _parse_args(name, arg_text)
    if len(args) != n_args:
        form = next(f for f in KNOWN_FORMS if f.startswith(kind))
        raise ScheduleError(f"schedule {name!r}: expected the form {form}")
    problem = check(*args)
    if problem:
        raise ScheduleError(f"schedule {name!r}: {problem}")
    return make(*args)


def _parse_args(name: str, arg_text: str | None) -> tuple[float, ...]:
    if arg_text is None or not arg_text.strip():
        return ()
    try:
        return tuple(float(a) for a in arg_text.split(","))
    except ValueError:
        raise ScheduleError(f"schedule {name!r}: arguments must be numbers") from None


def modality_schedules(diffusion_cfg: Any) -> dict[Modality, Schedule]:
    """Modality -> schedule from ``config.diffusion.schedule`` (a mapping text/image/audio -> name).

    A single string applies to every modality.
    """
    spec = get(diffusion_cfg, "schedule")
    if isinstance(spec, str):
        return {m: get_schedule(spec) for m in MODALITY_BY_NAME.values()}
    spec = dict(spec)
    unknown = set(spec) - set(MODALITY_BY_NAME)
    missing = set(MODALITY_BY_NAME) - set(spec)
    if unknown or missing:
        raise ScheduleError(
            f"config.diffusion.schedule={spec!r}: keys must be exactly {sorted(MODALITY_BY_NAME)}"
        )
    out = {}
    for key, value in spec.items():
        try:
            out[MODALITY_BY_NAME[key]] = get_schedule(value)
        except ScheduleError as err:
            raise ScheduleError(f"config.diffusion.schedule.{key}: {err}") from None
    return out


def schedules_by_name(schedules: Mapping[Modality, Schedule]) -> dict[str, str]:
    """Readable form for logs: {'text': 'linear', ...}."""
    return {Modality(m).name.lower(): s.name for m, s in schedules.items()}
