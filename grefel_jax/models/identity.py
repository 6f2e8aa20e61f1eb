"""The face-identity network of identity pretraining: IR-50 + embedding + margin head.

`IdentityNet` is GReFEL's image branch as face.evoLVe trains it: the same `x[:, ::2, ::2]`
sub-sampling of the model-size input, the same IR-50 under the same name (`ir_back`), plus
face.evoLVe's fourth stage and `output_layer` (a 512-d embedding in IR-50) and a margin head
whose `kernel (E, num_identities)` holds one direction per training identity (the layout of
InsightFace_Pytorch's `Arcface.kernel`; face.evoLVe's ArcFace and CosFace store the transpose,
`weight (N, E)`, which `grefel_jax.convert` reads either way). Its variables load into
GReFEL with `--config.init_from`: stages 1-3 fill `ir_back`; `ir_back/body4_*`,
`ir_back/output_layer_*` and `margin_head` are left out there, as POSTER++ leaves them out
(docs/pretraining.md).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from grefel_jax.models import names
from grefel_jax.models.config import BackboneConfig
from grefel_jax.models.ir50 import IR50
from grefel_jax.models.layers import Dtype, subsample_by_two

MARGIN_HEAD = "margin_head"
# Per variant: units of the fourth stage and the embedding width. IR-50: 3 units of 512
# channels and a 512-d embedding (face.evoLVe); `tiny` keeps the same shape at its widths
# (fourth stage 2 * dims[2] = 128 channels, one unit, a 128-d embedding).
IDENTITY_SIZES = {
    "paper": {"stage4_units": 3, "embedding_dim": 512},
    "tiny": {"stage4_units": 1, "embedding_dim": 128},
}
# Guards the norms of embeddings and class directions (a zero vector has no direction).
NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class IdentityHeadConfig:
    """What identity pretraining adds to the backbone.

    Attributes:
      stage4_units: fourth-stage units (IDENTITY_SIZES).
      embedding_dim: E, the embedding width.
      embedding_dropout: Dropout rate inside `output_layer`.
      num_identities: N, the training identities (rows of the margin head).
    """

    stage4_units: int
    embedding_dim: int
    num_identities: int
    embedding_dropout: float = 0.0

    def __post_init__(self):
        for name in ("stage4_units", "embedding_dim", "num_identities"):
            if getattr(self, name) < 1:
                raise ValueError(f"identity.{name}={getattr(self, name)} must be >= 1.")
        if not 0.0 <= self.embedding_dropout < 1.0:
            raise ValueError(
                f"identity.embedding_dropout={self.embedding_dropout} must be in [0, 1)."
            )


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / max(||x||, eps) along `axis`; any shape, float32."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), NORM_EPS)


class MarginHead(nn.Module):
    """`embedding (B, E) -> cosine (B, N)`: cosine of the angle to each identity's direction.

    The parameter `kernel (E, N)` holds one column per identity, normalised at use
    (InsightFace_Pytorch's layout; face.evoLVe stores `weight (N, E)`); the margin and the
    scale are applied by the loss (`identity.losses`).
    """

    num_identities: int

    @nn.compact
    def __call__(self, embedding: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            nn.initializers.normal(0.01),
            (embedding.shape[-1], self.num_identities),
            jnp.float32,
        )
        return l2_normalize(embedding) @ l2_normalize(kernel, axis=0)


class IdentityNet(nn.Module):
    """`images (B, S, S, 3)` ImageNet-normalized -> `{'embedding' (B, E), 'cosine' (B, N)}`.

    With `embed_only=True` only the embedding is computed (verification, no margin head).

    Attributes:
      backbone: the GReFEL backbone sizes (image_size S, dims, ir_units).
      head: the fourth stage, embedding and identity count.
      dtype: compute dtype; the embedding and the cosines are float32.
    """

    backbone: BackboneConfig
    head: IdentityHeadConfig
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool, embed_only: bool = False):
        cfg = self.backbone
        x = subsample_by_two(images.astype(self.dtype))
        *_, embedding = IR50(
            cfg.dims,
            cfg.ir_units,
            self.dtype,
            stage4_units=self.head.stage4_units,
            embedding_dim=self.head.embedding_dim,
            embedding_dropout=self.head.embedding_dropout,
            name=names.IMAGE_BACKBONE,
        )(x, train)
        embedding = embedding.astype(jnp.float32)
        if embed_only:
            return {"embedding": embedding}
        cosine = MarginHead(self.head.num_identities, name=MARGIN_HEAD)(embedding)
        return {"embedding": embedding, "cosine": cosine}


def identity_sizes(params) -> dict[str, int]:
    """`{'stage4_units', 'embedding_dim', 'num_identities'}` read off identity-network
    parameters (`num_identities` 0 without a margin head), so that a workdir, a converted
    file or a packaged backbone rebuilds its IdentityNet without its config.

    Raises:
      ValueError: `ir_back` has no fourth stage or no `output_layer` (not an identity
        network: GReFEL keeps stages 1-3 only).
    """
    backbone = params.get(names.IMAGE_BACKBONE, {})
    units = sum(1 for k in backbone if k.startswith("body4_"))
    if not units or "output_layer_3" not in backbone:
        raise ValueError(
            "its ir_back has no fourth stage (body4_*) or no output_layer: not an identity "
            "network (python -m grefel_jax.pretrain identity, or python -m grefel_jax.convert "
            "--kind ir50_identity, gives one; GReFEL keeps stages 1-3 only)."
        )
    head = params.get(MARGIN_HEAD)
    return {
        "stage4_units": units,
        "embedding_dim": int(np.shape(backbone["output_layer_3"]["kernel"])[1]),
        "num_identities": int(np.shape(head["kernel"])[1]) if head else 0,
    }
