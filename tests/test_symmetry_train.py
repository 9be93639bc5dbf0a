"""SGM training end to end: run directory, resume, plots, VAEs, CLI errors, configs, data, losses."""

import json
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mdiff import cli, rundir
from mdiff.config import ConfigError, load_config, variants_of, _import_file
from mdiff.symmetry import data as D
from mdiff.symmetry import defaults  # noqa: F401
from mdiff.symmetry import losses
from mdiff.symmetry.nets import InferenceNet
from mdiff.symmetry.transforms import Bounds, Family
from mdiff.symmetry.vae import VAE, iwlb

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = str(ROOT / "experiments/symmetry_digits.py") + ":tiny"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sgm") / "run"
    code = cli.main(["symmetry", "train", "--config", TINY, "--workdir", str(workdir),
                     "--config.train.progress=False"])
    assert code == 0
    return workdir


def test_run_directory_contract(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["kind"] == "symmetry"
    records = rundir.read_jsonl(run_dir / "metrics.jsonl")
    assert {r["stage"] for r in records} == {1, 2}
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    assert all(math.isfinite(r["loss"]) for r in records)
    stage1 = [r for r in records if r["stage"] == 1]
    assert {"x_mse", "inv_mse", "sigma", "lr", "grad_norm", "steps_per_s", "wall_s"} <= set(stage1[0])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["steps"] == 12
    assert summary["steps_per_s_stage1"] > 0 and summary["steps_per_s_stage2"] > 0
    for key in ("eval/stage1/x_mse", "eval/stage2/log_p", "recovery/rotation/w1", "recovery/rotation/std_learned"):
        assert math.isfinite(summary[key]), key
    evals = rundir.read_jsonl(run_dir / "eval.jsonl")
    assert [e["stage"] for e in evals] == [1, 2, 3]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["12", "8"]


def test_resume_after_preemption_reproduces_the_run(run_dir, tmp_path):
    """Drop the last checkpoint and summary (a run killed after step 8); resuming must give the same result."""
    from mdiff.symmetry.train import checkpoint_manager, train_and_evaluate

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / "checkpoints" / "12")
    (copy / "summary.json").unlink()
    config = load_config(TINY, ["--config.train.progress=False"])
    summary = train_and_evaluate(config, copy)
    original = json.loads((run_dir / "summary.json").read_text())
    for key in ("eval/stage2/loss", "eval/stage1/x_mse", "recovery/rotation/w1"):
        assert summary[key] == pytest.approx(original[key], rel=1e-4, abs=1e-4), key
    assert [r["step"] for r in rundir.read_jsonl(copy / "metrics.jsonl")] == \
        [r["step"] for r in rundir.read_jsonl(run_dir / "metrics.jsonl")]
    a, b = checkpoint_manager(run_dir, 2), checkpoint_manager(copy, 2)
    ra, rb = a.restore(12), b.restore(12)
    for key in ra:
        np.testing.assert_allclose(ra[key], rb[key], rtol=1e-4, atol=1e-5)
    a.close(), b.close()


def test_sigterm_checkpoints_exits_75_and_resumes_to_the_same_run(run_dir, tmp_path, monkeypatch):
    """A scheduler's SIGTERM: checkpoint at the step it arrives in, status preempted, exit 75 (rundir.EXIT_STATUS);
    `--resume` then finishes the run as if it had never stopped."""
    import signal

    from mdiff.symmetry import train as T

    original = T.batch_indices

    def term_at_step_3(seed, step, n, batch):
        if step == 3:
            signal.raise_signal(signal.SIGTERM)
        return original(seed, step, n, batch)

    monkeypatch.setattr(T, "batch_indices", term_at_step_3)
    work = tmp_path / "run"
    argv = ["symmetry", "train", "--config", TINY, "--workdir", str(work), "--config.train.progress=False"]
    assert cli.main(argv) == rundir.EXIT_PREEMPTED == 75
    summary = rundir.read_summary(work)
    assert summary["status"] == "preempted" and summary["steps"] == 4
    assert "4" in {p.name for p in (work / "checkpoints").iterdir()}
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is given back
    monkeypatch.undo()
    assert cli.main([*argv, "--resume"]) == 0
    resumed, whole = rundir.read_summary(work), json.loads((run_dir / "summary.json").read_text())
    assert resumed["status"] == "complete" and resumed["steps"] == 12
    for key in ("eval/stage2/loss", "eval/stage1/x_mse"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-4), key


def test_plot_writes_figures(run_dir):
    from mdiff.symmetry.plots import plot_run

    paths = plot_run(run_dir, n_examples=3)
    assert [p.name for p in paths] == ["curves.png", "resamples.png", "marginals.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


@pytest.mark.parametrize("override, message", [
    ("--config.transform.bounds=(1.0,2.0)", "transform.bounds"),
    ("--config.transform.family=projective", "transform.family"),
    ("--config.transform.family=hsv", "transform.family"),  # colour on grey digits
    ("--config.data.known_half_width=(0.1,)", "data.known_half_width"),
    ("--config.inference.arch=resnet", "inference.arch"),
    ("--config.vae.models=('gan',)", "vae.models"),
])
def test_cli_rejects_bad_config(override, message, tmp_path, capsys):
    code = cli.main(["symmetry", "train", "--config", TINY, "--workdir", str(tmp_path / "r"), override])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_cli_refuses_other_run_and_missing_plot_dir(run_dir, tmp_path, capsys):
    code = cli.main(["symmetry", "train", "--config", TINY, "--workdir", str(run_dir), "--config.seed=3"])
    assert code == 2 and "different config" in capsys.readouterr().err
    assert cli.main(["symmetry", "plot", str(tmp_path / "nothing")]) == 2
    assert "not a symmetry run directory" in capsys.readouterr().err


def test_every_experiment_variant_validates():
    for name in ("symmetry_digits", "symmetry_dsprites", "symmetry_emoji"):
        path = ROOT / "experiments" / f"{name}.py"
        for variant in variants_of(_import_file(path)):
            config = load_config(f"{path}:{variant}")
            assert config.kind == "symmetry"
            assert len(config.transform.bounds) == Family(config.transform.family).dim


def test_known_eta_respects_class_ranges_and_data_shapes():
    labels = np.arange(1000) % 3
    eta = D.known_eta(labels, (0.1, math.pi / 3), (1.0, 0.5), seed=0, dim=2)
    for c, s in enumerate((1.0, 0.5, 1.0)):
        spread = np.abs(eta[labels == c]).max(axis=0)
        np.testing.assert_array_less(spread, np.array([0.1, math.pi / 3]) * s + 1e-6)
        assert spread[1] > 0.9 * s * math.pi / 3
    emoji = D.render_emoji(5, 16)
    assert emoji.shape == (5, 16, 16, 3) and emoji.min() >= -1 and emoji.max() <= 1
    assert len({e.tobytes() for e in emoji}) == 5
    shapes, labels, _ = D.load_dsprites(6, 16, D.SHAPES, "canonical", 0)
    assert shapes.shape == (6, 16, 16, 1) and set(np.unique(labels)) <= {0, 1, 2}
    heart = D.render_shape("heart", 32, 0.5, 0.5, 1.6, 0.0)
    np.testing.assert_allclose(heart, heart[:, ::-1], atol=1e-6)  # mirror-symmetric, not up-down symmetric
    assert np.abs(heart - heart[::-1]).max() > 0.5


@pytest.mark.parametrize("spec", ["experiments/symmetry_digits.py:tiny", "experiments/symmetry_dsprites.py:tiny"])
def test_test_split_is_the_same_for_every_seed_and_training_size(spec):
    """Bounds at different training-set sizes and seeds must score the same test pixels; a larger training set
    contains the smaller one and keeps the same validation images."""
    config = load_config(spec)
    family = Family(config.transform.family)
    base = D.load(config.data, family, 0)
    other_seed = D.load(config.data, family, 1)
    config.data.num_train = len(base["train"]) // 2
    smaller = D.load(config.data, family, 0)
    np.testing.assert_array_equal(base["test"].images, other_seed["test"].images)
    np.testing.assert_array_equal(base["test"].images, smaller["test"].images)
    np.testing.assert_array_equal(base["valid"].images, smaller["valid"].images)
    np.testing.assert_array_equal(base["train"].images[: config.data.num_train], smaller["train"].images)
    assert not np.array_equal(base["train"].images, other_seed["train"].images)
    if config.data.name == "digits":  # drawn from one pool: no test image is also a training/validation image
        test = {im.tobytes() for im in base["test"].images}
        assert not test & {im.tobytes() for s in ("train", "valid") for im in base[s].images}


def test_flow_loss_does_not_train_the_inference_net():
    fam = Family("affine")
    bounds = Bounds.create(fam, (0.2, 0.2, 1.0, 0.2, 0.2))
    from mdiff.symmetry.flow import ConditionalFlow

    inf = InferenceNet((8, 8, 1), bounds, hidden=(16,), rngs=nnx.Rngs(0))
    flow = ConditionalFlow((8, 8, 1), bounds, hidden=(16,), num_flows=2, num_bins=4, conditioner_hidden=(8,),
                           rngs=nnx.Rngs(1))
    x = jax.random.uniform(jax.random.key(0), (3, 8, 8, 1), minval=-1, maxval=1)
    g_inf, i_state = nnx.split(inf)
    g_flow, f_state = nnx.split(flow)

    def loss(i_s, f_s):
        return losses.flow_loss(nnx.merge(g_flow, f_s), nnx.merge(g_inf, i_s), fam, bounds, x, jax.random.key(1),
                                n_samples=2, bounds_mult=1.0, consistency=1.0, order=1)[0]

    gi, gf = jax.jit(jax.grad(loss, argnums=(0, 1)))(i_state, f_state)
    assert all(float(jnp.abs(v).max()) == 0 for v in jax.tree.leaves(gi))
    assert any(float(jnp.abs(v).max()) > 0 for v in jax.tree.leaves(gf))


def test_invariance_loss_vanishes_without_augmentation_at_init():
    fam = Family("affine")
    bounds = Bounds.create(fam, (1e-6,) * 5)
    inf = InferenceNet((8, 8, 1), bounds, hidden=(16,), sigma_init=1e-6, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 1), minval=-1, maxval=1)
    graph, state = nnx.split(inf)
    loss, metrics = jax.jit(lambda s: losses.invariance_loss(nnx.merge(graph, s), fam, bounds, x, jax.random.key(2),
                                                             n_samples=2, symmetric=True, invertibility=0.1,
                                                             order=3))(state)
    assert float(loss) < 1e-8 and float(metrics["inv_mse"]) < 1e-8


@pytest.mark.slow
def test_vae_combinations_train_and_report_a_bound():
    """AugVAE and prototype-VAE on top of an (untrained) SGM: finite bounds with standard errors."""
    from mdiff.symmetry.train import Trainer, family_and_bounds
    from mdiff.symmetry.vae import run_vaes

    config = load_config(TINY, ['--config.vae.models=("augvae","protovae")', "--config.vae.steps=2",
                                "--config.vae.iw_samples=4"])
    splits = D.load(config.data, family_and_bounds(config)[0], config.seed)
    splits["test"] = splits["test"].take(np.arange(8))
    out = run_vaes(config, Trainer.create(config, splits["train"].images.shape[1:]), splits, log=lambda m: None)
    for kind in ("augvae", "protovae"):  # the plain VAE is the augvae code path without the SGM resampling
        assert math.isfinite(out[f"vae/{kind}/test_iwlb"]) and out[f"vae/{kind}/test_iwlb_se"] > 0


def test_importance_weighting_tightens_the_bound():
    vae = VAE((6, 6, 1), 3, (16,), rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (64, 6, 6, 1), minval=-1, maxval=1)
    graph, state = nnx.split(vae)
    bound = jax.jit(lambda s, k: jnp.mean(iwlb(nnx.merge(graph, s).log_weights(x, jax.random.key(1), k))),
                    static_argnums=1)
    one, many = float(bound(state, 1)), float(bound(state, 200))
    assert many > one


def test_config_errors_name_key_and_value():
    with pytest.raises(ConfigError, match=r"config.flow.num_bins=1"):
        load_config(TINY, ["--config.flow.num_bins=1"])
    with pytest.raises(ConfigError, match=r"config.data.name='mnist'"):
        load_config(TINY, ["--config.data.name=mnist"])


@pytest.mark.parametrize("channels", [pytest.param(1, marks=pytest.mark.slow), 3])  # grey is slow: colour covers it
def test_cnn_inference_net_shapes_identity_at_init_and_trains(channels):
    """The CNN option for q(eta | x): right output shape, identity at init, and an invariance-loss step moves it."""
    import optax

    fam = Family("affine")
    bounds = Bounds.create(fam, (0.5, 0.5, math.pi, 0.5, 0.5), squash=True)
    inf = InferenceNet((12, 12, channels), bounds, arch="cnn", hidden=(16,), conv_features=(4, 8), rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (5, 12, 12, channels), minval=-1, maxval=1)
    assert inf.sample(jax.random.key(1), x).shape == (5, 5)
    np.testing.assert_allclose(np.asarray(inf.mode(x)), 0.0, atol=1e-7)  # zero-initialised head: identity
    graph, state = nnx.split(inf, nnx.Param)

    def loss(s):
        return losses.invariance_loss(nnx.merge(graph, s), fam, bounds, x, jax.random.key(2), n_samples=2,
                                      symmetric=False, invertibility=0.1, order=1)[0]

    l0, grads = jax.jit(jax.value_and_grad(loss))(state)
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    conv_grads = [g for path, g in flat if "convs" in jax.tree_util.keystr(path)]
    assert conv_grads and all(np.isfinite(np.asarray(g)).all() for _, g in flat)
    tx = optax.adam(1e-2)
    state = optax.apply_updates(state, tx.update(grads, tx.init(state), state)[0])
    assert np.abs(np.asarray(nnx.merge(graph, state).mode(x))).max() > 0  # the head moved off the identity
    assert math.isfinite(float(l0))


def test_cnn_arch_config_builds_and_runs_a_training_step():
    from mdiff.symmetry.nets import CNN
    from mdiff.symmetry.train import Trainer

    config = load_config(TINY, ["--config.inference.arch=cnn", "--config.inference.conv_features=(4,8)"])
    trainer = Trainer.create(config, (16, 16, 1))
    assert isinstance(trainer.inference_net().body, CNN)
    x = jnp.asarray(D.load_digits(16)[0][:8])
    trainer.state, metrics = trainer.stage1_step(trainer.state, x, jax.random.key(0), 0)
    assert math.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0


def test_augmentation_range_schedule():
    from mdiff.symmetry.train import aug_mult

    config = load_config(TINY, ["--config.inference.aug_init_mult=0.1", "--config.inference.aug_end=0.5"])
    q = config.inference
    assert float(aug_mult(0, q, 100)) == pytest.approx(0.1)
    assert float(aug_mult(25, q, 100)) == pytest.approx(0.55)
    assert float(aug_mult(50, q, 100)) == pytest.approx(1.0) and float(aug_mult(99, q, 100)) == pytest.approx(1.0)
    assert aug_mult(0, load_config(TINY).inference, 100) == 1.0  # default: the paper's full range throughout
    with pytest.raises(ConfigError, match="inference.aug_init_mult"):
        load_config(TINY, ["--config.inference.aug_init_mult=0.0"])


def test_invariance_loss_augmentation_range_scales_with_aug_mult():
    """An identity q: the loss is the mse of x against its augmented copy, so it grows with the range."""
    fam = Family("affine")
    bounds = Bounds.create(fam, (0.3, 0.3, math.pi, 0.3, 0.3))
    inf = InferenceNet((12, 12, 1), bounds, hidden=(8,), sigma_init=1e-6, rngs=nnx.Rngs(0))
    x = jnp.asarray(D.render_shape("heart", 12, 0.5, 0.5, 1.6, 0.0)[None, :, :, None] * 2 - 1)
    graph, state = nnx.split(inf)
    loss = jax.jit(lambda m: losses.invariance_loss(nnx.merge(graph, state), fam, bounds, x, jax.random.key(3),
                                                    n_samples=64, symmetric=True, invertibility=0.0, order=1,
                                                    aug_mult=m)[0])
    small, full = float(loss(0.02)), float(loss(1.0))
    assert small < 0.1 * full, (small, full)
