"""Optimizers, learning-rate schedules, parameter groups, SAM and EMA.

Parameter groups (labels on the param tree):

* `frozen`: `face_landback` (MobileFaceNet, always frozen) and, when
  `freeze_image_backbone`, `ir_back`. They get `optax.set_to_zero()`: no update and no
  optimizer state, so Adam moments are not allocated for them.
* `anchors`: every param named `anchors` under `head` (the anchor learning rate).
* `head`: the rest of `head`.
* `backbone`: everything else (IR-50, window attention, fusion, ViT).

SAM (Foret et al. 2021, as in POSTER++ via davda54/sam) is written as a pure function of a
gradient function, `sam_gradients`, so that the train step reads as the two-step definition:
gradient at w, ascend to w + e(w), gradient there, and the base optimizer applies that second
gradient at w.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from grefel_jax.models import names

PyTree = Any

FROZEN, BACKBONE, HEAD, ANCHORS = "frozen", "backbone", "head", "anchors"
GROUPS = (BACKBONE, HEAD, ANCHORS)


def param_labels(params: Mapping[str, PyTree], *, freeze_image_backbone: bool) -> PyTree:
    """Group label (`frozen`/`backbone`/`head`/`anchors`) for every leaf of `params`."""

    def label(path, _):
        keys = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
        top = keys[0]
        if top == names.LANDMARK_NET or (freeze_image_backbone and top == names.IMAGE_BACKBONE):
            return FROZEN
        if top == names.HEAD:
            return ANCHORS if keys[-1] == names.ANCHORS else HEAD
        return BACKBONE

    return jax.tree_util.tree_map_with_path(label, params)


def trainable_mask(labels: PyTree) -> PyTree:
    """Bool tree: True where the parameter is trained."""
    return jax.tree.map(lambda lab: lab != FROZEN, labels)


def make_schedule(
    base_lr: float, optim_config: Mapping[str, Any], *, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
    """Learning rate per step.

    `optim_config` keys: `schedule` ('constant' | 'exponential' | 'cosine'), `decay_rate`
    (exponential: factor per epoch, applied once per epoch like torch ExponentialLR),
    `warmup_steps` (linear warm-up from 0), `min_lr_ratio` (cosine floor as a fraction of
    `base_lr`).
    """
    kind = optim_config["schedule"]
    warmup = int(optim_config.get("warmup_steps", 0))
    if kind == "constant":
        main = optax.constant_schedule(base_lr)
    elif kind == "exponential":
        main = optax.exponential_decay(
            base_lr,
            transition_steps=max(1, steps_per_epoch),
            decay_rate=float(optim_config["decay_rate"]),
            staircase=True,
        )
    elif kind == "cosine":
        main = optax.cosine_decay_schedule(
            base_lr,
            decay_steps=max(1, total_steps - warmup),
            alpha=float(optim_config.get("min_lr_ratio", 0.0)),
        )
    else:
        raise ValueError(
            f"config.optim.schedule={kind!r}: expected 'constant', 'exponential' or 'cosine'."
        )
    if warmup <= 0:
        return main
    ramp = optax.linear_schedule(0.0, base_lr, warmup)
    return optax.join_schedules([ramp, main], boundaries=[warmup])


def _base_optimizer(optim_config: Mapping[str, Any], lr: optax.Schedule):
    name = optim_config["name"]
    if name == "adam":
        return optax.adam(lr, b1=optim_config["b1"], b2=optim_config["b2"], eps=optim_config["eps"])
    if name == "adamw":
        return optax.adamw(
            lr,
            b1=optim_config["b1"],
            b2=optim_config["b2"],
            eps=optim_config["eps"],
            weight_decay=optim_config["weight_decay"],
        )
    if name == "sgd":
        chain = [optax.sgd(lr, momentum=optim_config["momentum"] or None, nesterov=False)]
        if optim_config["weight_decay"]:
            chain.insert(0, optax.add_decayed_weights(optim_config["weight_decay"]))
        return optax.chain(*chain)
    raise ValueError(f"config.optim.name={name!r}: expected 'adam', 'adamw' or 'sgd'.")


def make_optimizer(
    optim_config: Mapping[str, Any],
    labels: PyTree,
    *,
    steps_per_epoch: int,
    total_steps: int,
) -> tuple[optax.GradientTransformation, dict[str, optax.Schedule]]:
    """The full optimizer: optional global-norm clipping, then one optimizer per group.

    Args:
      optim_config: `config.optim` (name, lr_backbone, lr_head, lr_anchors, schedule, ...).
      labels: from `param_labels`.
      steps_per_epoch / total_steps: for per-epoch decay and cosine length.

    Returns:
      `(optimizer, schedules)`: schedules by group name, for logging the learning rates.
    """
    schedules = {
        group: make_schedule(
            float(optim_config[f"lr_{group}"]),
            optim_config,
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
        )
        for group in GROUPS
    }
    transforms = {g: _base_optimizer(optim_config, s) for g, s in schedules.items()}
    transforms[FROZEN] = optax.set_to_zero()
    # Only groups that occur get an optimizer; optax.partition wants every label mapped.
    present = set(jax.tree.leaves(labels))
    transforms = {k: v for k, v in transforms.items() if k in present} or {
        FROZEN: optax.set_to_zero()
    }
    chain = []
    if optim_config.get("grad_clip_norm", 0.0):
        chain.append(optax.clip_by_global_norm(float(optim_config["grad_clip_norm"])))
    chain.append(optax.partition(transforms, labels))
    return optax.chain(*chain), schedules


def mask_frozen(grads: PyTree, mask: PyTree) -> PyTree:
    """Zeros the gradient of frozen leaves (so they do not enter norms: clipping, SAM)."""
    return jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, mask)


def global_norm(tree: PyTree) -> jax.Array:
    """sqrt(sum of squares) over all leaves, in float32."""
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def sam_perturbation(
    params: PyTree, grads: PyTree, *, rho: float, adaptive: bool, eps: float = 1e-12
) -> PyTree:
    """The SAM ascent step e(w) (davda54/sam, used by POSTER++).

    Plain: e = rho * g / ||g||. Adaptive (ASAM): e = rho * w^2 * g / || |w| * g ||.
    """
    if adaptive:
        norm = global_norm(jax.tree.map(lambda p, g: jnp.abs(p) * g, params, grads))
        scale = rho / (norm + eps)
        return jax.tree.map(lambda p, g: jnp.square(p) * g * scale, params, grads)
    scale = rho / (global_norm(grads) + eps)
    return jax.tree.map(lambda g: g * scale, grads)


def sam_gradients(
    grad_fn: Callable[[PyTree], tuple[PyTree, Any]],
    params: PyTree,
    *,
    rho: float,
    adaptive: bool,
    mask: PyTree | None = None,
) -> tuple[PyTree, Any, PyTree]:
    """Sharpness-aware gradient: the gradient at w + e(w).

    Args:
      grad_fn: params -> (grads, aux); evaluated twice.
      params: the current weights w.
      rho / adaptive: SAM radius and ASAM switch.
      mask: trainable mask; frozen leaves get no perturbation and a zero gradient.

    Returns:
      `(sam_grads, aux_at_w, grads_at_w)`: the second gradient (what the base optimizer
      applies at w), the aux output of the first pass (losses, metrics, BN statistics of the
      unperturbed weights) and the first gradient.
    """
    grads, aux = grad_fn(params)
    if mask is not None:
        grads = mask_frozen(grads, mask)
    e = sam_perturbation(params, grads, rho=rho, adaptive=adaptive)
    perturbed = jax.tree.map(lambda p, d: p + d.astype(p.dtype), params, e)
    sam_grads, _ = grad_fn(perturbed)
    if mask is not None:
        sam_grads = mask_frozen(sam_grads, mask)
    return sam_grads, aux, grads


def ema_update(ema_params: PyTree, params: PyTree, decay: float, step: jax.Array) -> PyTree:
    """Exponential moving average with the usual warm-up: d_t = min(decay, (1+t)/(10+t))."""
    t = step.astype(jnp.float32)
    d = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p.astype(e.dtype), ema_params, params)
