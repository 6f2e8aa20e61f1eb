"""IR-50 image backbone, stages 1-3 (docs/model.md §1b; POSTER++ `models/ir50.py`).

The face.evoLVe / InsightFace "improved residual" ResNet with its fourth stage removed.
Submodule names follow the PyTorch state_dict with `.N.` written as `_N`, so that
`ir_back.body2.0.res_layer.1.weight` is `ir_back/body2_0/res_layer_1/kernel` here.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from grefel_jax.models.layers import Dtype, PReLU, TorchDense, batch_norm, conv


class BottleneckIR(nn.Module):
    """`bottleneck_IR(in, depth, stride)`: `(B, H, W, in) -> (B, H/s, W/s, depth)`.

    res = BN -> Conv3x3 -> PReLU -> Conv3x3(stride) -> BN; shortcut = sub-sampling (when the
    width is unchanged: PyTorch's `MaxPool2d(1, s)`) or Conv1x1(stride) -> BN. The output is
    res + shortcut with no activation after the add, as in the official unit.
    """

    depth: int
    stride: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = self.stride
        if x.shape[-1] == self.depth:
            shortcut = x[:, ::s, ::s, :]
        else:
            shortcut = conv(self.depth, 1, s, 0, name="shortcut_layer_0", dtype=self.dtype)(x)
            shortcut = batch_norm(train, "shortcut_layer_1", self.dtype)(shortcut)
        r = batch_norm(train, "res_layer_0", self.dtype)(x)
        r = conv(self.depth, 3, 1, 1, name="res_layer_1", dtype=self.dtype)(r)
        r = PReLU(name="res_layer_2")(r)
        r = conv(self.depth, 3, s, 1, name="res_layer_3", dtype=self.dtype)(r)
        r = batch_norm(train, "res_layer_4", self.dtype)(r)
        return r + shortcut


class IR50(nn.Module):
    """IR-50 stages 1-3 on the sub-sampled image, optionally with face.evoLVe's fourth stage
    and embedding layer (face-identity pretraining, docs/pretraining.md).

    Input `(B, S, S, 3)` (S = 112 in the paper), output the three stage features
    `(B, S/2, S/2, dims[0])`, `(B, S/4, S/4, dims[1])`, `(B, S/8, S/8, dims[2])`
    = (B,56,56,64), (B,28,28,128), (B,14,14,256) in the paper. With `stage4_units > 0` a
    fourth element follows: the identity embedding `(B, embedding_dim)` of
    `body4` (width 2 * dims[2], stride 2: (B, 7, 7, 512) in IR-50) -> `output_layer`
    (BatchNorm2d -> Dropout -> Flatten in PyTorch's (C, H, W) order -> Linear -> BatchNorm1d),
    the layer face.evoLVe's ArcFace model ends with. POSTER++ never builds these, so GReFEL
    leaves both out; `grefel_jax.convert` maps them to and from face.evoLVe's `ir50.pth`
    (`body.N` past the third stage, `output_layer.0/3/4`).

    Attributes:
      dims: stage widths (64, 128, 256).
      units: bottleneck units per stage (3, 4, 14); each stage's first unit has stride 2.
      stage4_units: units of the fourth stage (3 in IR-50; 0 = not built, as in POSTER++).
      embedding_dim: width of `output_layer`'s Linear (512 in IR-50); with stage4_units.
      embedding_dropout: rate of `output_layer`'s Dropout.
    """

    dims: tuple[int, int, int] = (64, 128, 256)
    units: tuple[int, int, int] = (3, 4, 14)
    dtype: Dtype = jnp.float32
    stage4_units: int = 0
    embedding_dim: int = 0
    embedding_dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, ...]:
        x = conv(self.dims[0], 3, 1, 1, name="input_layer_0", dtype=self.dtype)(x)
        x = batch_norm(train, "input_layer_1", self.dtype)(x)
        x = PReLU(name="input_layer_2")(x)
        stages = []
        for stage, (depth, units) in enumerate(zip(self.dims, self.units), start=1):
            for i in range(units):
                stride = 2 if i == 0 else 1
                x = BottleneckIR(depth, stride, self.dtype, name=f"body{stage}_{i}")(x, train)
            stages.append(x)
        if self.stage4_units:
            for i in range(self.stage4_units):
                stride = 2 if i == 0 else 1
                x = BottleneckIR(2 * self.dims[2], stride, self.dtype, name=f"body4_{i}")(x, train)
            x = batch_norm(train, "output_layer_0", self.dtype)(x)
            x = nn.Dropout(self.embedding_dropout, deterministic=not train)(x)
            # PyTorch's Flatten of (B, C, H, W): the Linear's weight sees (C, H, W) order, so
            # face.evoLVe's weights load as they are (transposed, not permuted).
            x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
            x = TorchDense(self.embedding_dim, dtype=self.dtype, name="output_layer_3")(x)
            x = batch_norm(train, "output_layer_4", self.dtype)(x)
            stages.append(x)
        return tuple(stages)
