"""Window-based cross-attention between landmark and image features (docs/model.md §1c).

POSTER++ attends from frozen landmark features (queries) to image features (keys/values) at
three scales. The feature map side equals the window side at every scale, so there is exactly
one window per image and the "window" attention is global over the map's N = w*w tokens.

Three modules per scale, named like POSTER++'s (`window{s}`, `attn{s}`, `ffn{s}`):
* `WindowNorm`: LayerNorm (eps 1e-5) of the image map; its output is also the residual.
* `WindowCrossAttention`: raw landmark queries, K/V from one Linear, Swin relative bias.
* `LayerScaleFFN`: residual with layer-scale gammas, then a pre-norm MLP residual.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from grefel_jax.models.layers import (
    DropPath,
    Dtype,
    Mlp,
    attention_softmax,
    layer_norm,
    torch_default_init,
)


def relative_position_index(window: int) -> np.ndarray:
    """Swin's relative position index for a `window x window` window: `(N, N)` int, N = w*w.

    Entry (i, j) indexes the `((2w-1)^2, heads)` bias table by the offset between tokens i
    and j, built from an 'ij' meshgrid exactly as the official code does.
    """
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    flat = coords.reshape(2, -1)  # (2, N)
    rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0)  # (N, N, 2)
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


# Query rows per block of `attend`; maps with fewer tokens than CHUNK_MIN_TOKENS are one block.
QUERY_BLOCK = 112
CHUNK_MIN_TOKENS = 512


def _attend_block(q, k, v, bias):
    """softmax(q k^T + bias) v for a block of n queries: (B, h, n, d), keys (B, h, N, d).

    bias[None] broadcast over the batch would be the same sum, but the gradient of a broadcast
    is a reduce over B that XLA:CPU runs slowly (48 ms of a 580 ms tiny step at batch 64);
    written as a product with ones, its gradient is a matrix product.
    """
    ones = jnp.ones((q.shape[0],), q.dtype)
    scores = jnp.einsum("bhqd,bhkd->bhqk", q, k) + jnp.einsum("b,hqk->bhqk", ones, bias)
    weights = attention_softmax(scores.astype(jnp.float32)).astype(v.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", weights, v)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array) -> jax.Array:
    """Attention with an additive per-head bias: `(B, h, N, d)` x3, `(h, N, N)` -> `(B, h, N, d)`.

    Each query row's softmax is over all keys, so splitting the queries into blocks gives the
    same result (the same sums per row; float32 rounding may differ by ~1e-7). Large maps
    (N >= CHUNK_MIN_TOKENS: the first scale, N = 784) are computed as a scan over blocks of
    QUERY_BLOCK query rows: the (B, h, 112, N) block is reused while it is in cache instead
    of streaming a 157 MB (B, h, N, N) matrix through memory several times. On a 2-core AMD
    EPYC this took the first scale's attention from 512 to about 300 ms (forward + backward,
    batch 32; docs/performance.md).
    """
    n = q.shape[2]
    block = max(d for d in range(1, QUERY_BLOCK + 1) if n % d == 0)
    if n < CHUNK_MIN_TOKENS or block == n:
        return _attend_block(q, k, v, bias)
    blocks = n // block
    b, h, _, d = q.shape
    q_blocks = q.reshape(b, h, blocks, block, d).transpose(2, 0, 1, 3, 4)
    bias_blocks = bias.reshape(h, blocks, block, n).transpose(1, 0, 2, 3)

    def body(_, xs):
        return None, _attend_block(xs[0], k, v, xs[1])

    _, out = jax.lax.scan(body, None, (q_blocks, bias_blocks))  # (blocks, B, h, block, d)
    return out.transpose(1, 2, 0, 3, 4).reshape(b, h, n, d)


class WindowNorm(nn.Module):
    """`window`: LayerNorm over channels. `(B, H, W, C) -> (B, H*W, C)` tokens and the normed map.

    Returns `(tokens, shortcut)`: the tokens of the single window (row-major, as PyTorch's
    `window_partition` of a map whose side equals the window) and the normed map `(B,H,W,C)`
    that `LayerScaleFFN` adds back.
    """

    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        y = layer_norm(1e-5, "norm", self.dtype)(x)
        b, h, w, c = y.shape
        return y.reshape(b, h * w, c), y


class WindowCrossAttention(nn.Module):
    """`WindowAttentionGlobal`: landmark queries attend to image tokens.

    Args (call):
      tokens: `(B, N, C)` normed image tokens; keys and values come from them.
      queries: `(B, H, W, C)` landmark features with H*W = N, used as they are: the official
        code applies no projection and no normalization to them.
    Returns:
      `(B, N, C)` attention output after the `proj` Linear.

    Attributes:
      num_heads: heads; head dim = C / num_heads (32 at every scale in the paper).
      window: window side w (= map side); the bias table has shape `((2w-1)^2, heads)`.
    """

    num_heads: int
    window: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, queries: jax.Array) -> jax.Array:
        b, n, c = tokens.shape
        h = self.num_heads
        hd = c // h
        if queries.shape[1] * queries.shape[2] != n:
            raise ValueError(f"queries {queries.shape} do not match {n} image tokens")
        # (B, H, W, C) -> (B, heads, N, hd): channel c = head * hd + i, as `_to_query`.
        q = queries.reshape(b, n, h, hd).transpose(0, 2, 1, 3) * hd**-0.5
        kv = nn.Dense(2 * c, kernel_init=torch_default_init, dtype=self.dtype, name="qkv")(tokens)
        kv = kv.reshape(b, n, 2, h, hd).transpose(2, 0, 3, 1, 4)  # (2, B, heads, N, hd)
        k, v = kv[0], kv[1]
        table = self.param(
            "relative_position_bias_table",
            nn.initializers.truncated_normal(0.02),
            ((2 * self.window - 1) ** 2, h),
            jnp.float32,
        )
        index = relative_position_index(self.window).reshape(-1)
        bias = table[index].reshape(n, n, h).transpose(2, 0, 1)  # (heads, N, N)
        out = attend(q, k, v, bias.astype(q.dtype))  # (B, heads, N, hd)
        out = out.transpose(0, 2, 1, 3).reshape(b, n, c)
        return nn.Dense(c, kernel_init=torch_default_init, dtype=self.dtype, name="proj")(out)


class LayerScaleFFN(nn.Module):
    """`feedforward`: `x = y + DropPath(g1 * attn)`, `x = x + DropPath(g2 * MLP(LN(x)))`.

    Args (call):
      attn_tokens: `(B, N, C)` attention output.
      shortcut: `(B, H, W, C)` normed image map from `WindowNorm`.
      train: enables DropPath.
    Returns `(B, H, W, C)`.
    """

    drop_path: float
    layer_scale_init: float = 1e-5
    mlp_ratio: int = 4
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, attn_tokens: jax.Array, shortcut: jax.Array, train: bool) -> jax.Array:
        c = shortcut.shape[-1]
        gamma_init = nn.initializers.constant(self.layer_scale_init)
        gamma1 = self.param("gamma1", gamma_init, (c,), jnp.float32)
        gamma2 = self.param("gamma2", gamma_init, (c,), jnp.float32)
        drop = DropPath(self.drop_path)
        x = attn_tokens.reshape(shortcut.shape)
        x = shortcut + drop(gamma1.astype(x.dtype) * x, deterministic=not train)
        y = layer_norm(1e-5, "norm", self.dtype)(x)
        y = Mlp(self.mlp_ratio * c, c, dtype=self.dtype, name="mlp")(y)
        return x + drop(gamma2.astype(x.dtype) * y, deterministic=not train)
