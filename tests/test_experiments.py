"""Every experiment config builds, and compiles ahead of time on the 8 fake devices (no execution)."""

import importlib.util
import pathlib

import pytest

from mdiff.config import load_config
from mdiff.data.corpus import synthetic_corpus
from mdiff.vocab import SPECIAL_TOKENS, UnifiedVocab
from mdiff.model import scaling
from mdiff.optim import sde
from mdiff.train import aot, loop

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = ("quickstart", "pilot", "large")


def _variants(name):
    spec = importlib.util.spec_from_file_location(f"_exp_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.VARIANTS


ALL = [(name, v) for name in FILES for v in _variants(name)]
# Every variant compiles under `-m slow` (about 30 s each); the default run compiles the smallest and the largest.
DEFAULT_COMPILES = {("quickstart", "test"), ("large", "3b")}
COMPILES = [pytest.param(*nv, marks=() if nv in DEFAULT_COMPILES else pytest.mark.slow) for nv in ALL]
# Compiling every variant takes about 80 s on 2 quiet cores; all run by default.


def _vocab(config):
    """The vocabulary the config's model is sized for, without opening its (maybe unbuilt) dataset."""
    if config.data.dataset == "synthetic":
        return synthetic_corpus("train").vocab
    shape = scaling.resolve_shape(config.model)
    tok = config.data.tokenizer
    image, audio, specials = tok.image_codebook, tok.audio_codebook, len(SPECIAL_TOKENS)
    # Big presets were sized for a larger (paper-scale) text vocabulary than the offline tokenizer's.
    text = max(tok.text_vocab, shape.reference_vocab - image - audio - specials)
    return UnifiedVocab(text_size=text, image_size=image, audio_size=audio)


@pytest.mark.parametrize("name, variant", ALL)
def test_config_builds(name, variant):
    config = load_config(f"experiments/{name}.py:{variant}")
    plan = sde.plan(config)
    assert plan.steps >= 1 and config.name


def test_pilot_matches_the_paper():
    config = load_config("experiments/pilot.py:base")
    shape = scaling.resolve_shape(config.model)
    total = scaling.param_counts(shape, _vocab(config).size)["total"]
    assert 280e6 < total < 360e6
    plan = sde.plan(config)
    assert (config.train.batch, config.optim.batch_base, config.train.tokens) == (256, 256, 13_000_000_000)
    assert plan.kappa == 1.0 and plan.warmup_steps == 1000
    assert sde.plan(load_config("experiments/pilot.py:b1024")).kappa == pytest.approx(4.0)


@pytest.mark.parametrize("name, variant", COMPILES)
def test_config_compiles_ahead_of_time(name, variant, tmp_path):
    config = load_config(f"experiments/{name}.py:{variant}")
    if (name, variant) == ("large", "3b"):
        _compile_with_devices(64, name, variant)  # its mesh needs a pod's worth of devices
        return
    run = loop.setup(config, tmp_path, _vocab(config))
    compiled = aot.compile_train_step(run)
    assert compiled.cost_analysis() is not None


def _compile_with_devices(devices, name, variant):
    from helpers import run_python

    out = run_python(
        f"""
        import sys, pathlib, tempfile
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from absl import flags
        flags.FLAGS.mark_as_parsed()
        import jax
        from mdiff.config import load_config
        from mdiff.train import aot, loop
        from test_experiments import _vocab
        config = load_config("experiments/{name}.py:{variant}")
        run = loop.setup(config, pathlib.Path(tempfile.mkdtemp()), _vocab(config))
        aot.compile_train_step(run)
        print("compiled on", jax.device_count(), "devices, mesh", dict(run.mesh.shape))
        """,
        devices=devices,
    )
    assert f"compiled on {devices} devices" in out
