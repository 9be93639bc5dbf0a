"""Mesh, logical-axis rules, sharded init, global batches; 1 device vs a (2, 2, 2) mesh; AOT compile."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mdiff import parallel
from mdiff.vocab import Modality, UnifiedVocab
from mdiff.diffusion.loss import mdm_loss
from mdiff.diffusion.schedules import get_schedule
from mdiff.model import build_model
from mdiff.parallel.defaults import default_rules

VOCAB = UnifiedVocab(70, 30, 13)  # 128 ids: shardable over tensor
MODEL = dict(width=32, depth=1, heads=4, mlp_hidden=64)
SCHEDULES = {m: get_schedule("cosine") for m in (Modality.TEXT, Modality.IMAGE, Modality.AUDIO)}


def mesh_cfg(data=-1, fsdp=1, tensor=1, rules=None):
    return dict(shape=dict(data=data, fsdp=fsdp, tensor=tensor), rules=rules or default_rules())


def test_mesh_shapes_and_errors():
    assert dict(parallel.make_mesh(mesh_cfg()).shape) == dict(data=8, fsdp=1, tensor=1)
    assert dict(parallel.make_mesh(mesh_cfg(2, -1, 2)).shape) == dict(data=2, fsdp=2, tensor=2)
    mesh = parallel.make_mesh(mesh_cfg(1, 1, 1), devices=jax.devices()[:1])
    assert mesh.devices.size == 1
    with pytest.raises(parallel.ShardingError, match="needs 12 devices, have 8; shapes that fit"):
        parallel.make_mesh(mesh_cfg(3, 2, 2))
    with pytest.raises(parallel.ShardingError, match="multiple of 3"):
        parallel.make_mesh(mesh_cfg(-1, 3, 1))


def test_rules_are_checked():
    rules = parallel.logical_rules(mesh_cfg())
    assert rules["batch"] == ("data", "fsdp") and rules["kv"] is None
    with pytest.raises(parallel.ShardingError, match="no rule for logical axes \\['layers'\\]"):
        parallel.logical_rules(mesh_cfg(rules=[r for r in default_rules() if r[0] != "layers"]))
    with pytest.raises(parallel.ShardingError, match="maps logical axis 'mlp' twice"):
        parallel.logical_rules(mesh_cfg(rules=default_rules() + (("mlp", "fsdp"),)))
    with pytest.raises(parallel.ShardingError, match="no such mesh axis"):
        parallel.logical_rules(mesh_cfg(rules=default_rules() + (("vocab", "model"),)))
    with pytest.raises(parallel.ShardingError, match="unknown logical axis 'qkv'"):
        parallel.logical_rules(mesh_cfg(rules=default_rules() + (("qkv", None),)))
    with pytest.raises(parallel.ShardingError, match="use mesh axis 'fsdp' twice"):
        parallel.logical_to_spec(("batch", "embed"), rules)
    with pytest.raises(parallel.ShardingError, match="no rule"):
        parallel.logical_to_spec(("batch", "time"), {"batch": "data"})


def make_batch(batch=8, length=16, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(*VOCAB.range("text"), (batch, length)).astype(np.int32)
    ones = np.ones_like(tokens)
    return dict(tokens=tokens, modality=ones, loss_mask=ones, cond_mask=0 * ones, segment_ids=ones,
                positions=np.broadcast_to(np.arange(length, dtype=np.int32), tokens.shape).copy())


def loss_and_grads(model, batch):
    def loss_fn(m):
        fn = lambda x, b: m(x, b["modality"], b["segment_ids"], b["positions"])  # noqa: E731
        return mdm_loss(fn, batch, jax.random.key(7), vocab=VOCAB, schedules=SCHEDULES)[0]

    return nnx.jit(nnx.value_and_grad(loss_fn))(model)


def test_one_device_and_fsdp_tensor_mesh_agree():
    make = lambda: build_model(MODEL, VOCAB, 32, rngs=nnx.Rngs(0))  # noqa: E731
    batch = make_batch(length=8)
    with jax.default_device(jax.devices()[0]):
        loss1, grads1 = loss_and_grads(make(), {k: jnp.asarray(v) for k, v in batch.items()})

    cfg = mesh_cfg(2, 2, 2)
    mesh, rules = parallel.make_mesh(cfg), parallel.logical_rules(cfg)
    model = parallel.sharded_init(make, mesh, rules)
    qkv = model.blocks.layers[0]["qkv"][...]
    assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", None, "tensor", None)
    assert qkv.addressable_shards[0].data.shape == (16, 3, 2, 8), "each device holds only its shard"
    gbatch = parallel.global_batch(batch, mesh, rules)
    with parallel.use_mesh(mesh, rules):
        loss8, grads8 = loss_and_grads(model, gbatch)
    assert float(loss8) == pytest.approx(float(loss1), rel=1e-5)
    flat1, flat8 = jax.tree.leaves(grads1), jax.tree.leaves(grads8)
    assert len(flat1) == len(flat8)
    for g1, g8 in zip(flat1, flat8):
        np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=2e-4, atol=2e-6)


def test_batch_divisibility_and_global_batch():
    cfg = mesh_cfg(4, 2, 1)
    mesh, rules = parallel.make_mesh(cfg), parallel.logical_rules(cfg)
    parallel.check_divisible(16, mesh, rules)
    with pytest.raises(parallel.ShardingError, match="not divisible by the data-parallel size 8"):
        parallel.check_divisible(12, mesh, rules)
    with pytest.raises(parallel.ShardingError, match="not divisible"):
        parallel.global_batch(make_batch(batch=6), mesh, rules)
    gb = parallel.global_batch(make_batch(batch=8), mesh, rules)
    assert gb["tokens"].shape == (8, 16)
    assert len({s.device for s in gb["tokens"].addressable_shards}) == 8


def test_indivisible_parameter_dim_is_a_clear_error():
    cfg = mesh_cfg(1, 1, 8)
    mesh, rules = parallel.make_mesh(cfg), parallel.logical_rules(cfg)
    with pytest.raises(parallel.ShardingError, match="'heads' of size 4 is not divisible"):
        parallel.sharded_init(lambda: build_model(MODEL, VOCAB, 32, rngs=nnx.Rngs(0)), mesh, rules)


def _aot_report(size, vocab, seq_len, batch, shape, tmp_path):
    """Compile the real train step (the config's optimiser, schedules, clipping) for `shape` and report memory."""
    from mdiff.defaults import base_config
    from mdiff.train import aot, loop

    config = base_config()
    config.model.update(size=size, scan_layers=True, remat=True, dtype="bfloat16")
    config.mesh.shape = dict(zip(("data", "fsdp", "tensor"), shape))
    config.data.seq_len, config.train.batch, config.train.eval_batch = seq_len, batch, batch
    config.train.tokens = 100 * batch * seq_len
    run = loop.setup(config, tmp_path, vocab)
    memory = aot.memory_per_device(aot.compile_train_step(run))
    print(f"\n{size} on mesh {dict(run.mesh.shape)}: compiled memory per device {memory}")
    return memory


@pytest.mark.slow  # the 3b compile below covers the same path by default
def test_aot_compile_small_preset_on_fsdp_tensor_mesh(tmp_path):
    memory = _aot_report("cpu-m", VOCAB, 64, 8, (2, 2, 2), tmp_path)
    assert memory["argument_size_in_bytes"] > 0


def test_aot_compile_3b_preset_on_fake_mesh(tmp_path):
    from mdiff.model.scaling import PRESETS, param_counts

    vocab = UnifiedVocab(PRESETS["3b"].reference_vocab - 15 - 16384 - 4096, 16384, 4096)
    counts = param_counts(PRESETS["3b"], vocab.size)
    assert 2.8e9 < counts["total"] < 3.3e9
    memory = _aot_report("3b", vocab, 1024, 8, (1, 4, 2), tmp_path)
    # f32 params + two AdamW moments, split 8 ways: the arguments alone are ~12 bytes/param / 8.
    assert memory["argument_size_in_bytes"] == pytest.approx(12 * counts["total"] / 8, rel=0.05)


def test_config_validation_checks_rules_without_jax_objects():
    from mdiff.config import ConfigError, validate
    from mdiff.defaults import base_config

    cfg = base_config()
    validate(cfg)
    cfg.mesh.rules = tuple(r for r in default_rules() if r[0] != "vocab")
    with pytest.raises(ConfigError, match="no rule for logical axes \\['vocab'\\]"):
        validate(cfg)
    cfg = base_config()
    cfg.model.size = "7b"
    with pytest.raises(ConfigError, match="config.model.size='7b': known presets"):
        validate(cfg)
