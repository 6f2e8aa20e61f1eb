"""Small building blocks shared by the backbones, with PyTorch-exact numerics.

Why these exist instead of the Flax defaults:
* PyTorch's PReLU is per-channel; `flax.linen.PReLU` has one scalar slope.
* PyTorch convs pad symmetrically; Flax 'SAME' pads asymmetrically for stride 2, which would
  shift every feature map by a pixel and break checkpoint parity. All padding is explicit.
* PyTorch's GELU is the exact erf form; Flax's default is the tanh approximation.
* PyTorch BatchNorm momentum 0.1 is Flax momentum 0.9; eps 1e-5 in both.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# PyTorch's default Conv2d/Linear weight init (kaiming_uniform with a=sqrt(5)) is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance_scaling(1/3, fan_in, uniform).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def exact_gelu(x: jax.Array) -> jax.Array:
    """GELU with the exact erf formula (PyTorch `nn.GELU()`), any shape."""
    return nn.gelu(x, approximate=False)


def subsample_by_two(x: jax.Array) -> jax.Array:
    """`(B, H, W, C) -> (B, H/2, W/2, C)`: PyTorch nearest `F.interpolate(x, size=H/2)`.

    For an exact factor of two, PyTorch's nearest mode picks source pixel 2*i, which is the
    slice below. `jax.image.resize(..., 'nearest')` samples pixel centres (2*i + 0.5 rounded)
    and therefore differs: do not use it here.
    """
    return x[:, ::2, ::2, :]


class PReLU(nn.Module):
    """Per-channel PReLU, as `torch.nn.PReLU(num_parameters=C)`; slopes start at 0.25.

    Input `(..., C)`, output the same shape. The parameter is named `weight` (shape `(C,)`)
    like PyTorch's.
    """

    init_slope: float = 0.25

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        slope = self.param(
            "weight", nn.initializers.constant(self.init_slope), (x.shape[-1],), jnp.float32
        )
        return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


def conv(
    features: int,
    kernel: int = 3,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    use_bias: bool = False,
    name: str | None = None,
    dtype: Dtype = jnp.float32,
) -> nn.Conv:
    """A `flax.linen.Conv` with PyTorch's symmetric explicit padding and default init.

    Applied to `(B, H, W, Cin)` it gives `(B, H', W', features)` with
    `H' = (H + 2 * padding - kernel) // stride + 1`, exactly as `torch.nn.Conv2d`.
    `groups` is `feature_group_count` (= in channels for a depthwise conv).
    """
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((padding, padding), (padding, padding)),
        feature_group_count=groups,
        use_bias=use_bias,
        kernel_init=torch_default_init,
        dtype=dtype,
        name=name,
    )


def batch_norm(train: bool, name: str | None = None, dtype: Dtype = jnp.float32) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 -> Flax 0.9, eps 1e-5).

    `train=False` uses the stored running statistics (PyTorch eval mode).
    """
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name
    )


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample. `(B, ...) -> (B, ...)`.

    Uses the 'dropout' RNG stream; identity when `deterministic` or `rate == 0`. Kept samples
    are scaled by 1 / (1 - rate), as timm's `drop_path`.
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


class Mlp(nn.Module):
    """timm `Mlp`: Dense(hidden) -> exact GELU -> Dense(out). `(..., D) -> (..., out)`.

    Submodules `fc1` and `fc2` map to PyTorch's `mlp.fc1` / `mlp.fc2`. Dropout rates are 0
    in both official models, so there is no dropout here.
    """

    hidden: int
    out: int
    kernel_init: Any = torch_default_init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden, kernel_init=self.kernel_init, dtype=self.dtype, name="fc1")(x)
        x = exact_gelu(x)
        return nn.Dense(self.out, kernel_init=self.kernel_init, dtype=self.dtype, name="fc2")(x)
