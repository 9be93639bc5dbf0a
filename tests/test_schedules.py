"""Masking schedules: boundary values, monotonicity, derivatives and weights against closed forms."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from mdiff.config import ConfigError
from mdiff.defaults import base_config
from mdiff.vocab import Modality
from mdiff.diffusion.schedules import ScheduleError, get_schedule, modality_schedules

NAMES = ["linear", "polynomial(2)", "polynomial(0.5)", "cosine", "sine", "geometric(1e-4,20)"]
T = np.linspace(0.02, 0.98, 49)


def closed_form_weight(name: str, t: np.ndarray) -> np.ndarray:
    if name == "linear":
        return 1 / t
    if name.startswith("polynomial"):
        p = float(name[11:-1])
        return p / t
    if name == "cosine":  # (pi/2) sin(x) / (1 - cos(x)) = (pi/2) cot(x/2), x = pi t / 2
        return (math.pi / 2) / np.tan(math.pi * t / 4)
    if name == "sine":  # (pi/2) cos(x) / sin(x)
        return (math.pi / 2) / np.tan(math.pi * t / 2)
    sigma = 1e-4 ** (1 - t) * 20.0**t
    return sigma * math.log(20 / 1e-4) / np.expm1(sigma)


@pytest.mark.parametrize("name", NAMES)
def test_boundaries_and_monotone(name):
    s = get_schedule(name)
    tol = 2e-4 if name.startswith("geometric") else 1e-6  # exp(-s_min), exp(-s_max) are not exactly 1, 0
    assert float(s.alpha(0.0)) == pytest.approx(1.0, abs=tol)
    assert float(s.alpha(1.0)) == pytest.approx(0.0, abs=tol)
    values = np.asarray(s.alpha(jnp.linspace(0.0, 1.0, 201)))
    assert np.all(np.diff(values) < 0), "alpha must decrease strictly"


@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_finite_difference(name):
    s = get_schedule(name)
    h = 1e-3
    t = np.float64(T)
    numeric = (np.asarray(s.alpha(t + h), np.float64) - np.asarray(s.alpha(t - h), np.float64)) / (2 * h)
    np.testing.assert_allclose(np.asarray(s.alpha_prime(jnp.asarray(T))), numeric, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("name", NAMES)
def test_weight_matches_closed_form(name):
    s = get_schedule(name)
    t = jnp.asarray(T, jnp.float32)
    np.testing.assert_allclose(np.asarray(s.weight(t)), closed_form_weight(name, T), rtol=1e-4)
    generic = -np.asarray(s.alpha_prime(t)) / (1 - np.asarray(s.alpha(t)))
    np.testing.assert_allclose(np.asarray(s.weight(t)), generic, rtol=1e-3)
    complement = -np.asarray(s.alpha_prime(t)) / np.asarray(s.alpha(t))
    np.testing.assert_allclose(np.asarray(s.complement_weight(t)), complement, rtol=1e-4)


def test_names_round_trip_and_errors():
    assert get_schedule("polynomial(2)").name == "polynomial(2)"
    assert get_schedule(" geometric(0.001, 10) ").name == "geometric(0.001,10)"
    with pytest.raises(ScheduleError, match="known: linear, polynomial"):
        get_schedule("loglinear")
    with pytest.raises(ScheduleError, match="polynomial\\(p\\)"):
        get_schedule("polynomial")
    with pytest.raises(ScheduleError, match="p must be > 0"):
        get_schedule("polynomial(-1)")
    with pytest.raises(ScheduleError, match="s_min < s_max"):
        get_schedule("geometric(5,1)")
    with pytest.raises(ScheduleError, match="numbers"):
        get_schedule("polynomial(two)")


def test_modality_schedules_from_config():
    cfg = base_config()
    cfg.diffusion.schedule.image = "cosine"
    schedules = modality_schedules(cfg.diffusion)
    assert schedules[Modality.TEXT].name == "linear"
    assert schedules[Modality.IMAGE].name == "cosine"
    assert set(schedules) == {Modality.TEXT, Modality.IMAGE, Modality.AUDIO}


def test_config_validator_rejects_unknown_schedule():
    from mdiff.config import validate

    cfg = base_config()
    cfg.diffusion.schedule.audio = "cosinesqr"
    with pytest.raises(ConfigError, match="diffusion.schedule.audio"):
        validate(cfg)


def shipped_schedule_names() -> list[str]:
    """Every schedule a shipped sweep trains with (sweeps/schedules.py), plus the extra forms tests use."""
    import pathlib

    from mdiff.config import import_python_file

    sweep_file = pathlib.Path(__file__).resolve().parent.parent / "sweeps" / "schedules.py"
    module = import_python_file(sweep_file, prefix="_test_sweep_")
    shipped = {value for variant in module.VARIANTS for point in module.get_sweep(variant).points
               for key, value in point.items() if key.startswith("diffusion.schedule.")}
    return sorted({"linear", *shipped, "polynomial(3)", "polynomial(0.5)", "geometric(1e-4,20)"})


@pytest.mark.parametrize("t_min", [1e-5, 1e-3, 0.05])
@pytest.mark.parametrize("name", shipped_schedule_names())
def test_every_token_carries_unit_mass(name, t_min):
    # The bound is complete when each target token's expected weight is 1:
    #   integral over [t_min, 1 - t_min] of w(t)(1 - alpha(t)) dt + endpoint_mass(t_min) = 1,
    # because w (1 - alpha) = -alpha' integrates to alpha(t_min) - alpha(1 - t_min) and the endpoint mass
    # covers the rest. Gauss-Legendre quadrature of the schedule's own w and alpha, in v with
    # t = lo + (hi - lo) v^2 (dt = 2 (hi - lo) v dv), which smooths the t^(p-1) ends of polynomial(p < 1).
    s = get_schedule(name)
    nodes, weights = np.polynomial.legendre.leggauss(400)
    lo, hi = t_min, 1.0 - t_min
    v = 0.5 * (nodes + 1.0)
    t = lo + (hi - lo) * v**2
    integrand = np.asarray(s.weight(jnp.asarray(t)), np.float64) * (1.0 - np.asarray(s.alpha(jnp.asarray(t)), np.float64))
    integral = np.sum(0.5 * weights * integrand * 2.0 * (hi - lo) * v)
    assert integral + s.endpoint_mass(t_min) == pytest.approx(1.0, abs=1e-4)


def test_geometric_endpoint_mass_is_its_missing_ends():
    # geometric(0.01,20): alpha(0) = exp(-0.01), alpha(1) = exp(-20), so at t_min = 0 the mass left to
    # the reconstruction and prior terms is 1 - exp(-0.01) + exp(-20) = 0.00995...
    s = get_schedule("geometric(0.01,20)")
    assert s.endpoint_mass(0.0) == pytest.approx(1 - math.exp(-0.01) + math.exp(-20), rel=1e-5)
    assert get_schedule("linear").endpoint_mass(0.01) == pytest.approx(0.02, rel=1e-5)
