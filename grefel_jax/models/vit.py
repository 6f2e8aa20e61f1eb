"""Fusion transformer after the three scales (docs/model.md §1e; POSTER++ `vit_model.py`).

CLS token + position embedding, `depth` pre-norm blocks (LayerNorm eps 1e-6, exact GELU),
a final LayerNorm, the CLS token, then the squeeze-excitation gate. Only the parameters the
official forward pass uses exist here: the official module's `patch_embed`, `CON1`,
`IRLinear1/2`, `eca_block` and `blocks.i.conv` are dead code and are not built.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from grefel_jax.models.layers import Dtype, Mlp, attention_softmax, layer_norm

# `_init_vit_weights`: Linear weights trunc-normal(0.01) at width 768, biases 0 (Flax's default
# bias). `BackboneConfig.vit_init_std` says how the std follows the width.
OFFICIAL_DENSE_INIT_STD = 0.01


class SelfAttention(nn.Module):
    """timm `Attention`: `(B, N, D) -> (B, N, D)` with a fused `qkv` Linear and `proj`."""

    num_heads: int
    init_std: float = OFFICIAL_DENSE_INIT_STD
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, d = x.shape
        h = self.num_heads
        hd = d // h
        init = nn.initializers.truncated_normal(self.init_std)
        qkv = nn.Dense(3 * d, kernel_init=init, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, h, hd).transpose(2, 0, 3, 1, 4)  # (3, B, heads, N, hd)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = jnp.einsum("bhqd,bhkd->bhqk", q * hd**-0.5, k)
        attn = attention_softmax(attn.astype(jnp.float32)).astype(v.dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", attn, v).transpose(0, 2, 1, 3).reshape(b, n, d)
        return nn.Dense(d, kernel_init=init, dtype=self.dtype, name="proj")(out)


class Block(nn.Module):
    """Pre-norm transformer block: `x + Attn(LN(x))`, then `x + MLP(LN(x))`. `(B,N,D)` kept."""

    num_heads: int
    mlp_ratio: int = 4
    init_std: float = OFFICIAL_DENSE_INIT_STD
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        init = nn.initializers.truncated_normal(self.init_std)
        y = layer_norm(1e-6, "norm1", self.dtype)(x)
        x = x + SelfAttention(self.num_heads, self.init_std, self.dtype, name="attn")(y)
        y = layer_norm(1e-6, "norm2", self.dtype)(x)
        y = Mlp(self.mlp_ratio * d, d, kernel_init=init, dtype=self.dtype, name="mlp")(y)
        return x + y


class SEBlock(nn.Module):
    """Squeeze-excitation gate on a vector: `e = x * sigmoid(W2 relu(W1 x))`. `(B, D)` kept."""

    init_std: float = OFFICIAL_DENSE_INIT_STD
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        init = nn.initializers.truncated_normal(self.init_std)
        g = nn.Dense(d, kernel_init=init, dtype=self.dtype, name="linear1")(x)
        g = nn.Dense(d, kernel_init=init, dtype=self.dtype, name="linear2")(nn.relu(g))
        return x * nn.sigmoid(g)


class FusionViT(nn.Module):
    """POSTER++'s `VisionTransformer` minus its head: tokens `(B, T, D)` -> embedding `(B, D)`.

    Attributes:
      num_tokens: T (147 in the paper); the position embedding has T + 1 rows (CLS).
      depth: blocks (2). num_heads: heads (8, hard-coded officially). mlp_ratio: 4.
      init_std: std of every Linear weight inside (0.01 officially, at width 768).
    """

    num_tokens: int
    depth: int = 2
    num_heads: int = 8
    mlp_ratio: int = 4
    init_std: float = OFFICIAL_DENSE_INIT_STD
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        b, t, d = tokens.shape
        if t != self.num_tokens:
            raise ValueError(f"FusionViT expects {self.num_tokens} tokens, got {t}")
        init = nn.initializers.truncated_normal(0.02)
        cls = self.param("cls_token", init, (1, 1, d), jnp.float32)
        pos = self.param("pos_embed", init, (1, t + 1, d), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(tokens.dtype), tokens], 1)
        x = x + pos.astype(x.dtype)
        for i in range(self.depth):
            x = Block(
                self.num_heads, self.mlp_ratio, self.init_std, self.dtype, name=f"blocks_{i}"
            )(x)
        x = layer_norm(1e-6, "norm", self.dtype)(x)
        return SEBlock(self.init_std, self.dtype, name="se_block")(x[:, 0])
