"""The CPU-specific gradient forms (docs/performance.md) compute what XLA's own gradients do:
the banded conv kernel gradient, the phase-split strided input gradient, the attention softmax
with its custom backward, and the query-blocked window attention."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grefel_jax.models import conv_grad
from grefel_jax.models.layers import attention_softmax
from grefel_jax.models.window_attention import _attend_block, attend


def _max_relative(a, b) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


# (batch, side, Cin, Cout, kernel, stride, padding). With MIN_WORK lowered to 56*56*4*3 in the
# test, all but the 8x8 case take the CPU forms (the 8x8 one takes XLA's): stride 1, strided
# 3x3 (phases: Cin >= Cout) and 1x1, odd sides, stride 3, Cin < Cout.
CASES = [
    (2, 56, 4, 4, 3, 1, 1),
    (1, 57, 6, 4, 3, 2, 1),
    (1, 56, 5, 5, 1, 2, 0),
    (1, 58, 4, 3, 3, 3, 1),
    (2, 8, 4, 4, 3, 2, 1),
    (1, 56, 2, 8, 3, 2, 1),
]


@pytest.mark.parametrize("case", CASES)
def test_conv2d_gradients_match_xla(case, monkeypatch):
    monkeypatch.setattr(conv_grad, "MIN_WORK", 56 * 56 * 4 * 3)
    batch, side, cin, cout, k, s, p = case
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(batch, side, side, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, s, p)))

    ours = jax.jit(jax.grad(loss(conv_grad.conv2d), (0, 1)))(x, w)
    xla = jax.jit(jax.grad(loss(conv_grad._conv), (0, 1)))(x, w)
    np.testing.assert_array_equal(conv_grad.conv2d(x, w, s, p), conv_grad._conv(x, w, s, p))
    assert _max_relative(ours[0], xla[0]) < 1e-5
    assert _max_relative(ours[1], xla[1]) < 1e-5

    # The CPU forms themselves, whichever path the thresholds pick for this shape.
    g = jnp.asarray(rng.normal(size=conv_grad._conv(x, w, s, p).shape), jnp.float32)
    banded = conv_grad.banded_kernel_grad(x, g, k, s, p)
    native = conv_grad.native_kernel_grad(x, g, w.shape, s, p)
    assert _max_relative(banded, native) < 1e-5
    if s > 1:
        phases = conv_grad.strided_input_grad(g, w, x.shape, s, p)
        _, vjp = jax.vjp(lambda v: conv_grad._conv(v, w, s, p), x)
        assert _max_relative(phases, vjp(g)[0]) < 1e-5


def test_band_rows_tile_the_map():
    assert conv_grad.band_rows(32, 112, 112) == 1  # 32 * 112 rows already exceed 1024
    assert conv_grad.band_rows(1, 56, 56) == 14  # 14 * 56 = 784 <= 1024; 28 would not fit
    assert conv_grad.band_rows(2, 7, 7) == 7  # the whole map is one band
    for rows in (conv_grad.band_rows(3, 28, 28), conv_grad.band_rows(5, 13, 20)):
        assert rows >= 1


def test_attention_softmax_value_and_gradient():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 3, 5, 7)) * 3, jnp.float32)
    np.testing.assert_allclose(attention_softmax(x), jax.nn.softmax(x, axis=-1), rtol=1e-6)
    weights = jnp.arange(7, dtype=jnp.float32)

    def loss(softmax):
        return lambda x: jnp.sum(jnp.sin(softmax(x) * weights))

    ours = jax.grad(loss(attention_softmax))(x)
    reference = jax.grad(loss(lambda v: jax.nn.softmax(v, axis=-1)))(x)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-7)


def test_blocked_attention_equals_one_block():
    """N = 784 (the first scale) goes through the query-block scan; values and gradients
    equal the single-block computation."""
    rng = np.random.default_rng(2)
    q, k, v = (jnp.asarray(rng.normal(size=(2, 1, 784, 4)), jnp.float32) for _ in range(3))
    bias = jnp.asarray(rng.normal(size=(1, 784, 784)) * 0.1, jnp.float32)
    np.testing.assert_allclose(attend(q, k, v, bias), _attend_block(q, k, v, bias), atol=1e-6)

    def loss(fn):
        return lambda *a: jnp.sum(jnp.sin(fn(*a)))

    ours = jax.jit(jax.grad(loss(attend), (0, 1, 2, 3)))(q, k, v, bias)
    single = jax.jit(jax.grad(loss(_attend_block), (0, 1, 2, 3)))(q, k, v, bias)
    for a, b in zip(ours, single):
        assert _max_relative(a, b) < 1e-5
