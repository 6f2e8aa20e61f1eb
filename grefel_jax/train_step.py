"""The pure functions of training: a fresh state and one optimizer update.

Everything besides arrays is bound with functools.partial by `trainer.build_trainer`, which
also jits them with their shardings; tests and benchmarks get them from there too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from grefel_jax import losses, optim, reliability
from grefel_jax.models import GReFEL
from grefel_jax.train_state import TrainState

PyTree = Any


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The static settings of `train_step`.

    Attributes:
      total_steps: T of the trust ramp tau = step / T.
      loss: the LossConfig.
      sam_rho: SAM radius; 0 turns SAM off (one forward/backward per step).
      sam_adaptive: ASAM instead of SAM.
      ema_decay: EMA decay; ignored when the state holds no EMA parameters.
    """

    total_steps: int
    loss: losses.LossConfig = losses.LossConfig()
    sam_rho: float = 0.0
    sam_adaptive: bool = False
    ema_decay: float = 0.0


def init_state(
    rng: jax.Array, *, model: GReFEL, tx: optax.GradientTransformation, use_ema: bool
) -> TrainState:
    """A fresh TrainState: parameters from `model.init`, optimizer state, step 0.

    Meant to run under `jax.jit` with the state's shardings as `out_shardings`.
    """
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    size = model.config.backbone.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, images, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        ema_params=params if use_ema else None,
        rng=jax.random.key_data(state_rng),
    )


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: GReFEL,
    tx: optax.GradientTransformation,
    trainable: PyTree,
    class_weights: jax.Array | None,
    config: StepConfig,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update.

    Args:
      state: the TrainState.
      batch: `image (B, S, S, 3) float32`, `label (B,) int32`.
      model, tx: the Linen module and the optax optimizer.
      trainable: bool tree (False for frozen parameters: no gradient, no perturbation).
      class_weights: (C,) float32 or None.
      config: the StepConfig.

    Returns:
      (new state, metrics): `loss`, `loss_cls`, `loss_anchor`, `loss_center`, `tau`, `trust`,
      `accuracy` (primary prediction vs the training label), `grad_norm`. The dropout key of
      step t is fold_in(state.rng, t): a resumed run draws the same masks, and the masks do
      not depend on how the batch is sharded.
    """
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    tau = reliability.trust_ramp(state.step, config.total_steps)
    head_kind = model.config.head.kind

    def loss_fn(params):
        outputs, updated = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        loss, metrics = losses.total_loss(
            outputs,
            batch["label"],
            tau=tau,
            config=config.loss,
            head_kind=head_kind,
            class_weights=class_weights,
        )
        metrics["accuracy"] = jnp.mean(
            (jnp.argmax(outputs["probs"], axis=-1) == batch["label"]).astype(jnp.float32)
        )
        return loss, (metrics, updated.get("batch_stats", {}))

    def grad_fn(params):
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, aux

    if config.sam_rho > 0:
        grads, (metrics, batch_stats), _ = optim.sam_gradients(
            grad_fn,
            state.params,
            rho=config.sam_rho,
            adaptive=config.sam_adaptive,
            mask=trainable,
        )
    else:
        grads, (metrics, batch_stats) = grad_fn(state.params)
        grads = optim.mask_frozen(grads, trainable)
    metrics["grad_norm"] = optim.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
        ema_params = optim.ema_update(ema_params, params, config.ema_decay, state.step)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        ema_params=ema_params,
    )
    return new_state, metrics
