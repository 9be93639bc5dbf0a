"""Config loading, overrides and validation."""

import json

import ml_collections
import pytest

from mdiff import config as cfg
from mdiff.config import ConfigError
from mdiff.defaults import base_config

TINY = "tests/configs/tiny.py"


def test_loads_variant_and_defaults_to_first():
    assert cfg.load_config(f"{TINY}:wide").model.width == 128
    assert cfg.load_config(TINY).name == "tiny-small"


def test_overrides_convert_to_the_default_type():
    c = cfg.load_config(f"{TINY}:small", ["--config.model.width=96", "train.batch=16", "--config.model.remat=true",
                                          "--config.optim.lr=1", "--config.model.mlp_type=gelu",
                                          "--config.data.mix={'text': 1.0, 'image': 0.0, 'audio': 0.0}"])
    assert c.model.width == 96 and c.train.batch == 16 and c.model.remat is True
    assert isinstance(c.optim.lr, float) and c.optim.lr == 1.0
    assert c.model.mlp_type == "gelu" and c.data.mix.text == 1.0


def test_loaded_config_is_locked():
    c = cfg.load_config(TINY)
    with pytest.raises(AttributeError):
        c.model.not_a_key = 1


@pytest.mark.parametrize(
    "spec, overrides, message",
    [
        ("tests/configs/missing.py:x", [], "does not exist"),
        ("tests/configs/tiny.txt", [], "expected FILE.py"),
        (f"{TINY}:huge", [], "unknown variant 'huge'; known: small, wide"),
        (TINY, ["--config.model.widht=3"], "unknown config key 'model.widht'"),
        (TINY, ["--config.modle.width=3"], "no section 'modle'"),
        (TINY, ["--config.model.width=wide"], "config.model.width='wide': expected an int"),
        (TINY, ["--config.model.remat=3"], "expected a bool"),
        (TINY, ["--config.model=3"], "is a section"),
        (TINY, ["--config.model.width"], "expected --config.KEY=VALUE"),
        (TINY, ["--config.model.width=62"], "must be divisible by model.heads=4"),
        (TINY, ["--config.model.mlp_type=relu"], "allowed: swiglu, gelu"),
        (TINY, ["--config.data.mix={'text': 0.5, 'image': 0.2, 'audio': 0.2}"], "must sum to 1"),
        (TINY, ["--config.train.microbatches=3"], "must divide train.batch=8"),
        (TINY, ["--config.train.tokens=10"], "shorter than one step"),
        (TINY, ["--config.mesh.shape={'data': -1, 'fsdp': -1, 'tensor': 1}"], "at most one axis"),
    ],
)
def test_bad_configs_name_key_value_and_what_is_allowed(spec, overrides, message):
    with pytest.raises(ConfigError, match=None) as info:
        cfg.load_config(spec, overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_json_round_trip_is_exact():
    c = cfg.load_config(TINY)
    d = cfg.to_dict(c)
    assert json.loads(cfg.to_json(c)) == d
    assert cfg.to_dict(cfg.from_dict(d)) == d


def test_validators_only_run_on_their_kind():
    c = ml_collections.ConfigDict({"kind": "another-family", "data": {"seq_len": 1}})
    cfg.validate(c)  # the diffusion data validator must not judge another family's config
    with pytest.raises(ConfigError):
        bad = base_config()
        bad.data.seq_len = 1
        cfg.validate(bad)


def test_base_config_validates():
    cfg.validate(base_config())


def test_a_size_preset_is_expanded_into_the_shape_that_trains():
    # quickstart cpu-s names the preset; config.json (to_dict) must show its shape, not the defaults.
    from mdiff.model.scaling import PRESETS

    c = cfg.load_config("experiments/quickstart.py:cpu-s")
    preset = PRESETS["cpu-s"]
    written = cfg.to_dict(c)["model"]
    assert (written["width"], written["depth"], written["heads"], written["mlp_hidden"]) == (
        preset.width, preset.depth, preset.heads, preset.mlp_hidden)
    # Setting a field to the preset's own value is no conflict.
    assert cfg.load_config("experiments/quickstart.py:cpu-s", [f"--config.model.width={preset.width}"]).model.width == preset.width


def test_a_preset_and_a_conflicting_explicit_field_is_an_error():
    with pytest.raises(ConfigError, match=r"config.model.width=64 conflicts with config.model.size='cpu-s'"):
        cfg.load_config("experiments/quickstart.py:cpu-s", ["--config.model.width=64"])
    # Clearing the preset makes the explicit shape the one that trains.
    c = cfg.load_config("experiments/quickstart.py:cpu-s", ["--config.model.size=", "--config.model.width=64",
                                                           "--config.model.heads=4"])
    assert c.model.size == "" and c.model.width == 64
