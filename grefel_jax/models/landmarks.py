"""The landmark network: GReFEL's landmark branch plus a head that regresses the points.

`LandmarkNet` is GReFEL's landmark branch plus the GDC head: the same `x[:, ::2, ::2]`
sub-sampling of the model-size input, the same MobileFaceNet under the same name
(`face_landback`), so its variables load into GReFEL with `--config.init_from` (the head,
`face_landback/output_layer`, is left out there, as POSTER++ leaves it out). Landmark
pretraining trains it (`grefel_jax.landmarks`); `inference.landmark_points` predicts with it.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from grefel_jax.models import names
from grefel_jax.models.config import BackboneConfig
from grefel_jax.models.layers import Dtype, subsample_by_two
from grefel_jax.models.mobilefacenet import MobileFaceNet

PyTree = Any


class LandmarkNet(nn.Module):
    """`images (B, S, S, 3)` ImageNet-normalized -> points `(B, N, 2)` float32 in crop units.

    Attributes:
      backbone: the GReFEL backbone sizes (image_size S, dims[0] = MobileFaceNet width,
        mfn_units).
      num_points: N.
      dtype: compute dtype.
    """

    backbone: BackboneConfig
    num_points: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.backbone
        x = subsample_by_two(images.astype(self.dtype))
        net = MobileFaceNet(
            cfg.dims[0], cfg.mfn_units, self.dtype, self.num_points, name=names.LANDMARK_NET
        )
        *_, points = net(x, train)
        return points.astype(jnp.float32)


def predict(variables: PyTree, images: jax.Array, *, model: LandmarkNet) -> jax.Array:
    """Points `(B, N, 2)` in crop units with the stored BatchNorm statistics."""
    return model.apply(variables, images, train=False)
