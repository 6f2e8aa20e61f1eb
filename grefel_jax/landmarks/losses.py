"""Landmark regression losses and the normalised mean error (NME).

Coordinates are normalised to the crop (x, y in [0, 1]), so the loss scale does not depend
on the image size. Points marked missing (NaN, as the AffectNet builder stores them) are
masked out of both the loss and the NME.
"""

from __future__ import annotations

import jax.numpy as jnp


def _point_distance(pred: jnp.ndarray, target: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-point Euclidean distance and validity mask.

    Args:
      pred, target: (B, N, 2) normalised coordinates; NaN in `target` marks a missing point.
    Returns:
      dist (B, N) with 0 where missing, valid (B, N) float32.
    """
    valid = jnp.all(jnp.isfinite(target), axis=-1)
    safe = jnp.where(valid[..., None], target, pred)
    diff = jnp.where(valid[..., None], pred - safe, 0.0)
    sq = jnp.sum(diff * diff, axis=-1)
    # Double-where: the exact value at an exact hit, and a finite gradient there.
    pos = sq > 0
    dist = jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)
    return dist, valid.astype(jnp.float32)


def _coordinate_errors(pred: jnp.ndarray, target: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """|pred - target| per coordinate (B, N, 2), 0 where the target is missing (NaN), and
    the validity mask (B, N, 2) bool; the inner where keeps NaN out of the gradient."""
    valid = jnp.isfinite(target)
    return jnp.abs(jnp.where(valid, pred - jnp.where(valid, target, 0.0), 0.0)), valid


def _valid_mean(values: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
    """Mean of `values` over the valid entries (0 when none is valid)."""
    return jnp.sum(values * valid) / jnp.maximum(jnp.sum(valid), 1)


def wing_loss(
    pred: jnp.ndarray, target: jnp.ndarray, w: float = 0.1, epsilon: float = 0.02
) -> jnp.ndarray:
    """Wing loss (Feng et al., CVPR 2018) on per-coordinate errors, mean over valid values.

    wing(x) = w ln(1 + |x|/epsilon) for |x| < w, else |x| - C with C = w - w ln(1 + w/epsilon)
    (continuous at |x| = w). w and epsilon are in crop units (the paper's 10 / 2 px on a
    ~100 px crop).

    Args:
      pred, target: (B, N, 2); NaN in `target` marks a missing point.
    Returns:
      scalar loss.
    """
    x, valid = _coordinate_errors(pred, target)
    c = w - w * jnp.log1p(w / epsilon)
    per = jnp.where(x < w, w * jnp.log1p(x / epsilon), x - c)
    return _valid_mean(per, valid)


def smooth_l1_loss(pred: jnp.ndarray, target: jnp.ndarray, beta: float = 0.01) -> jnp.ndarray:
    """Smooth L1 (Huber / beta) on per-coordinate errors, mean over valid values.

    Args:
      pred, target: (B, N, 2); NaN in `target` marks a missing point.
    Returns:
      scalar loss.
    """
    x, valid = _coordinate_errors(pred, target)
    per = jnp.where(x < beta, 0.5 * x * x / beta, x - 0.5 * beta)
    return _valid_mean(per, valid)


def nme(
    pred: jnp.ndarray, target: jnp.ndarray, left_eye: jnp.ndarray, right_eye: jnp.ndarray
) -> jnp.ndarray:
    """Per-example normalised mean error: mean point distance / inter-ocular distance.

    Args:
      pred, target: (B, N, 2) coordinates (any common unit).
      left_eye, right_eye: (B, 2) eye centres of the *target* face, same unit.
    Returns:
      (B,) NME per example.
    """
    dist, valid = _point_distance(pred, target)
    mean = jnp.sum(dist, -1) / jnp.maximum(jnp.sum(valid, -1), 1)
    iod = jnp.linalg.norm(left_eye - right_eye, axis=-1)
    return mean / jnp.maximum(iod, 1e-6)
