"""Reliability math (grefel_jax/reliability.py) against numpy, from docs/reliability.md §2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grefel_jax import reliability as rel

B, C, K, D = 5, 7, 3, 6


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _np_confidence(q):
    # c(q) = 1 - H(q) / ln C, H(q) = -sum q ln q (q > 0 here).
    return 1.0 - (-(q * np.log(q)).sum(-1)) / np.log(q.shape[-1])


def _np_distances(e, a):
    out = np.zeros((e.shape[0], a.shape[0], a.shape[1]))
    for b in range(e.shape[0]):
        for i in range(a.shape[0]):
            for j in range(a.shape[1]):
                out[b, i, j] = np.sqrt(np.sum((e[b] - a[i, j]) ** 2))
    return out


def _np_similarity(dist, delta):
    s = _softmax(-dist.reshape(dist.shape[0], -1) / delta).reshape(dist.shape)
    return s.sum(-1)


def _random_dists(rng, shape):
    return _softmax(rng.normal(size=shape) * 2.0)


def _assert_finite_tree(tree):
    for leaf in jax.tree.leaves(tree):
        assert np.all(np.isfinite(np.asarray(leaf))), tree


def test_confidence_matches_numpy():
    q = _random_dists(np.random.default_rng(0), (B, C)).astype(np.float32)
    got = rel.normalized_entropy_confidence(jnp.asarray(q))
    assert got.shape == (B,)
    np.testing.assert_allclose(got, _np_confidence(q.astype(np.float64)), atol=1e-6)


def test_confidence_ends_and_gradients_are_finite():
    onehot = jax.nn.one_hot(jnp.array([0, 3]), C)
    uniform = jnp.full((2, C), 1.0 / C)
    np.testing.assert_allclose(rel.normalized_entropy_confidence(onehot), [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(rel.normalized_entropy_confidence(uniform), [0.0, 0.0], atol=1e-6)
    for q in (onehot, uniform):
        grad = jax.grad(lambda q: rel.normalized_entropy_confidence(q).sum())(q)
        _assert_finite_tree(grad)


def test_anchor_distances_match_numpy():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(B, D)).astype(np.float32)
    a = rng.normal(size=(C, K, D)).astype(np.float32)
    got = rel.anchor_distances(jnp.asarray(e), jnp.asarray(a))
    assert got.shape == (B, C, K)
    np.testing.assert_allclose(got, _np_distances(e.astype(np.float64), a), rtol=1e-5, atol=1e-5)


def test_anchor_distances_gradient_at_coincidence():
    zero_e, zero_a = jnp.zeros((B, D)), jnp.zeros((C, K, D))
    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.normal(size=(C, K, D)), jnp.float32)
    e_on_anchor = jnp.stack([a[1, 2], a[0, 0]])  # embeddings exactly on anchors
    for e, anchors in ((zero_e, zero_a), (e_on_anchor, a)):
        grads = jax.grad(lambda e, a: rel.anchor_distances(e, a).sum(), argnums=(0, 1))(e, anchors)
        _assert_finite_tree(grads)
    d = rel.anchor_distances(e_on_anchor, a)
    assert float(d[0, 1, 2]) < 1e-5 and float(d[1, 0, 0]) < 1e-5


def test_anchor_distances_rejects_bad_shapes():
    with pytest.raises(ValueError, match="anchor_distances"):
        rel.anchor_distances(jnp.zeros((B, D)), jnp.zeros((C, K, D + 1)))


@pytest.mark.parametrize("delta", [1.0, 0.3])
def test_anchor_similarity_matches_numpy(delta):
    dist = np.abs(np.random.default_rng(3).normal(size=(B, C, K))) * 3
    got = rel.anchor_similarity(jnp.asarray(dist, jnp.float32), delta)
    assert got.shape == (B, C)
    np.testing.assert_allclose(got, _np_similarity(dist, delta), atol=1e-6)
    np.testing.assert_allclose(got.sum(-1), np.ones(B), atol=1e-6)


def test_combine_and_balance_match_numpy():
    rng = np.random.default_rng(4)
    g, m, p = (_random_dists(rng, (B, C)) for _ in range(3))
    cg, cm, cp = (rng.uniform(0.05, 1.0, size=B) for _ in range(3))
    r_ref = (cg[:, None] * g + cm[:, None] * m) / (cg + cm)[:, None]
    q_ref = cp[:, None] * p + (1 - cp[:, None]) * r_ref
    f32 = lambda x: jnp.asarray(x, jnp.float32)
    r = rel.combine_corrections(f32(g), f32(cg), f32(m), f32(cm))
    np.testing.assert_allclose(r, r_ref, atol=1e-6)
    q = rel.balance(f32(p), f32(cp), r)
    np.testing.assert_allclose(q, q_ref, atol=1e-6)
    np.testing.assert_allclose(q.sum(-1), np.ones(B), atol=1e-6)


def test_combine_with_both_confidences_zero():
    rng = np.random.default_rng(5)
    g, m = (jnp.asarray(_random_dists(rng, (B, C)), jnp.float32) for _ in range(2))
    zeros = jnp.zeros((B,))
    r = rel.combine_corrections(g, zeros, m, zeros)
    np.testing.assert_allclose(r, (g + m) / 2, atol=1e-6)
    grads = jax.grad(
        lambda g, cg, m, cm: rel.combine_corrections(g, cg, m, cm)[:, 0].sum(),
        argnums=(0, 1, 2, 3),
    )(g, zeros, m, zeros)
    _assert_finite_tree(grads)


def test_full_pipeline_gradients_on_degenerate_inputs():
    """Zero anchors + zero / identical embeddings: uniform g (c_g = 0), still finite grads."""

    def corrected(e, anchors, p, m):
        g = rel.anchor_similarity(rel.anchor_distances(e, anchors), 1.0)
        r = rel.combine_corrections(
            g, rel.normalized_entropy_confidence(g), m, rel.normalized_entropy_confidence(m)
        )
        q = rel.balance(p, rel.normalized_entropy_confidence(p), r)
        return jnp.sum(jnp.log(rel.apply_trust(p, q, 0.5) + 1e-6))

    uniform = jnp.full((B, C), 1.0 / C)
    onehot = jax.nn.one_hot(jnp.arange(B) % C, C)
    same = jnp.tile(jnp.arange(D, dtype=jnp.float32)[None], (B, 1))
    for e in (jnp.zeros((B, D)), same):
        for p, m in ((uniform, uniform), (onehot, uniform), (uniform, onehot)):
            value, grads = jax.value_and_grad(corrected, argnums=(0, 1, 2, 3))(
                e, jnp.zeros((C, K, D)), p, m
            )
            assert np.isfinite(float(value))
            _assert_finite_tree(grads)


def test_trust_ramp_and_apply_trust():
    assert float(rel.trust_ramp(0, 100)) == 0.0
    assert float(rel.trust_ramp(25, 100)) == pytest.approx(0.25)
    assert float(rel.trust_ramp(250, 100)) == 1.0
    assert float(jax.jit(rel.trust_ramp)(jnp.int32(50), jnp.int32(200))) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="total_steps"):
        rel.trust_ramp(1, 0)
    rng = np.random.default_rng(6)
    p, q = _random_dists(rng, (B, C)), _random_dists(rng, (B, C))
    got = rel.apply_trust(jnp.asarray(p, jnp.float32), jnp.asarray(q, jnp.float32), 0.3)
    np.testing.assert_allclose(got, 0.7 * p + 0.3 * q, atol=1e-6)


def test_select_correction_ablations():
    rng = np.random.default_rng(7)
    g, m, p = (jnp.asarray(_random_dists(rng, (B, C)), jnp.float32) for _ in range(3))
    cg, cm, cp = (jnp.asarray(rng.uniform(0.05, 1.0, size=B), jnp.float32) for _ in range(3))
    both = rel.select_correction("both", g, cg, m, cm)
    np.testing.assert_array_equal(both, rel.combine_corrections(g, cg, m, cm))
    np.testing.assert_array_equal(rel.select_correction("anchors", g, cg, m, cm), g)
    np.testing.assert_array_equal(rel.select_correction("attention", g, cg, m, cm), m)
    # The three really differ on this input (else the checks above would prove nothing).
    assert not np.allclose(both, g, atol=1e-3) and not np.allclose(both, m, atol=1e-3)
    q = rel.balance(p, cp, rel.select_correction("anchors", g, cg, m, cm))
    np.testing.assert_array_equal(q, rel.balance(p, cp, g))
    with pytest.raises(ValueError, match="kind='anchor'"):
        rel.select_correction("anchor", g, cg, m, cm)


def test_scheduled_trust():
    for step in (0, 3, 10, 25):
        ramp = rel.trust_ramp(step, 10)
        assert float(rel.scheduled_trust("ramp", ramp)) == float(ramp)
        assert float(rel.scheduled_trust("none", ramp)) == 0.0
        assert float(rel.scheduled_trust("full", ramp)) == 1.0
    traced = jax.jit(lambda s: rel.scheduled_trust("full", rel.trust_ramp(s, 10)))(jnp.int32(0))
    assert traced.dtype == jnp.float32 and float(traced) == 1.0
    with pytest.raises(ValueError, match="schedule='off'"):
        rel.scheduled_trust("off", 0.5)
