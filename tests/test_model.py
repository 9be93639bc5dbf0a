"""The transformer: shapes, logit restriction, segment isolation, RoPE, scan/remat/bf16 variants, bad input."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mdiff.data.layout import LayoutError, check_batch
from mdiff.vocab import Modality, UnifiedVocab, VocabError
from mdiff.model import build_model, check_mask_id
from mdiff.model.ops import swiglu
from mdiff.model.transformer import NEG_INF

VOCAB = UnifiedVocab(40, 20, 12)
CFG = dict(width=32, depth=2, heads=2, mlp_hidden=64)
B, L = 2, 12


def make_batch(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(*VOCAB.range("text"), (B, L)).astype(np.int32)
    modality = np.full((B, L), int(Modality.TEXT), np.int32)
    tokens[:, 6:] = rng.integers(*VOCAB.range("image"), (B, 6))
    modality[:, 6:] = int(Modality.IMAGE)
    tokens[:, 0] = VOCAB.task_id("t2i")
    modality[:, 0] = 0
    seg = np.ones((B, L), np.int32)
    seg[:, 8:] = 2
    positions = np.concatenate([np.arange(8), np.arange(4)])[None].repeat(B, 0).astype(np.int32)
    loss_mask = (modality > 0).astype(np.int32)
    return dict(tokens=tokens, modality=modality, segment_ids=seg, positions=positions, loss_mask=loss_mask,
                cond_mask=np.zeros_like(tokens))


@nnx.jit
def _forward(model, tokens, modality, segment_ids, positions):
    return model(tokens, modality, segment_ids, positions)


def apply(model, b):
    return _forward(model, *(jnp.asarray(b[k]) for k in ("tokens", "modality", "segment_ids", "positions")))


@pytest.fixture(scope="module")
def model():
    return build_model(CFG, VOCAB, 32, rngs=nnx.Rngs(0))


def test_logits_shape_and_restriction(model):
    b = make_batch()
    logits = np.asarray(apply(model, b))
    assert logits.shape == (B, L, VOCAB.size) and logits.dtype == np.float32
    for m in (Modality.TEXT, Modality.IMAGE):
        lo, hi = VOCAB.range(m)
        rows = logits[b["modality"] == m]
        # The restriction is a NEG_INF bias added inside the head matmul: excluded ids sit at NEG_INF (up to
        # f32 rounding of NEG_INF + logit) and get exactly zero probability.
        assert np.all(rows[:, :lo] <= NEG_INF / 2) and np.all(rows[:, hi:] <= NEG_INF / 2)
        assert np.all(rows[:, lo:hi] > NEG_INF / 2)
        probs = np.asarray(jax.nn.softmax(rows, axis=-1))
        assert np.all(probs[:, :lo] == 0) and np.all(probs[:, hi:] == 0)
    specials = logits[b["modality"] == 0]
    assert np.all(specials[:, VOCAB.mask_id] <= NEG_INF / 2), "MASK is never predicted"


def test_attention_stays_inside_segments_and_is_bidirectional(model):
    b = make_batch()
    base = np.asarray(apply(model, b))
    changed = dict(b, tokens=b["tokens"].copy())
    changed["tokens"][:, 9] = VOCAB.range("image")[0]  # inside segment 2
    out = np.asarray(apply(model, changed))
    np.testing.assert_array_equal(out[:, :8], base[:, :8])
    assert not np.allclose(out[:, 8:], base[:, 8:])
    changed = dict(b, tokens=b["tokens"].copy())
    changed["tokens"][:, 7] = VOCAB.range("image")[0] + 1  # late in segment 1 changes early positions
    assert not np.allclose(np.asarray(apply(model, changed))[:, 1], base[:, 1])


def test_rope_depends_on_relative_positions_only(model):
    b = make_batch()
    shifted = dict(b, positions=b["positions"] + 5)
    np.testing.assert_allclose(np.asarray(apply(model, shifted)), np.asarray(apply(model, b)), atol=2e-4)
    shuffled = dict(b, positions=b["positions"][:, ::-1].copy())
    assert not np.allclose(np.asarray(apply(model, shuffled)), np.asarray(apply(model, b)), atol=1e-3)


def _stack_into(scanned, layered):
    for name, var in scanned.blocks.stacked.items():
        var[...] = jnp.stack([layer[name][...] for layer in layered.blocks.layers])
    for name in ("embed", "modality_embed", "final_norm", "head"):
        getattr(scanned, name)[...] = getattr(layered, name)[...]


def test_scan_and_remat_match_plain_layers(model):
    b = make_batch()
    scanned = build_model(dict(CFG, scan_layers=True, remat=True), VOCAB, 32, rngs=nnx.Rngs(1))
    _stack_into(scanned, model)

    def loss(m):
        return jnp.mean(jax.nn.log_softmax(apply(m, b))[..., 20])

    np.testing.assert_allclose(np.asarray(apply(scanned, b)), np.asarray(apply(model, b)), rtol=1e-5, atol=1e-5)
    grad = nnx.jit(nnx.grad(loss))
    g_plain, g_scan = grad(model), grad(scanned)
    np.testing.assert_allclose(np.asarray(g_scan["head"][...]), np.asarray(g_plain["head"][...]), rtol=1e-4, atol=1e-6)
    stacked = np.asarray(g_scan["blocks"]["stacked"]["qkv"][...])
    np.testing.assert_allclose(stacked[1], np.asarray(g_plain["blocks"]["layers"][1]["qkv"][...]), rtol=1e-3, atol=1e-6)


def test_bfloat16_compute_close_to_float32(model):
    b = make_batch()
    low = build_model(dict(CFG, dtype="bfloat16"), VOCAB, 32, rngs=nnx.Rngs(0))
    assert low.head[...].dtype == jnp.float32, "parameters stay float32"
    ref = np.asarray(jax.nn.log_softmax(apply(model, b)))
    out = np.asarray(jax.nn.log_softmax(apply(low, b)))
    assert out.dtype == np.float32
    allowed = ref > NEG_INF / 2
    np.testing.assert_allclose(out[allowed], ref[allowed], atol=0.15)


def test_gelu_variant_runs():
    m = build_model(dict(CFG, mlp_type="gelu"), VOCAB, 32, rngs=nnx.Rngs(0))
    assert m.blocks.layers[0]["mlp_in"][...].shape == (32, 1, 64)
    assert np.all(np.isfinite(np.asarray(apply(m, make_batch()))[..., 20]))


def check_model_inputs(batch, vocab, max_len):
    """What a caller checks on the host before compiling: the MASK id, then the batch contract."""
    check_mask_id(vocab)
    check_batch({k: np.asarray(v) for k, v in batch.items()}, vocab, seq_len=max_len)


def test_bad_inputs_fail_before_compiling(model):
    b = make_batch()
    too_long = {k: np.tile(v, (1, 3)) for k, v in b.items()}
    with pytest.raises(ValueError, match="exceeds the model's maximum 32"):
        apply(model, too_long)
    with pytest.raises(LayoutError, match="exceeds the model's maximum 32"):
        check_model_inputs(too_long, VOCAB, 32)
    bad = dict(b, tokens=b["tokens"].copy())
    bad["tokens"][0, 3] = VOCAB.size + 7
    with pytest.raises(VocabError, match="outside the vocabulary"):
        check_model_inputs(bad, VOCAB, 32)
    masked_target = dict(b, tokens=b["tokens"].copy())
    masked_target["tokens"][0, 3] = VOCAB.mask_id
    with pytest.raises(LayoutError, match="MASK ids at target positions"):
        check_model_inputs(masked_target, VOCAB, 32)
    check_model_inputs(b, VOCAB, 32)


@dataclasses.dataclass(frozen=True)
class MaskInTextVocab(UnifiedVocab):
    @property
    def mask_id(self) -> int:
        return self.range("text")[0] + 1


def test_mask_id_inside_a_modality_range_is_rejected():
    with pytest.raises(ValueError, match="inside the text range"):
        check_mask_id(MaskInTextVocab(40, 20, 12))
    with pytest.raises(ValueError, match="inside the text range"):
        check_model_inputs(make_batch(), MaskInTextVocab(40, 20, 12), 32)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_fused_swiglu_matches_autodiff_of_the_formula(dtype):
    up = jax.random.normal(jax.random.key(0), (64, 2, 48), jnp.float32).astype(dtype) * 3
    grad_out = jax.random.normal(jax.random.key(1), (64, 48), jnp.float32).astype(dtype)

    def formula(u):
        u32 = u.astype(jnp.float32)
        return (jax.nn.silu(u32[:, 0]) * u32[:, 1]).astype(u.dtype)

    tol = dict(rtol=1e-6, atol=1e-6) if dtype == jnp.float32 else dict(rtol=2e-2, atol=2e-2)
    out, vjp = jax.vjp(swiglu, up)
    ref, ref_vjp = jax.vjp(formula, up)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), **tol)
    np.testing.assert_allclose(np.asarray(vjp(grad_out)[0], np.float32), np.asarray(ref_vjp(grad_out)[0], np.float32), **tol)
    assert vjp(grad_out)[0].dtype == dtype


# ---------------------------------------------------------------------------------------------
# The target-only head: the same loss as the full-vocabulary head, written out independently
# ---------------------------------------------------------------------------------------------
def _full_head_nll(model, params, b, where):
    """Reference: every logit of the unified vocabulary, ids outside the position's modality range (and
    MASK) set to -inf, then log-softmax at the target. Written from the definition, not from the model's head."""
    nnx.update(model, params)
    x = model.features(*(jnp.asarray(b[k]) for k in ("tokens", "modality", "segment_ids", "positions")))
    logits = jnp.einsum("bld,dv->blv", x.astype(jnp.float32), params["head"][...].astype(jnp.float32))[..., : VOCAB.size]
    ids = np.arange(VOCAB.size)
    allowed = np.zeros((4, VOCAB.size), bool)
    allowed[0] = ids != VOCAB.mask_id
    for m in (Modality.TEXT, Modality.IMAGE, Modality.AUDIO):
        lo, hi = VOCAB.range(m)
        allowed[int(m)] = (ids >= lo) & (ids < hi)
    logits = jnp.where(jnp.asarray(allowed)[b["modality"]], logits, -jnp.inf)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, jnp.asarray(b["tokens"])[..., None], axis=-1)[..., 0]
    return jnp.where(where, nll, 0.0)


def _mixed_batch(seed):
    """Rows mixing text, image and audio targets plus specials, at random selected positions."""
    rng = np.random.default_rng(seed)
    b = make_batch(seed)
    b["tokens"][:, 3:6] = rng.integers(*VOCAB.range("audio"), (B, 3))
    b["modality"][:, 3:6] = int(Modality.AUDIO)
    where = (rng.random((B, L)) < 0.6) & (b["modality"] > 0)
    return b, jnp.asarray(where)


def test_target_head_loss_and_gradients_equal_the_full_head(model, seed=1):
    b, where = _mixed_batch(seed)
    g = jnp.asarray(np.random.default_rng(seed + 7).normal(size=(B, L)), jnp.float32)
    graphdef, params = nnx.split(model, nnx.Param)

    def new(p):
        m = nnx.merge(graphdef, p)
        args = (jnp.asarray(b[k]) for k in ("tokens", "modality", "segment_ids", "positions"))
        return jnp.sum(g * m.target_nll(*args, jnp.asarray(b["tokens"]), where))

    def ref(p):
        return jnp.sum(g * _full_head_nll(nnx.merge(graphdef, p), p, b, where))

    (v_new, g_new), (v_ref, g_ref) = jax.jit(jax.value_and_grad(new))(params), jax.jit(jax.value_and_grad(ref))(params)
    np.testing.assert_allclose(float(v_new), float(v_ref), rtol=1e-5)
    for (path, a), (_, r) in zip(jax.tree_util.tree_leaves_with_path(g_new), jax.tree_util.tree_leaves_with_path(g_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=2e-4, atol=2e-6, err_msg=str(path))


def test_target_head_under_vmap_with_shared_and_per_example_weights():
    """The train step vmaps the loss over noise groups (shared weights) and a packed sweep vmaps over
    points (per-point weights): both batchings give each example's own values and gradients."""
    from mdiff.model.ops import target_nll

    rng = np.random.default_rng(3)
    ranges = ((0, 40), (5, 20), (20, 30), (30, 40))
    n, d = 90, 6
    h = jnp.asarray(rng.normal(size=(3, n, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(2, d, 40)), jnp.float32)
    mod = rng.integers(0, 4, (3, n))
    lo, hi = np.array(ranges).T
    tg = rng.integers(lo[mod], hi[mod])
    tg = np.where(tg == 1, 2, tg)
    where = rng.random((3, n)) < 0.5

    def ref(hh, ww, m, t, s):  # restricted log-softmax from the definition
        ids = np.arange(40)
        ok = (ids >= jnp.asarray(lo)[m][:, None]) & (ids < jnp.asarray(hi)[m][:, None]) & (ids != 1)
        logits = jnp.where(ok, hh @ ww, -jnp.inf)
        return jnp.where(s, -jnp.take_along_axis(jax.nn.log_softmax(logits), t[:, None], 1)[:, 0], 0.0)

    def total(fn, ws):
        per_point = jax.vmap(lambda ww: jnp.sum(jax.vmap(lambda hh, m, t, s: fn(hh, ww, m, t, s))(h, mod, tg, where) ** 2))
        return jnp.sum(per_point(ws))

    new = functools.partial(target_nll, ranges=ranges, excluded=1, tile=8)
    value_and_grad = jax.jit(jax.value_and_grad(total, 1), static_argnums=0)
    (v_new, gw_new), (v_ref, gw_ref) = value_and_grad(new, w), value_and_grad(ref, w)
    np.testing.assert_allclose(float(v_new), float(v_ref), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gw_new), np.asarray(gw_ref), rtol=1e-4, atol=1e-5)

    @functools.partial(jax.jit, static_argnums=0)
    def grad_h(fn):
        return jax.grad(lambda hh: jnp.sum(jax.vmap(lambda a, m, t, s: fn(a, w[0], m, t, s))(hh, mod, tg, where) ** 2))(h)

    gh_new, gh_ref = grad_h(new), grad_h(ref)
    np.testing.assert_allclose(np.asarray(gh_new), np.asarray(gh_ref), rtol=1e-4, atol=1e-5)


def test_fused_attention_equals_explicit_attention():
    explicit = build_model(CFG, VOCAB, 32, rngs=nnx.Rngs(0), attention="explicit")
    fused = build_model(CFG, VOCAB, 32, rngs=nnx.Rngs(0), attention="fused")
    b = make_batch(2)
    np.testing.assert_allclose(np.asarray(apply(fused, b)), np.asarray(apply(explicit, b)), rtol=1e-4, atol=1e-4)

    def grads(m):
        graphdef, params = nnx.split(m, nnx.Param)
        args = [jnp.asarray(b[k]) for k in ("tokens", "modality", "segment_ids", "positions")]
        return jax.jit(jax.grad(lambda p: jnp.sum(jnp.tanh(nnx.merge(graphdef, p)(*args)))))(params)

    for a, r in zip(jax.tree.leaves(grads(fused)), jax.tree.leaves(grads(explicit))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-3, atol=1e-5)
