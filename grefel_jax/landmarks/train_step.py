"""The pure functions of landmark pretraining: the loss of the config, a fresh state, one
step. The network trained is `grefel_jax.models.landmarks.LandmarkNet`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from grefel_jax import optim
from grefel_jax.landmarks import losses
from grefel_jax.models.landmarks import LandmarkNet
from grefel_jax.train_state import TrainState

PyTree = Any


def loss_fn_for(config) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """`(pred, target) -> scalar` from `config.landmarks` (`loss`: 'wing' | 'smooth_l1')."""
    c = config.landmarks
    if c.loss == "wing":
        return lambda p, t: losses.wing_loss(p, t, c.wing_w, c.wing_epsilon)
    if c.loss == "smooth_l1":
        return lambda p, t: losses.smooth_l1_loss(p, t, c.smooth_l1_beta)
    raise ValueError(f"config.landmarks.loss={c.loss!r}: expected 'wing' or 'smooth_l1'.")


def all_trained_labels(params: PyTree) -> PyTree:
    """Optimizer group of every parameter: all of them are trained, at `optim.lr_backbone`."""
    return jax.tree.map(lambda _: optim.BACKBONE, params)


def init_state(
    rng: jax.Array, *, model: LandmarkNet, tx: optax.GradientTransformation
) -> TrainState:
    """A fresh TrainState (no EMA); meant to run under jit with the state shardings."""
    size = model.backbone.image_size
    variables = model.init(rng, jnp.zeros((1, size, size, 3), jnp.float32), train=False)
    return TrainState.fresh(variables, tx, rng)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: LandmarkNet,
    tx: optax.GradientTransformation,
    loss_fn: Callable[[jax.Array, jax.Array], jax.Array],
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on `batch` (`image (B, S, S, 3)`, `points (B, N, 2)` crop units, NaN =
    missing). Metrics: `loss`, `point_error` (mean point distance in crop units),
    `grad_norm`."""

    def objective(params):
        pred, updated = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            mutable=["batch_stats"],
        )
        return loss_fn(pred, batch["points"]), (pred, updated["batch_stats"])

    (loss, (pred, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    valid = jnp.all(jnp.isfinite(batch["points"]), axis=-1)
    error = jnp.linalg.norm(pred - jnp.where(valid[..., None], batch["points"], pred), axis=-1)
    metrics = {
        "loss": loss,
        "point_error": jnp.sum(error) / jnp.maximum(jnp.sum(valid), 1),
        "grad_norm": optim.global_norm(grads),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, metrics
