"""Additive angular margin losses of face recognition, as pure functions (docs/pretraining.md).

With cos θ_j the cosine between the normalised embedding and identity j's normalised
direction, the logits are s·cos θ_j for j ≠ y and, for the true identity y:

  ArcFace (Deng et al. 2019):  s·cos(θ_y + m)     (m = 0.5 in InsightFace)
  CosFace (Wang et al. 2018):  s·(cos θ_y - m)    (m = 0.35)

then cross-entropy. ArcFace's cos(θ + m) stops decreasing once θ + m > π; as in InsightFace
and face.evoLVe, past θ > π - m the target logit continues linearly as
cos θ - m·sin(m) (`easy_margin=False`), so the loss stays monotone in θ.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

MARGIN_LOSSES = ("arcface", "cosface")
# Keeps sqrt(1 - cos²) differentiable at |cos| = 1.
SIN_EPS = 1e-7


def margin_logits(
    cosine: jax.Array, labels: jax.Array, *, kind: str, scale: float, margin: float
) -> jax.Array:
    """The scaled logits with the margin on each example's own identity.

    Args:
      cosine: (B, N) float cosines in [-1, 1].
      labels: (B,) int identity indices in [0, N).
      kind: 'arcface' or 'cosface'.
      scale: s.
      margin: m (radians for ArcFace, cosine units for CosFace), a float or a traced ()
        array (the warm-up); 0 = plain normalised softmax.

    Returns:
      (B, N) float32 logits.
    """
    if kind not in MARGIN_LOSSES:
        raise ValueError(f"identity.loss={kind!r}: expected one of {MARGIN_LOSSES}.")
    cosine = jnp.clip(cosine.astype(jnp.float32), -1.0, 1.0)
    onehot = jax.nn.one_hot(labels, cosine.shape[-1], dtype=jnp.bool_)
    if kind == "cosface":
        target = cosine - margin
    else:
        # jnp, not math: the margin may be traced (its warm-up is a function of the step).
        margin = jnp.asarray(margin, jnp.float32)
        sine = jnp.sqrt(jnp.maximum(1.0 - cosine**2, SIN_EPS))
        shifted = cosine * jnp.cos(margin) - sine * jnp.sin(margin)  # cos(θ + m)
        threshold = jnp.cos(math.pi - margin)
        target = jnp.where(cosine > threshold, shifted, cosine - margin * jnp.sin(margin))
    return scale * jnp.where(onehot, target, cosine)


def margin_loss(
    cosine: jax.Array, labels: jax.Array, *, kind: str, scale: float, margin: float
) -> jax.Array:
    """Mean cross-entropy of `margin_logits`: () float32. Shapes as in `margin_logits`."""
    logits = margin_logits(cosine, labels, kind=kind, scale=scale, margin=margin)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
