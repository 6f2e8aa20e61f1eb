"""A 2-D convolution with faster gradients on CPU: kernel gradient in row bands, strided input
gradient by phases.

Why: XLA:CPU computes the kernel gradient of a convolution (a contraction over batch and
space) up to 3-6 times slower than the forward convolution of the same FLOPs, and in the
paper-size train step these gradients were the largest part of IR-50's backward pass
(benchmarks/profile_step.py; docs/performance.md). The same sum written as, per band of output
rows, one matrix product per kernel row over the band's column-shifted inputs keeps each
product's operands small enough to stay in cache:

  dW[i, j, c, d] = sum_{b, y, x} xpad[b, s*y + i, s*x + j, c] * g[b, y, x, d]
                 = sum_{bands} sum_{b, y in band, x} cols[b, s*y + i, x, (j, c)] * g[b, y, x, d]

with cols[b, r, x, (j, c)] = xpad[b, r, s*x + j, c]. The bands are a `lax.scan` over output
rows, never over the batch, so a batch sharded over devices stays sharded.

The input gradient of a strided convolution is the transpose of a strided convolution, which
XLA computes as a convolution over the output gradient dilated with zeros: stride**2 times the
work. `strided_input_grad` splits it into one stride-1 convolution per output phase instead.

Both are the same sums in another order (float32 rounding differs, ~1e-6 relative); the
forward pass is XLA's own convolution. Where they pay was measured, not guessed
(`MIN_WORK`, and the phases only for k > 1 with Cin >= Cout); they run on CPU only
(`lax.platform_dependent`): GPUs and TPUs keep XLA's gradients, which are fast there.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Convolutions with at least this much work per image (H * W * Cin * Cout of the input map) get
# the CPU forms. Chosen from microbenchmarks on a 2-core AMD EPYC (docs/performance.md §3): the
# banded kernel gradient was 1.1-2.6x faster for every 3x3 conv of the paper's IR-50 (12.8M,
# 51M for the first 112x112 conv) and the `tiny` model's step was about 5 % slower with it on its
# convs (0.6M), so those keep XLA's gradients.
MIN_WORK = 2**22
# Rows (batch x band rows x output width) per band: 256 / 1024 / 4096 were measured; 1024 was
# as fast as the best of them on every shape to within 10 %.
BAND_ROWS = 1024

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def uses_cpu_gradients(x_shape, kernel_shape) -> bool:
    """Whether a conv of input `(B, H, W, Cin)` and kernel `(k, k, Cin, Cout)` is large enough
    (H * W * Cin * Cout >= MIN_WORK) for the CPU gradient forms of `conv2d`."""
    return x_shape[1] * x_shape[2] * kernel_shape[2] * kernel_shape[3] >= MIN_WORK


def plain_conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """`conv2d` without the custom gradient (XLA's own): same shapes and value."""
    return _conv(x, kernel, stride, padding)


def _conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        ((padding, padding), (padding, padding)),
        dimension_numbers=_DIMENSIONS,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """`(B, H, W, Cin) x (k, k, Cin, Cout) -> (B, Ho, Wo, Cout)` convolution, symmetric zero
    padding, as `torch.nn.Conv2d` (no groups, no dilation); Ho = (H + 2p - k) // s + 1."""
    return _conv(x, kernel, stride, padding)


def _conv2d_fwd(x, kernel, stride, padding):
    return _conv(x, kernel, stride, padding), (x, kernel)


def _conv2d_bwd(stride, padding, residuals, grad):
    x, kernel = residuals
    k, cin, cout = kernel.shape[0], kernel.shape[2], kernel.shape[3]

    def native_input(g):
        _, input_vjp = jax.vjp(lambda v: _conv(v, kernel, stride, padding), x)
        return input_vjp(g)[0]

    def native_kernel(a, g):
        return native_kernel_grad(a, g, kernel.shape, stride, padding).astype(kernel.dtype)

    def banded_kernel(a, g):
        return banded_kernel_grad(a, g, k, stride, padding).astype(kernel.dtype)

    large = uses_cpu_gradients(x.shape, kernel.shape)
    if large and stride > 1 and k > 1 and cin >= cout:
        grad_x = jax.lax.platform_dependent(
            grad,
            cpu=lambda g: strided_input_grad(g, kernel, x.shape, stride, padding),
            default=native_input,
        )
    else:
        grad_x = native_input(grad)
    if large:
        grad_kernel = jax.lax.platform_dependent(x, grad, cpu=banded_kernel, default=native_kernel)
    else:
        grad_kernel = native_kernel(x, grad)
    return grad_x, grad_kernel


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def native_kernel_grad(x, grad, kernel_shape, stride: int, padding: int) -> jax.Array:
    """XLA's kernel gradient: `(B, H, W, Cin), (B, Ho, Wo, Cout) -> (k, k, Cin, Cout)`."""
    zeros = jnp.zeros(kernel_shape, x.dtype)
    _, kernel_vjp = jax.vjp(lambda w: _conv(x, w, stride, padding), zeros)
    return kernel_vjp(grad)[0]


def band_rows(batch: int, out_height: int, out_width: int, target: int | None = None) -> int:
    """Output rows per band: the largest divisor r of `out_height` with batch * r * out_width
    <= target (at least 1), so that the bands tile the map exactly."""
    fits = [r for r in range(1, out_height + 1) if out_height % r == 0]
    target = BAND_ROWS if target is None else target
    fits = [r for r in fits if batch * r * out_width <= target]
    return max(fits) if fits else 1


def banded_kernel_grad(x: jax.Array, grad: jax.Array, k: int, stride: int, padding: int):
    """Kernel gradient of `conv2d` as a scan over bands of output rows.

    Args:
      x: (B, H, W, Cin) the convolution's input.
      grad: (B, Ho, Wo, Cout) the gradient of its output.
      k: kernel size; stride, padding: as in `conv2d`.

    Returns:
      (k, k, Cin, Cout) float32 gradient of the kernel.
    """
    batch, _, _, cin = x.shape
    _, out_h, out_w, cout = grad.shape
    s = stride
    rows = band_rows(batch, out_h, out_w)
    rows_in = (rows - 1) * s + k
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))

    def band(total, index):
        xb = jax.lax.dynamic_slice_in_dim(padded, index * rows * s, rows_in, axis=1)
        # (B, rows_in, Wo, k * Cin): the k column taps of every output column, side by side.
        cols = jnp.concatenate(
            [xb[:, :, j : j + (out_w - 1) * s + 1 : s, :] for j in range(k)], axis=-1
        )
        gb = jax.lax.dynamic_slice_in_dim(grad, index * rows, rows, axis=1).reshape(-1, cout)
        per_row = [
            (cols[:, i : i + (rows - 1) * s + 1 : s].reshape(-1, k * cin).T @ gb).reshape(
                k, cin, cout
            )
            for i in range(k)
        ]
        return total + jnp.stack(per_row).astype(jnp.float32), None

    zeros = jnp.zeros((k, k, cin, cout), jnp.float32)
    total, _ = jax.lax.scan(band, zeros, jnp.arange(out_h // rows))
    return total


def strided_input_grad(grad: jax.Array, kernel: jax.Array, in_shape, stride: int, padding: int):
    """Input gradient of a strided `conv2d` as `stride**2` stride-1 convolutions, one per
    output phase, instead of one convolution over a zero-dilated gradient (which is what the
    transpose of a strided convolution is, and does stride**2 times the work).

    Padded input position (s*m + a, s*n + b) receives g[m - t, n - u] w[a + s*t, b + s*u] summed
    over t, u: a "full" stride-1 correlation of g with the flipped sub-kernel w[a::s, b::s].

    Args:
      grad: (B, Ho, Wo, Cout) gradient of the convolution's output.
      kernel: (k, k, Cin, Cout).
      in_shape: (B, H, W, Cin) of the convolution's input.
      stride, padding: as in `conv2d`.

    Returns:
      (B, H, W, Cin) gradient of the input.
    """
    batch, height, width, cin = in_shape
    s, p = stride, padding
    _, out_h, out_w, _ = grad.shape
    rows, cols = -(-(height + 2 * p) // s), -(-(width + 2 * p) // s)  # phase lengths (ceil)
    phases = []
    for a in range(s):
        row = []
        for b in range(s):
            sub = kernel[a::s, b::s]  # (ka, kb, Cin, Cout)
            ka, kb = sub.shape[0], sub.shape[1]
            if ka == 0 or kb == 0:
                row.append(jnp.zeros((batch, rows, cols, cin), grad.dtype))
                continue
            flipped = jnp.swapaxes(sub[::-1, ::-1], 2, 3)  # (ka, kb, Cout, Cin)
            row.append(
                jax.lax.conv_general_dilated(
                    grad,
                    flipped,
                    (1, 1),
                    ((ka - 1, rows - out_h), (kb - 1, cols - out_w)),
                    dimension_numbers=_DIMENSIONS,
                )
            )
        phases.append(jnp.stack(row, axis=3))  # (B, rows, cols, s, Cin)
    # (B, rows, s, cols, s, Cin) -> padded input positions (s*m + a, s*n + b).
    padded = jnp.stack(phases, axis=2).reshape(batch, rows * s, cols * s, cin)
    return padded[:, p : p + height, p : p + width, :]
