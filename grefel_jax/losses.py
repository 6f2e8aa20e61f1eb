"""Losses of GReFEL / ARBEx (docs/losses.md) as pure functions of the head outputs.

  L = λ_ce L_cls(q_final) + τ (λ_anchor L_a + λ_center L_c)      (GReFEL head)
  L = L_cls(log_softmax(logits))                                  (POSTER++ head)

with τ the trust ramp (reliability.trust_ramp) and q_final = (1 - τ_cls) p + τ_cls q_corr,
where τ_cls = τ by default (`loss.trust='ramp'`) or a constant 0 / 1 for the 'none' / 'full'
ablations; the auxiliary losses keep the ramp τ in every case. Every log and sqrt is guarded,
so no NaN or inf reaches a gradient. `LossConfig` holds the settings;
`LOSS_PRESETS` the ones that go with each head preset.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import jax
import jax.numpy as jnp

from grefel_jax import reliability

# Floor inside log(q) for distributions that may contain exact zeros (mixtures, one-hots).
LOG_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Settings of `total_loss` (the `config.loss` section).

    Attributes:
      lambda_ce, lambda_anchor, lambda_center: loss weights (ARBEx λ_ce, λ_mu, λ_center).
      label_smoothing: ε of the classification loss, in [0, 1).
      anchor_loss_form: 'official' (ARBEx, unbounded below) or 'margin' (bounded hinge).
      anchor_margin: hinge margin of the 'margin' form (RMS-per-dimension units).
      detach_center_confidence: stop the gradient through c_p in the center loss (the
        official code does not; docs/numerics.md measures why GReFEL's default does).
      class_weighting: inverse-frequency class weights in L_cls (ARBEx).
      trust: the trust τ_cls in q_final = (1 - τ_cls) p + τ_cls q_corr: 'ramp' (GReFEL /
        ARBEx: the trust ramp step / total_steps), 'none' (τ_cls = 0: L_cls sees only p) or
        'full' (τ_cls = 1 from step 0: L_cls sees only q_corr). 'none' and 'full' are
        ablations (docs/robustness.md); the auxiliary losses are weighted by the ramp under
        all three, so this field changes only what the classification loss sees.
    """

    lambda_ce: float = 1.0
    lambda_anchor: float = 1.0
    lambda_center: float = 1.0
    label_smoothing: float = 0.0
    anchor_loss_form: Literal["official", "margin"] = "margin"
    anchor_margin: float = 1.0
    detach_center_confidence: bool = True
    class_weighting: bool = True
    trust: Literal["ramp", "none", "full"] = "ramp"

    def __post_init__(self):
        if self.anchor_loss_form not in ("official", "margin"):
            raise ValueError(
                f"loss.anchor_loss_form={self.anchor_loss_form!r}: 'official' or 'margin'."
            )
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"loss.label_smoothing={self.label_smoothing} must be in [0, 1).")
        if self.trust not in reliability.TRUST_SCHEDULES:
            raise ValueError(
                f"loss.trust={self.trust!r}: expected one of {reliability.TRUST_SCHEDULES}."
            )
        for name in ("lambda_ce", "lambda_anchor", "lambda_center", "anchor_margin"):
            if getattr(self, name) < 0:
                raise ValueError(f"loss.{name}={getattr(self, name)} must be >= 0.")


# The loss settings of each head preset (models.config.HEAD_PRESETS); `arbex_code` is the
# official ARBEx code: unbounded anchor loss, gradient through the center-loss confidence.
LOSS_PRESETS: dict[str, dict[str, Any]] = {
    "grefel": {},
    "arbex_code": dict(anchor_loss_form="official", detach_center_confidence=False),
    "poster": {},
}


def make_loss_config(preset: str, overrides: Mapping[str, Any] | None = None) -> LossConfig:
    """LossConfig of a head preset, with `overrides` (unset = None values are skipped)."""
    if preset not in LOSS_PRESETS:
        raise ValueError(f"model.head_preset={preset!r}: expected one of {sorted(LOSS_PRESETS)}.")
    fields = {f.name for f in dataclasses.fields(LossConfig)}
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - fields)
    if unknown:
        raise ValueError(f"loss: unknown field(s) {unknown}; valid fields are {sorted(fields)}.")
    return LossConfig(**{**LOSS_PRESETS[preset], **given})


def safe_log(probs: jax.Array, eps: float = LOG_EPS) -> jax.Array:
    """log(max(q, eps)): exact for q >= eps, finite value and gradient at q = 0.

    Args:
      probs: (..., C) float probabilities.
      eps: floor.

    Returns:
      (..., C) float log-probabilities.
    """
    return jnp.log(jnp.maximum(probs, eps))


def weighted_cross_entropy(
    log_probs: jax.Array,
    labels: jax.Array,
    *,
    class_weights: jax.Array | None = None,
    label_smoothing: float = 0.0,
    mask: jax.Array | None = None,
) -> jax.Array:
    """Class-weighted, optionally smoothed and masked cross-entropy (PyTorch NLL weighting).

    L = -Σ_b w_{y_b} Σ_c t_{b,c} log q_b[c] / Σ_b w_{y_b}, with the target t_b = (1 - ε) onehot
    (y_b) + ε / C. The weight is always that of the TRUE class y_b (PyTorch's
    CrossEntropyLoss instead weights each smoothing term by its own class). With ε = 0 this is
    exactly `nn.NLLLoss(weight=w)(log q, y)` (ARBEx `DistLoss`). Masked-out examples contribute
    neither to the numerator nor to the normaliser; an all-masked batch gives 0.

    Args:
      log_probs: (B, C) float log-probabilities: `safe_log(q)` for a distribution q, or
        `jax.nn.log_softmax(logits)`.
      labels: (B,) int class indices in [0, C).
      class_weights: (C,) float per-class weights w, or None for all ones.
      label_smoothing: ε in [0, 1).
      mask: (B,) bool, True = real example, False = padding; None = all real.

    Returns:
      () float32 loss.
    """
    num_classes = log_probs.shape[-1]
    log_probs = jnp.asarray(log_probs, jnp.float32)
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    target = (1.0 - label_smoothing) * onehot + label_smoothing / num_classes
    per_example = -jnp.sum(target * log_probs, axis=-1)  # (B,)
    if class_weights is None:
        weight = jnp.ones_like(per_example)
    else:
        weight = jnp.asarray(class_weights, jnp.float32)[labels]
    if mask is not None:
        weight = weight * jnp.asarray(mask, jnp.float32)
    total_weight = jnp.sum(weight)
    return jnp.sum(weight * per_example) / jnp.where(total_weight > 0, total_weight, 1.0)


def anchor_loss(
    anchors: jax.Array,
    form: Literal["official", "margin"] = "official",
    margin: float = 1.0,
) -> jax.Array:
    """Anchor ("mu") loss that pushes the anchors of different classes apart.

    official (ARBEx `AnchorLoss`): L_a = -(1 / (K^2 sqrt d)) Σ_i Σ_k Σ_j ||a_ij - a_kj||^2 over
      ordered class pairs (i, k) and the SAME anchor index j. Unbounded below; value and
      gradient are exactly 0 when all anchors are equal (e.g. zero init).
    margin (bounded alternative, docs/ambiguities.md §8.3): mean over all ordered pairs of
      anchors of different classes, (i, j) vs (k, l) with i != k and any j, l, of the hinge
      max(0, margin - ||a_ij - a_kl|| / sqrt d). Lies in [0, margin]; 0 once every cross-class
      pair is at least margin * sqrt(d) apart (margin is in RMS-per-dimension units, like the
      center loss). Equal anchors get no gradient (a symmetric saddle), so use it with the
      'normal' anchor init.

    Args:
      anchors: (C, K, d) float anchors.
      form: 'official' or 'margin'.
      margin: hinge margin of the 'margin' form.

    Returns:
      () float32 loss.
    """
    num_classes, num_anchors, dim = anchors.shape
    anchors = jnp.asarray(anchors, jnp.float32)
    if form == "official":
        flat = anchors.reshape(num_classes, num_anchors * dim)
        sq = jnp.sum(jnp.square(flat[None, :, :] - flat[:, None, :]))
        return -sq / math.sqrt(dim) / (num_anchors * num_anchors)
    if form == "margin":
        flat = anchors.reshape(num_classes * num_anchors, dim)
        # Pairwise distances between all C*K anchors, reusing the guarded distance.
        dist = reliability.anchor_distances(flat, anchors).reshape(
            num_classes, num_anchors, num_classes, num_anchors
        )
        hinge = jax.nn.relu(margin - dist / math.sqrt(dim))
        cross = 1.0 - jnp.eye(num_classes, dtype=jnp.float32)[:, None, :, None]
        num_pairs = num_classes * (num_classes - 1) * num_anchors * num_anchors
        return jnp.sum(hinge * cross) / num_pairs
    raise ValueError(f"anchor_loss: form={form!r}; expected 'official' or 'margin'.")


def center_loss(
    head_embedding: jax.Array,
    anchors: jax.Array,
    labels: jax.Array,
    primary_confidence: jax.Array,
    mask: jax.Array | None = None,
    detach_confidence: bool = False,
) -> jax.Array:
    """Confidence-weighted distance to the nearest anchor of the true class (ARBEx `CenterLoss`).

    L_c = (1/B) Σ_b c_p,b min_j ||e_b - a_{y_b, j}||_2 / sqrt(d). In the official code the
    confidence is not detached, so the loss also lowers c_p, towards a uniform prediction,
    in proportion to the distance; `detach_confidence=True` makes c_p a weight only
    (docs/numerics.md). With a mask the mean runs over the real examples only.

    Args:
      head_embedding: (B, d) float embeddings e.
      anchors: (C, K, d) float anchors.
      labels: (B,) int true classes.
      primary_confidence: (B,) float c_p.
      mask: (B,) bool, True = real example; None = all real.
      detach_confidence: stop the gradient through c_p.

    Returns:
      () float32 loss.
    """
    if detach_confidence:
        primary_confidence = jax.lax.stop_gradient(primary_confidence)
    dim = head_embedding.shape[-1]
    distances = reliability.anchor_distances(
        jnp.asarray(head_embedding, jnp.float32), jnp.asarray(anchors, jnp.float32)
    )
    true_class = jnp.take_along_axis(distances, labels[:, None, None], axis=1)[:, 0]  # (B, K)
    per_example = jnp.min(true_class, axis=-1) * primary_confidence / math.sqrt(dim)
    if mask is None:
        return jnp.mean(per_example)
    weight = jnp.asarray(mask, jnp.float32)
    return jnp.sum(weight * per_example) / jnp.maximum(jnp.sum(weight), 1.0)


def total_loss(
    outputs: dict[str, jax.Array],
    labels: jax.Array,
    *,
    tau: float | jax.Array,
    config: LossConfig = LossConfig(),
    head_kind: Literal["grefel", "poster"] = "grefel",
    class_weights: jax.Array | None = None,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Training loss of either head from its output dict.

    GReFEL head: L = λ_ce L_cls(q_final) + τ (λ_anchor L_a + λ_center L_c), q_final =
    apply_trust(probs, corrected_probs, τ_cls) with τ_cls = scheduled_trust(config.trust, τ),
    L_cls = weighted_cross_entropy of safe_log(q_final).
    POSTER++ head: L = λ_ce L_cls(log_softmax(logits)) (the head temperature is not applied,
    as in POSTER++'s nn.CrossEntropyLoss on logits).

    Args:
      outputs: a head's output dict (models/heads.py).
      labels: (B,) int true classes.
      tau: () trust τ in [0, 1] (reliability.trust_ramp(step, total_steps)).
      config: the LossConfig (weights, smoothing, anchor-loss form, detach).
      head_kind: `HeadConfig.kind` of the head that produced `outputs`.
      class_weights: (C,) float or None.
      mask: (B,) bool, False = padding example (excluded from L_cls and L_c).

    Returns:
      (loss () float32, metrics) with metrics 'loss', 'loss_cls', 'loss_anchor', 'loss_center'
      (each component unweighted; 0 for the POSTER++ head), 'tau' (the ramp) and 'trust'
      (τ_cls, the trust in q_final; = tau under the default 'ramp').
    """
    if head_kind not in ("grefel", "poster"):
        raise ValueError(f"total_loss: head_kind={head_kind!r}; expected 'grefel' or 'poster'.")
    tau = jnp.asarray(tau, jnp.float32)
    trust = reliability.scheduled_trust(config.trust, tau)
    ce_kwargs = dict(class_weights=class_weights, label_smoothing=config.label_smoothing, mask=mask)
    if head_kind == "poster":
        log_probs = jax.nn.log_softmax(jnp.asarray(outputs["logits"], jnp.float32), axis=-1)
        loss_cls = weighted_cross_entropy(log_probs, labels, **ce_kwargs)
        loss_anchor = jnp.zeros((), jnp.float32)
        loss_center = jnp.zeros((), jnp.float32)
        loss = config.lambda_ce * loss_cls
    else:
        q_final = reliability.apply_trust(outputs["probs"], outputs["corrected_probs"], trust)
        loss_cls = weighted_cross_entropy(safe_log(q_final), labels, **ce_kwargs)
        loss_anchor = anchor_loss(outputs["anchors"], config.anchor_loss_form, config.anchor_margin)
        loss_center = center_loss(
            outputs["head_embedding"],
            outputs["anchors"],
            labels,
            outputs["confidence"],
            mask,
            detach_confidence=config.detach_center_confidence,
        )
        loss = config.lambda_ce * loss_cls + tau * (
            config.lambda_anchor * loss_anchor + config.lambda_center * loss_center
        )
    metrics = {
        "loss": loss,
        "loss_cls": loss_cls,
        "loss_anchor": loss_anchor,
        "loss_center": loss_center,
        "tau": tau,
        "trust": trust,
    }
    return loss, metrics
