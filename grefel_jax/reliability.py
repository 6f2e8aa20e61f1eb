"""Reliability balancing: the label-correction math of GReFEL / ARBEx (docs/reliability.md §2).

Pure `jnp` functions with explicit arguments, no Flax: the heads in `models/heads.py` call them,
and so can any other framework. Every log and sqrt is guarded so that values AND gradients stay
finite on degenerate inputs (one-hot or uniform distributions, zero anchors, an embedding that
sits exactly on an anchor, both correction confidences zero): the official PyTorch code has no
such guards (docs/ambiguities.md §8.22).

Pipeline for one batch (B samples, C classes, K anchors per class, d embedding dims):

  p      = softmax(logits / T)                                  primary distribution  (B, C)
  c_p    = normalized_entropy_confidence(p)                                            (B,)
  dist   = anchor_distances(e, anchors)                                                (B, C, K)
  g      = anchor_similarity(dist, delta); c_g = confidence(g)                         (B, C)
  m      = attention distribution;        c_m = confidence(m)                          (B, C)
  r      = select_correction(kind, g, c_g, m, c_m)                                     (B, C)
           ('both': combine_corrections(g, c_g, m, c_m); 'anchors': g; 'attention': m)
  q_corr = balance(p, c_p, r)                                                          (B, C)
  τ      = scheduled_trust(schedule, trust_ramp(step, total_steps))  ('ramp'; 'none' 0; 'full' 1)
  q_fin  = apply_trust(p, q_corr, τ)                                                   (B, C)

The correction kind (`model.head.correction`) and the trust schedule (`loss.trust`) exist for
ablations (docs/robustness.md); the defaults 'both' and 'ramp' are GReFEL / ARBEx.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Guard inside the logarithm of the entropy: q * log(q + eps) is finite with a finite
# derivative log(q + eps) + q / (q + eps) at q = 0, and differs from q * log(q) by < eps.
ENTROPY_EPS = 1e-12
# Guard inside the square root of a squared distance: sqrt(s + eps) has derivative
# 1 / (2 sqrt(s + eps)) at s = 0 instead of infinity. It shifts distances by <= sqrt(eps).
DISTANCE_EPS = 1e-12
# Added (split evenly) to the two correction weights so that r stays a distribution when both
# confidences are 0 (then r = (g + m) / 2).
COMBINE_EPS = 1e-8

# Which correction r enters q_corr (HeadConfig.correction); 'both' is the method.
CORRECTIONS = ("both", "anchors", "attention")
# Trust schedules τ of q_final (LossConfig.trust); 'ramp' is the method.
TRUST_SCHEDULES = ("ramp", "none", "full")


def normalized_entropy_confidence(probs: jax.Array, eps: float = ENTROPY_EPS) -> jax.Array:
    """Confidence c(q) = 1 - H(q) / ln C of a categorical distribution.

    1 for a one-hot distribution, 0 for the uniform one. H(q) = -sum_i q_i ln(q_i + eps).

    Args:
      probs: (..., C) float, each row a probability distribution over C >= 2 classes.
      eps: guard inside the log (see ENTROPY_EPS).

    Returns:
      (...) float confidences, in [0, 1] up to rounding (no clipping, which would zero the
      gradient at the ends).
    """
    num_classes = probs.shape[-1]
    if num_classes < 2:
        raise ValueError(
            f"normalized_entropy_confidence: need >= 2 classes, got shape {probs.shape}"
        )
    entropy = -jnp.sum(probs * jnp.log(probs + eps), axis=-1)
    return 1.0 - entropy / math.log(num_classes)


def anchor_distances(
    embedding: jax.Array, anchors: jax.Array, eps: float = DISTANCE_EPS
) -> jax.Array:
    """Euclidean (not squared) distance from each embedding to each anchor.

    Computed from explicit differences (not ||e||^2 - 2 e.a + ||a||^2) so that the distance of
    an embedding to an identical anchor is 0 up to sqrt(eps), without cancellation error.

    Args:
      embedding: (B, d) float embeddings e_b.
      anchors: (C, K, d) float anchors a_{i,j}.
      eps: guard inside the sqrt (see DISTANCE_EPS): finite gradient when e_b == a_{i,j}.

    Returns:
      (B, C, K) float distances d_{b,i,j} = sqrt(||e_b - a_{i,j}||^2 + eps).
    """
    if embedding.ndim != 2 or anchors.ndim != 3 or embedding.shape[-1] != anchors.shape[-1]:
        raise ValueError(
            f"anchor_distances: expected embedding (B, d) and anchors (C, K, d), got "
            f"{embedding.shape} and {anchors.shape}."
        )
    diff = embedding[:, None, None, :] - anchors[None]  # (B, C, K, d)
    return jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1) + eps)


def anchor_similarity(distances: jax.Array, delta: float | jax.Array = 1.0) -> jax.Array:
    """Geometric correction g: softmax over all C*K anchors of -d/delta, summed per class.

    Args:
      distances: (B, C, K) float anchor distances.
      delta: softmax temperature δ (> 0).

    Returns:
      (B, C) float; each row is a distribution over the C classes.
    """
    batch, num_classes, num_anchors = distances.shape
    logits = -distances.reshape(batch, num_classes * num_anchors) / delta
    weights = jax.nn.softmax(logits, axis=-1).reshape(batch, num_classes, num_anchors)
    return jnp.sum(weights, axis=-1)


def combine_corrections(
    anchor_probs: jax.Array,
    anchor_conf: jax.Array,
    attn_probs: jax.Array,
    attn_conf: jax.Array,
    eps: float = COMBINE_EPS,
) -> jax.Array:
    """Confidence-weighted average r = (c_g g + c_m m) / (c_g + c_m) of the two corrections.

    Implemented as ((c_g + eps/2) g + (c_m + eps/2) m) / (c_g + c_m + eps), with each
    confidence first clamped at 0 (rounding can make a uniform row's confidence -1e-7): r is
    always a distribution, (g + m) / 2 when both confidences are 0, and within ~eps / (c_g +
    c_m) of the unguarded formula otherwise.

    Args:
      anchor_probs: (B, C) geometric correction g.
      anchor_conf: (B,) its confidence c_g.
      attn_probs: (B, C) attentive correction m.
      attn_conf: (B,) its confidence c_m.
      eps: total weight added to the two confidences.

    Returns:
      (B, C) float correction distribution r.
    """
    w_g = (jnp.maximum(anchor_conf, 0.0) + 0.5 * eps)[..., None]
    w_m = (jnp.maximum(attn_conf, 0.0) + 0.5 * eps)[..., None]
    return (w_g * anchor_probs + w_m * attn_probs) / (w_g + w_m)


def select_correction(
    kind: str,
    anchor_probs: jax.Array,
    anchor_conf: jax.Array,
    attn_probs: jax.Array,
    attn_conf: jax.Array,
) -> jax.Array:
    """The correction r that enters `balance`: both corrections combined, or one of them.

    'both' is `combine_corrections` (the method); 'anchors' (r = g) and 'attention' (r = m)
    are ablations. The unused correction is still computed by the head, so the parameters
    are the same for every kind.

    Args:
      kind: one of CORRECTIONS ('both', 'anchors', 'attention').
      anchor_probs: (B, C) geometric correction g.
      anchor_conf: (B,) its confidence c_g.
      attn_probs: (B, C) attentive correction m.
      attn_conf: (B,) its confidence c_m.

    Returns:
      (B, C) float correction distribution r.
    """
    if kind == "both":
        return combine_corrections(anchor_probs, anchor_conf, attn_probs, attn_conf)
    if kind == "anchors":
        return anchor_probs
    if kind == "attention":
        return attn_probs
    raise ValueError(f"select_correction: kind={kind!r}; expected one of {CORRECTIONS}.")


def balance(primary_probs: jax.Array, primary_conf: jax.Array, correction: jax.Array) -> jax.Array:
    """Confidence-balanced correction q_corr = c_p p + (1 - c_p) r.

    A confident primary prediction is kept; an uncertain one leans on the correction.

    Args:
      primary_probs: (B, C) primary distribution p.
      primary_conf: (B,) its confidence c_p.
      correction: (B, C) correction distribution r.

    Returns:
      (B, C) float corrected distribution.
    """
    conf = primary_conf[..., None]
    return conf * primary_probs + (1.0 - conf) * correction


def trust_ramp(step: int | jax.Array, total_steps: int | jax.Array) -> jax.Array:
    """Linear trust schedule τ = clip(step / total_steps, 0, 1) (ARBEx: n_iter / num_iters).

    Args:
      step: current step t (int or scalar array, may be traced).
      total_steps: T_tot > 0.

    Returns:
      () float32 scalar τ in [0, 1].
    """
    if isinstance(total_steps, int | float) and total_steps <= 0:
        raise ValueError(f"trust_ramp: total_steps={total_steps} must be > 0.")
    tau = jnp.asarray(step, jnp.float32) / jnp.maximum(jnp.asarray(total_steps, jnp.float32), 1.0)
    return jnp.clip(tau, 0.0, 1.0)


def scheduled_trust(schedule: str, ramp: float | jax.Array) -> jax.Array:
    """The trust τ of q_final under a schedule: the ramp, or a constant for ablations.

    Args:
      schedule: one of TRUST_SCHEDULES: 'ramp' (τ = `ramp`, the method), 'none' (τ = 0:
        q_final = p) or 'full' (τ = 1 from step 0: q_final = q_corr).
      ramp: () the trust ramp's value at this step (`trust_ramp(step, total_steps)`).

    Returns:
      () float32 τ in [0, 1].
    """
    ramp = jnp.asarray(ramp, jnp.float32)
    if schedule == "ramp":
        return ramp
    if schedule == "none":
        return jnp.zeros_like(ramp)
    if schedule == "full":
        return jnp.ones_like(ramp)
    raise ValueError(f"scheduled_trust: schedule={schedule!r}; expected one of {TRUST_SCHEDULES}.")


def apply_trust(
    primary_probs: jax.Array, corrected_probs: jax.Array, tau: float | jax.Array
) -> jax.Array:
    """Final training distribution q_final = (1 - τ) p + τ q_corr.

    Args:
      primary_probs: (B, C) primary distribution p.
      corrected_probs: (B, C) corrected distribution q_corr.
      tau: () trust τ in [0, 1].

    Returns:
      (B, C) float distribution the classification loss sees.
    """
    tau = jnp.asarray(tau, primary_probs.dtype)
    return (1.0 - tau) * primary_probs + tau * corrected_probs
