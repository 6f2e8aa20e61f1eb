"""MobileFaceNet landmark network (docs/model.md §1a; POSTER++ `models/mobilefacenet.py`).

The 68-point landmark regressor of pytorch_face_landmark, used by POSTER++ as a frozen
feature extractor: its three intermediate maps are the *queries* of the window
cross-attention. The GDC landmark head (`output_layer`) is computed and thrown away by
POSTER++, so GReFEL does not build it; landmark pretraining (`grefel_jax.landmarks`) does
(`num_landmarks > 0`), under the official names, so its weights convert both ways with
`mobilefacenet_model_best.pth.tar`.

Inside GReFEL it is always frozen and runs on its stored BatchNorm statistics (`train`
stays False, and the parent stops gradients at its outputs); pretraining passes
`train=True`.

Submodule names follow the PyTorch state_dict with `.N.` written as `_N`
(`conv_3.model.0.conv_dw.bn` -> `conv_3/model_0/conv_dw/bn`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from grefel_jax.models.layers import Dtype, PReLU, batch_norm, conv, torch_default_init


class ConvBlock(nn.Module):
    """`Conv_block`: Conv (no bias) -> BN -> per-channel PReLU. `(B,H,W,Cin) -> (B,H',W',out)`.

    With `activation=False` it is `Linear_block` (Conv -> BN).
    """

    features: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    activation: bool = True
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        x = conv(
            self.features,
            self.kernel,
            self.stride,
            self.padding,
            self.groups,
            name="conv",
            dtype=self.dtype,
        )(x)
        x = batch_norm(train, "bn", self.dtype)(x)
        if self.activation:
            x = PReLU(name="prelu")(x)
        return x


class DepthWise(nn.Module):
    """`Depth_Wise(in, out, groups=G, stride)`: 1x1 in->G, 3x3 depthwise(G) stride s, 1x1 G->out.

    `(B, H, W, in) -> (B, H/s, W/s, out)`; with `residual=True` (stride 1, in == out) the input
    is added back.
    """

    features: int
    groups: int
    stride: int = 1
    residual: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        g = self.groups
        y = ConvBlock(g, 1, dtype=self.dtype, name="conv")(x, train)
        y = ConvBlock(g, 3, self.stride, 1, groups=g, dtype=self.dtype, name="conv_dw")(y, train)
        y = ConvBlock(self.features, 1, activation=False, dtype=self.dtype, name="project")(
            y, train
        )
        return x + y if self.residual else y


class Residual(nn.Module):
    """`Residual(c, num_block, groups)`: a stack of residual DepthWise units, `(B,H,W,c)` kept."""

    features: int
    groups: int
    num_blocks: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        for i in range(self.num_blocks):
            x = DepthWise(
                self.features, self.groups, 1, residual=True, dtype=self.dtype, name=f"model_{i}"
            )(x, train)
        return x


class GDC(nn.Module):
    """`GDC(embedding_size)`, the landmark head `output_layer`: a depthwise conv over the whole
    map (`conv_6_dw`, Linear_block) -> flatten -> `linear` (no bias) -> BatchNorm1d `bn`.

    `(B, k, k, C) -> (B, features)`. The official head's kernel is 7 (112 input); here it is
    the map's side k, so every input size ends in one value per channel.
    """

    features: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, k, k2, c = x.shape
        if k != k2:
            raise ValueError(f"GDC needs a square feature map, got {x.shape}.")
        x = ConvBlock(c, k, groups=c, activation=False, dtype=self.dtype, name="conv_6_dw")(
            x, train
        )
        x = x.reshape(b, c)
        x = nn.Dense(
            self.features,
            use_bias=False,
            kernel_init=torch_default_init,
            dtype=self.dtype,
            name="linear",
        )(x)
        # Outputs start at the crop centre with a small spread, not at PyTorch's N(0, 1):
        # targets are in [0, 1] crop units. With PyTorch's 1 / 0 the wing loss of a 16-step
        # tiny run (Adam 3e-3) only went from 0.99 to 0.97; from 0.1 / 0.5, 0.26 to 0.23.
        init = nn.initializers.constant
        return batch_norm(train, "bn", self.dtype, init(0.1), init(0.5))(x)


class MobileFaceNet(nn.Module):
    """The landmark trunk. Input `(B, S, S, 3)` (S = 112), outputs three maps.

    Returns `(B, S/4, S/4, w)`, `(B, S/8, S/8, 2w)`, `(B, S/16, S/16, 8w)` with w = `width`:
    (B,28,28,64), (B,14,14,128), (B,7,7,512) in the paper (conv_3, conv_4, conv_6_sep); with
    `num_landmarks = N > 0` a fourth output, the GDC head's points `(B, N, 2)` (the official
    2N outputs are interleaved x0, y0, x1, y1, ...).

    Attributes:
      width: base width w (64). Expansion widths of the depthwise units are 2w/4w/8w as in
        the official net (128/256/512).
      units: residual units in conv_3, conv_4, conv_5 (4, 6, 2).
      num_landmarks: N points of the GDC landmark head `output_layer`; 0 (GReFEL, POSTER++'s
        use) builds no head.
    """

    width: int = 64
    units: tuple[int, int, int] = (4, 6, 2)
    dtype: Dtype = jnp.float32
    num_landmarks: int = 0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, ...]:
        w, d, t = self.width, self.dtype, train
        x = ConvBlock(w, 3, 2, 1, dtype=d, name="conv1")(x, t)
        x = ConvBlock(w, 3, 1, 1, groups=w, dtype=d, name="conv2_dw")(x, t)
        x = DepthWise(w, 2 * w, 2, dtype=d, name="conv_23")(x, t)
        out1 = Residual(w, 2 * w, self.units[0], dtype=d, name="conv_3")(x, t)
        x = DepthWise(2 * w, 4 * w, 2, dtype=d, name="conv_34")(out1, t)
        out2 = Residual(2 * w, 4 * w, self.units[1], dtype=d, name="conv_4")(x, t)
        x = DepthWise(2 * w, 8 * w, 2, dtype=d, name="conv_45")(out2, t)
        x = Residual(2 * w, 4 * w, self.units[2], dtype=d, name="conv_5")(x, t)
        out3 = ConvBlock(8 * w, 1, dtype=d, name="conv_6_sep")(x, t)
        if not self.num_landmarks:
            return out1, out2, out3
        flat = GDC(2 * self.num_landmarks, dtype=d, name="output_layer")(out3, t)
        return out1, out2, out3, flat.reshape(flat.shape[0], self.num_landmarks, 2)
