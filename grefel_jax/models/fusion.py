"""Multi-scale fusion of the three attended maps into one token sequence (docs/model.md §1d).

Each scale is brought to the coarsest map (S/16, 7x7 in the paper) and the ViT width:
scale 1 by two stride-2 3x3 convs (`embed_q`), scale 2 by one (`embed_k`), scale 3 by a 1x1
conv (`embed_v`, POSTER++'s `PatchEmbed`). `fuse_tokens` concatenates the three token sets:
3 * 49 = 147 tokens in the paper.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from grefel_jax.models.layers import Dtype, conv


def fuse_tokens(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """Concatenates the three embedded maps, each `(B, h, w, D)`, into `(B, 3*h*w, D)` tokens.

    Row-major flattening, like PyTorch's `flatten(2).transpose(1, 2)` on NCHW maps.
    """
    return jnp.concatenate([x.reshape(x.shape[0], -1, x.shape[-1]) for x in (q, k, v)], axis=1)


class EmbedQ(nn.Module):
    """Two 3x3 stride-2 convs with bias: `(B, H, W, C) -> (B, H/4, W/4, dim)`."""

    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = conv(self.dim, 3, 2, 1, use_bias=True, name="conv_0", dtype=self.dtype)(x)
        return conv(self.dim, 3, 2, 1, use_bias=True, name="conv_1", dtype=self.dtype)(x)


class EmbedK(nn.Module):
    """One 3x3 stride-2 conv with bias: `(B, H, W, C) -> (B, H/2, W/2, dim)`."""

    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(self.dim, 3, 2, 1, use_bias=True, name="conv_0", dtype=self.dtype)(x)


class EmbedV(nn.Module):
    """`PatchEmbed` with a 1x1 conv `proj`: `(B, H, W, C) -> (B, H, W, dim)`."""

    dim: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return conv(self.dim, 1, 1, 0, use_bias=True, name="proj", dtype=self.dtype)(x)
