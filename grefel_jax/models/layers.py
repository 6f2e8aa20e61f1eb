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

from grefel_jax.models import conv_grad

Dtype = Any

# PyTorch's default Conv2d/Linear weight init (kaiming_uniform with a=sqrt(5)) is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance_scaling(1/3, fan_in, uniform).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class TorchDense(nn.Module):
    """`torch.nn.Linear` with its default initialisation: `(..., Din) -> (..., features)`.

    PyTorch draws weight and bias from U(-1/sqrt(Din), 1/sqrt(Din)); Flax's Dense uses
    lecun-normal weights and zero biases. The heads of the official code are PyTorch
    Linears, so ours start from the same distribution. Parameters are named `kernel`
    (Din, features) and `bias` like `nn.Dense`, so checkpoints and converters see no
    difference. `zero_init=True` starts both at 0 (a classifier whose first predictions are
    uniform; docs/numerics.md).
    """

    features: int
    zero_init: bool = False
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        if self.zero_init:
            init = nn.initializers.zeros_init()
        else:
            bound = 1.0 / fan_in**0.5
            init = lambda key, shape, dtype=jnp.float32: jax.random.uniform(  # noqa: E731
                key, shape, dtype, -bound, bound
            )
        kernel = self.param("kernel", init, (fan_in, self.features), jnp.float32)
        bias = self.param("bias", init, (self.features,), jnp.float32)
        x = x.astype(self.dtype)
        return x @ kernel.astype(self.dtype) + bias.astype(self.dtype)


def exact_gelu(x: jax.Array) -> jax.Array:
    """GELU with the exact erf formula (PyTorch `nn.GELU()`), any shape."""
    return nn.gelu(x, approximate=False)


@jax.custom_vjp
def attention_softmax(x: jax.Array) -> jax.Array:
    """Softmax over the last axis, any shape, with the backward pass y * (g - sum(g * y)).

    The value is `jax.nn.softmax(x, axis=-1)`'s. Why a custom gradient: by default (the
    `jax_softmax_custom_jvp` flag is off in this jax) JAX differentiates through the quotient
    exp(x - max) / sum, and XLA:CPU then fuses a chain of products and divisions over the whole
    (B, heads, N, N) attention matrix; at the first window-attention scale (N = 784) that fusion
    took 650 ms of a paper-size train step at batch 32 (docs/performance.md). Only y is saved.
    """
    return jax.nn.softmax(x, axis=-1)


def _attention_softmax_fwd(x):
    y = jax.nn.softmax(x, axis=-1)
    return y, y


def _attention_softmax_bwd(y, grad):
    return (y * (grad - jnp.sum(grad * y, axis=-1, keepdims=True)),)


attention_softmax.defvjp(_attention_softmax_fwd, _attention_softmax_bwd)


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


class DepthwiseConv(nn.Module):
    """Depthwise `k x k` conv, no bias: `(B, H, W, C) -> (B, H', W', C)`, one filter per channel.

    The same parameter as `nn.Conv(C, feature_group_count=C)` (`kernel (k, k, 1, C)`, same
    name, same init), so checkpoints and converters see no difference; the arithmetic is the
    same sum of k*k products per output. Why not `nn.Conv`: XLA:CPU runs grouped convolutions
    through a slow generic path (a 24x24x32 depthwise conv at batch 64 took 75 ms, its
    shifted-sum form below 1.7 ms on a 2-core AMD EPYC); the k*k strided slices of the padded
    input, each scaled by its tap, fuse into one elementwise loop on every backend.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        b, h, w, c = x.shape
        if c != self.features:
            raise ValueError(f"DepthwiseConv({self.features}) applied to {c} input channels.")
        kernel = self.param("kernel", torch_default_init, (k, k, 1, c), jnp.float32)
        x = x.astype(self.dtype)
        kernel = kernel.astype(self.dtype)
        padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        out_h, out_w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        out = None
        for i in range(k):
            for j in range(k):
                tap = jax.lax.slice(
                    padded,
                    (0, i, j, 0),
                    (b, i + (out_h - 1) * s + 1, j + (out_w - 1) * s + 1, c),
                    (1, s, s, 1),
                )
                term = tap * kernel[i, j, 0]
                out = term if out is None else out + term
        return out


class Conv2d(nn.Module):
    """`torch.nn.Conv2d` without groups: `(B, H, W, Cin) -> (B, H', W', features)`.

    The same parameters as `nn.Conv` (`kernel (k, k, Cin, features)`, `bias (features,)`, same
    names), so checkpoints and converters see no difference. It exists for its gradient: for
    large convs (`conv_grad.uses_cpu_gradients`) `conv_grad.conv2d` computes the kernel
    gradient in row bands and a strided input gradient by phases on CPU, where XLA's own were
    the slowest part of the train step (docs/performance.md); small convs are plain XLA.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = False
    kernel_init: Any = torch_default_init
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        if conv_grad.uses_cpu_gradients(x.shape, kernel.shape):
            y = conv_grad.conv2d(x, kernel, self.stride, self.padding)
        else:  # small convs: XLA's convolution and gradients, no custom_vjp in the graph
            y = conv_grad.plain_conv2d(x, kernel, self.stride, self.padding)
        if self.use_bias:  # zeros, as nn.Conv's default (the init this model always had)
            bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
            y = y + bias.astype(self.dtype)
        return y


def conv(
    features: int,
    kernel: int = 3,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    use_bias: bool = False,
    name: str | None = None,
    dtype: Dtype = jnp.float32,
) -> nn.Module:
    """A convolution with PyTorch's symmetric explicit padding and default kernel init.

    Applied to `(B, H, W, Cin)` it gives `(B, H', W', features)` with
    `H' = (H + 2 * padding - kernel) // stride + 1`, exactly as `torch.nn.Conv2d`. Without
    groups it is a `Conv2d` (nn.Conv's parameters, a faster kernel gradient on CPU); a
    depthwise conv (`groups == features`, one input channel per group, no bias) is a
    `DepthwiseConv`; other grouped convs are `nn.Conv` with `feature_group_count=groups`.
    """
    if groups > 1 and groups == features and not use_bias:
        return DepthwiseConv(features, kernel, stride, padding, dtype=dtype, name=name)
    if groups == 1:
        return Conv2d(features, kernel, stride, padding, use_bias, dtype=dtype, name=name)
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


def batch_norm(
    train: bool,
    name: str | None = None,
    dtype: Dtype = jnp.float32,
    scale_init=nn.initializers.ones,
    bias_init=nn.initializers.zeros,
) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults (momentum 0.1 -> Flax 0.9, eps 1e-5).

    `train=False` uses the stored running statistics (PyTorch eval mode). The batch variance
    is the two-pass mean((x - mean)^2), not Flax's default E[x^2] - E[x]^2: on features whose
    batch mean is large against their spread (the GReFEL head's inputs at initialisation:
    std/|mean| about 0.05) the one-pass form cancels away most float32 digits, and with the
    official fixed ViT init the gradient changed by 4.7e-5 (relative) when the batch was split
    over two devices; two-pass brings that to 3.9e-6 (docs/numerics.md §2).
    """
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        use_fast_variance=False,
        scale_init=scale_init,
        bias_init=bias_init,
        name=name,
    )


def layer_norm(epsilon: float, name: str | None = None, dtype: Dtype = jnp.float32) -> nn.LayerNorm:
    """LayerNorm over the last axis with the two-pass variance (see `batch_norm`).

    `epsilon` is 1e-5 in the window attention and 1e-6 in the fusion ViT, as the official code.
    """
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, use_fast_variance=False, name=name)


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
