"""The whole GReFEL model: POSTER++ feature extractor + classification head.

```
image (B,224,224,3) --x[:, ::2, ::2]--> (B,112,112,3)
   |                                      |
   |  MobileFaceNet (frozen)              |  IR-50 stages 1-3
   |  F1 (B,28,28,64)  F2 (14,14,128)     |  I1 (56,56,64) I2 (28,28,128) I3 (14,14,256)
   |  F3 = last_face_conv(512->256) 7x7   |  conv1/2/3: 3x3 stride 2 -> 28x28, 14x14, 7x7
   |            queries                   |        keys / values (after window LayerNorm)
   +-------------> window cross-attention x3 (attn{s} + ffn{s}) <---+
                       O1 (28,28,64) O2 (14,14,128) O3 (7,7,256)
                embed_q (2 convs) / embed_k (1 conv) / embed_v (1x1)  -> 3 x 49 tokens
                       FusionViT: CLS + pos, 2 blocks, LN, SE gate -> embedding (B,768)
                       head: 'poster' Linear, or 'grefel' reliability balancing
```
Parameter subtrees use POSTER++'s names (`face_landback`, `ir_back`, `conv1`, `window1`,
`attn1`, `ffn1`, `last_face_conv`, `embed_q`, `VIT`, ...) and `head`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from grefel_jax.models import names
from grefel_jax.models.config import ModelConfig
from grefel_jax.models.fusion import EmbedK, EmbedQ, EmbedV, fuse_tokens
from grefel_jax.models.heads import make_head
from grefel_jax.models.ir50 import IR50
from grefel_jax.models.layers import Dtype, conv, subsample_by_two
from grefel_jax.models.mobilefacenet import MobileFaceNet
from grefel_jax.models.vit import FusionViT
from grefel_jax.models.window_attention import LayerScaleFFN, WindowCrossAttention, WindowNorm


class GReFEL(nn.Module):
    """GReFEL / POSTER++ model.

    Call: `model.apply(variables, images, train=..., rngs={'dropout': key},
    mutable=['batch_stats'])` with `images (B, S, S, 3) float32` (ImageNet-normalized RGB,
    S = `config.backbone.image_size`). Returns the head's output dict (`logits`, `probs`,
    `confidence`, `corrected_probs`, `head_embedding`, and for the grefel head `anchors`,
    `anchor_probs`, `anchor_confidence`, `attention_probs`, `attention_confidence`) plus
    `embedding (B, vit_dim)`, the SE-gated CLS token.

    With `features_only=True` only `{'embedding': (B, vit_dim)}` is returned (no head).
    Stage features are sown into the 'intermediates' collection (`face{1,2,3}`,
    `ir{1,2,3}`, `attended{1,2,3}`, `tokens`) for parity checks and analysis.

    Attributes:
      config: the ModelConfig (backbone sizes + head).
      dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
    """

    config: ModelConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, images: jax.Array, *, train: bool, features_only: bool = False
    ) -> dict[str, jax.Array]:
        cfg = self.config.backbone
        size = cfg.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise ValueError(
                f"GReFEL expects images of shape (B, {size}, {size}, 3) for "
                f"model.backbone.image_size={size}; got {images.shape}."
            )
        dt = self.dtype
        x = subsample_by_two(images.astype(dt))

        # Landmark branch: frozen, stored BN statistics, no gradient (docs/decisions.md).
        landmark_net = MobileFaceNet(cfg.dims[0], cfg.mfn_units, dt, name=names.LANDMARK_NET)
        face1, face2, face3 = landmark_net(x)
        face1, face2, face3 = (jax.lax.stop_gradient(f) for f in (face1, face2, face3))
        if cfg.landmark_queries == "constant":
            # The ablation of the geometry (BackboneConfig.landmark_queries): the network still
            # runs, so the parameter tree is the same, but its maps carry nothing.
            face1, face2, face3 = (jnp.zeros_like(f) for f in (face1, face2, face3))
        face3 = conv(cfg.dims[2], 3, 1, 1, use_bias=True, name="last_face_conv", dtype=dt)(face3)

        # Image branch: IR-50, trainable unless frozen (then also on stored BN statistics).
        frozen_ir = cfg.freeze_image_backbone
        image_net = IR50(cfg.dims, cfg.ir_units, dt, name=names.IMAGE_BACKBONE)
        irs = image_net(x, train and not frozen_ir)
        if frozen_ir:
            irs = tuple(jax.lax.stop_gradient(f) for f in irs)

        drop_paths = np.linspace(0.0, cfg.drop_path_max, 5)[:3]
        attended = []
        for s, (ir, face) in enumerate(zip(irs, (face1, face2, face3)), start=1):
            self.sow("intermediates", f"face{s}", face)
            self.sow("intermediates", f"ir{s}", ir)
            dim, heads, window = cfg.dims[s - 1], cfg.window_heads[s - 1], cfg.window_sizes[s - 1]
            ir = conv(dim, 3, 2, 1, use_bias=True, name=f"conv{s}", dtype=dt)(ir)
            tokens, shortcut = WindowNorm(dt, name=f"window{s}")(ir)
            out = WindowCrossAttention(heads, window, dt, name=f"attn{s}")(tokens, face)
            out = LayerScaleFFN(
                float(drop_paths[s - 1]), cfg.layer_scale_init, 4, dt, name=f"ffn{s}"
            )(out, shortcut, train)
            self.sow("intermediates", f"attended{s}", out)
            attended.append(out)

        o1, o2, o3 = attended
        tokens = fuse_tokens(
            EmbedQ(cfg.vit_dim, dt, name="embed_q")(o1),
            EmbedK(cfg.vit_dim, dt, name="embed_k")(o2),
            EmbedV(cfg.vit_dim, dt, name="embed_v")(o3),
        )
        self.sow("intermediates", "tokens", tokens)
        embedding = FusionViT(
            num_tokens=tokens.shape[1],
            depth=cfg.vit_depth,
            num_heads=cfg.vit_heads,
            mlp_ratio=cfg.vit_mlp_ratio,
            init_std=cfg.vit_dense_init_std,
            dtype=dt,
            name="VIT",
        )(tokens)
        # The head and the losses run in float32 (entropies, distances, softmax over anchors).
        embedding = embedding.astype(jnp.float32)
        if features_only:
            return {"embedding": embedding}
        outputs = dict(make_head(self.config.head, name=names.HEAD)(embedding, train=train))
        outputs["embedding"] = embedding
        return outputs


def init_variables(model: GReFEL, rng: jax.Array, batch_size: int = 1) -> dict:
    """Initialises `{'params', 'batch_stats'}` for `model` with a zero batch `(B, S, S, 3)`.

    Jitted: eager initialisation dispatches thousands of small ops and is many times slower.
    """
    size = model.config.backbone.image_size

    @jax.jit
    def init(rng):
        params_rng, dropout_rng = jax.random.split(rng)
        images = jnp.zeros((batch_size, size, size, 3), jnp.float32)
        variables = model.init({"params": params_rng, "dropout": dropout_rng}, images, train=False)
        # Drop the sown 'intermediates': only parameters and BN statistics are state.
        return {k: variables[k] for k in ("params", "batch_stats") if k in variables}

    return init(rng)
