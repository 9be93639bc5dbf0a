"""Size presets: exact parameter counts against the real tree, paper-scale totals, FLOPs vs XLA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mdiff.vocab import UnifiedVocab
from mdiff.model import build_model
from mdiff.model.scaling import PRESETS, ShapeError, flops_per_token, padded_vocab, param_counts, resolve_shape

EMBEDDING_PARAMS = ("embed", "modality_embed", "head")


def vocab_of_size(n):
    return UnifiedVocab(n - 15 - 2, 1, 1)


def tree_counts(model_cfg, vocab, seq_len=64, abstract=True):
    make = lambda: build_model(model_cfg, vocab, seq_len, rngs=nnx.Rngs(0))  # noqa: E731
    model = nnx.eval_shape(make) if abstract else make()
    params = nnx.state(model, nnx.Param)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    embedding = sum(int(np.prod(getattr(model, name).shape)) for name in EMBEDDING_PARAMS)
    return dict(total=total, embedding=embedding, non_embedding=total - embedding)


@pytest.mark.parametrize("size", list(PRESETS))
def test_param_counts_match_the_parameter_tree(size):
    vocab = vocab_of_size(PRESETS[size].reference_vocab)
    assert param_counts(resolve_shape(dict(size=size)), vocab.size) == tree_counts(dict(size=size), vocab)


@pytest.mark.parametrize("mlp_type", ["swiglu", "gelu"])
@pytest.mark.parametrize("scan", [False, True])
def test_counts_for_variants(mlp_type, scan):
    cfg = dict(width=40, depth=3, heads=4, mlp_hidden=72, mlp_type=mlp_type, scan_layers=scan)
    vocab = UnifiedVocab(100, 30, 20)
    assert param_counts(resolve_shape(cfg), vocab.size) == tree_counts(cfg, vocab)


def test_counts_on_a_materialised_model():
    cfg = dict(width=16, depth=1, heads=2, mlp_hidden=24)
    vocab = UnifiedVocab(100, 30, 20)
    assert param_counts(resolve_shape(cfg), vocab.size) == tree_counts(cfg, vocab, abstract=False)


def test_preset_sizes_span_cpu_to_3b():
    def total(size):
        return param_counts(PRESETS[size], PRESETS[size].reference_vocab)

    cpu = [s for s in PRESETS if s.startswith("cpu-")]
    assert len(cpu) >= 4 and all(total(s)["total"] < 1_000_000 for s in cpu)
    assert sorted(cpu, key=lambda s: total(s)["non_embedding"]) == cpu, "cpu presets increase in size"
    bench = PRESETS["bench-small"]
    assert (bench.width, bench.depth, bench.heads, bench.mlp_hidden, bench.reference_vocab) == (256, 4, 4, 1024, 4096)
    pilot = total("pilot-320m")
    assert 300e6 < pilot["total"] < 340e6 and 230e6 < pilot["embedding"] < 250e6
    assert 0.9e9 < total("1b")["total"] < 1.2e9
    assert 2.8e9 < total("3b")["total"] < 3.3e9


def test_flops_formula_matches_anchor_and_xla():
    # By hand: V 4096, S 256, L 4, D 256, gated MLP 1024 -> 6 (4 (4 D^2 + 3 D 1024) + D V) + 12 L D S = 34,603,008.
    bench = PRESETS["bench-small"]
    assert flops_per_token(bench, 4096, 256) == 34_603_008
    # XLA's own count of a forward + backward pass (elementwise work included) agrees within a few %.
    vocab = vocab_of_size(4096)
    model = nnx.eval_shape(lambda: build_model(dict(size="bench-small"), vocab, 256, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # abstract: compiled, never run
    tokens = jnp.zeros((2, 256), jnp.int32) + 20

    def loss(p):
        m = nnx.merge(graphdef, p, rest)
        return jnp.mean(jax.nn.logsumexp(m(tokens, tokens * 0 + 1, tokens * 0 + 1, tokens * 0), axis=-1))

    cost = jax.jit(jax.grad(loss)).lower(params).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    assert cost["flops"] == pytest.approx(flops_per_token(bench, vocab.size, 256) * 2 * 256, rel=0.05)


def test_vocab_padding_and_unknown_preset():
    assert padded_vocab(4096) == 4096 and padded_vocab(4097) == 4224
    with pytest.raises(ShapeError, match="known presets: cpu-4xs, cpu-3xs, cpu-xxs"):
        resolve_shape(dict(size="7b"))
    with pytest.raises(ShapeError, match="not divisible by heads"):
        resolve_shape(dict(width=30, depth=1, heads=4, mlp_hidden=8))
