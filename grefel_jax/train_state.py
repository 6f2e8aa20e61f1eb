"""The training state: one pytree that the train step takes and returns."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training.

    Attributes:
      step: () int32 global step (number of updates applied).
      params: float32 parameters of the model.
      batch_stats: BatchNorm running statistics.
      opt_state: optax state (no entries for frozen parameters).
      ema_params: EMA of `params`, or None when EMA is off.
      rng: (2,) uint32 raw key data; the per-step dropout key is fold_in(rng, step), so a
        resumed run draws the same dropout masks as an uninterrupted one.
    """

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    ema_params: PyTree | None
    rng: jax.Array

    def model_tree(self) -> dict[str, PyTree]:
        """What inference needs (the checkpoint's `model` item)."""
        tree = {"params": self.params, "batch_stats": self.batch_stats}
        if self.ema_params is not None:
            tree["ema_params"] = self.ema_params
        return tree

    def train_tree(self) -> dict[str, PyTree]:
        """What only training needs (the checkpoint's `train` item)."""
        return {"step": self.step, "opt_state": self.opt_state, "rng": self.rng}

    def eval_variables(self) -> dict[str, PyTree]:
        """Variables for evaluation: the EMA parameters when EMA is on."""
        params = self.ema_params if self.ema_params is not None else self.params
        return {"params": params, "batch_stats": self.batch_stats}

    @classmethod
    def from_trees(cls, model: dict[str, PyTree], train: dict[str, PyTree]) -> TrainState:
        """Inverse of (`model_tree`, `train_tree`)."""
        return cls(
            step=train["step"],
            params=model["params"],
            batch_stats=model["batch_stats"],
            opt_state=train["opt_state"],
            ema_params=model.get("ema_params"),
            rng=train["rng"],
        )

    @classmethod
    def fresh(cls, variables: dict[str, PyTree], tx, rng: jax.Array) -> TrainState:
        """Step 0 of a pretraining network's `variables` (params, batch_stats) under the optax
        transformation `tx`, without EMA; `rng` is the key whose data seeds the step keys."""
        params = variables["params"]
        return cls(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables["batch_stats"],
            opt_state=tx.init(params),
            ema_params=None,
            rng=jax.random.key_data(rng),
        )
