"""Training setup, separate from the loop: config + training set + mesh -> a `Trainer`.

`build_trainer` resolves every derived value once (model and loss configs, run length and
periods, image size, class weights), builds the optimizer with its parameter groups, the
shardings of the state, and the jitted train step. The training task (`train.py`), the
benchmarks, the study and the tests all start from it, so none of them assembles a step.
The config is read through `settings`; the dataset arrives opened (`source.TrainingSet`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grefel_jax import optim, settings, sharding
from grefel_jax.data.source import DatasetInfo, TrainingSet
from grefel_jax.losses import LossConfig
from grefel_jax.models import GReFEL, ModelConfig
from grefel_jax.train_state import TrainState
from grefel_jax.train_step import StepConfig, init_state, train_step

PyTree = Any


@dataclasses.dataclass
class Trainer:
    """Everything the training loop needs, built once.

    Attributes:
      model_config / loss_config / step_config: the resolved settings.
      length: run length and periods (settings.RunLength).
      dataset: the DatasetInfo trained on (class names are saved with every checkpoint).
      mesh: the device mesh.
      model: the Linen module (compute dtype applied).
      tx, schedules: the optimizer and its learning-rate schedules by parameter group.
      param_labels / trainable: group label and trainable flag of every parameter.
      class_weights: (C,) float32 loss weights, or None.
      abstract_state: TrainState of ShapeDtypeStructs carrying the state shardings.
      state_shardings: NamedSharding of every state leaf.
      batch_shardings: of the `image` and `label` batch arrays.
      step: the jitted train step, `(state, batch) -> (state, metrics)`; donates the state.
    """

    model_config: ModelConfig
    loss_config: LossConfig
    step_config: StepConfig
    length: settings.RunLength
    dataset: DatasetInfo
    mesh: jax.sharding.Mesh
    model: GReFEL
    tx: optax.GradientTransformation
    schedules: dict[str, optax.Schedule]
    param_labels: PyTree
    trainable: PyTree
    class_weights: jax.Array | None
    abstract_state: TrainState
    state_shardings: TrainState
    batch_shardings: dict[str, jax.sharding.NamedSharding]
    step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict]]
    _init: Callable[[jax.Array], TrainState] = dataclasses.field(repr=False, default=None)

    @property
    def image_size(self) -> int:
        """S, the side of the model's input images."""
        return self.model_config.backbone.image_size

    def init_state(self, rng: jax.Array) -> TrainState:
        """A fresh state, created directly in its shardings."""
        return self._init(rng)

    def restore_targets(self) -> TrainState:
        """The abstract state as restore targets (ShapeDtypeStruct with sharding)."""
        return self.abstract_state

    def global_batch(self, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's share of a batch -> the global `image` and `label` arrays."""
        return sharding.host_local_to_global(
            {"image": host_batch["image"], "label": host_batch["label"]}, self.mesh
        )


def build_trainer(config, data: TrainingSet, mesh: jax.sharding.Mesh) -> Trainer:
    """Builds the Trainer for `config` on the training set `data` over `mesh`.

    Args:
      config: the run config (configs/*.py); read through `grefel_jax.settings`.
      data: the training set (`source.open_training_set`): class count and names, the
        records read per epoch, their class counts for class weighting.
      mesh: from `sharding.make_mesh`.

    Returns:
      The Trainer. Nothing is computed on devices yet except the class weights.
    """
    run = settings.trainer_settings(config)
    sharding.check_batch_size(run.batch_size, mesh)
    dataset = data.info
    model_config = settings.model_config(config, dataset.num_classes)
    loss_config = settings.loss_config(config)
    # Per-epoch schedules count the records training reads (a long-tailed subset if set).
    length = settings.run_length(config, data.size)
    model = settings.make_model(model_config, run.compute_dtype)

    abstract_params = jax.eval_shape(
        lambda: init_state(jax.random.key(0), model=model, tx=optax.identity(), use_ema=False)
    ).params
    labels = optim.param_labels(
        abstract_params, freeze_image_backbone=model_config.backbone.freeze_image_backbone
    )
    trainable = optim.trainable_mask(labels)
    tx, schedules = optim.make_optimizer(
        run.optimizer,
        labels,
        steps_per_epoch=length.steps_per_epoch,
        total_steps=length.total_steps,
    )

    init_fn = functools.partial(init_state, model=model, tx=tx, use_ema=run.ema_decay > 0)
    shapes = jax.eval_shape(init_fn, jax.random.key(0))
    state_shardings = sharding.param_shardings(shapes, mesh, fsdp_min_size=run.fsdp_min_size)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, state_shardings
    )
    _log_parameter_counts(shapes.params, labels)

    class_weights = None
    if loss_config.class_weighting:
        class_weights = jnp.asarray(data.class_weights(), jnp.float32)
    step_config = StepConfig(
        total_steps=length.total_steps,
        loss=loss_config,
        sam_rho=run.sam_rho,
        sam_adaptive=run.sam_adaptive,
        ema_decay=run.ema_decay,
    )
    batch_shardings = {k: sharding.batch_sharding(mesh) for k in ("image", "label")}
    step = jax.jit(
        functools.partial(
            train_step,
            model=model,
            tx=tx,
            trainable=trainable,
            class_weights=class_weights,
            config=step_config,
        ),
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
    return Trainer(
        model_config=model_config,
        loss_config=loss_config,
        step_config=step_config,
        length=length,
        dataset=dataset,
        mesh=mesh,
        model=model,
        tx=tx,
        schedules=schedules,
        param_labels=labels,
        trainable=trainable,
        class_weights=class_weights,
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        batch_shardings=batch_shardings,
        step=step,
        _init=jax.jit(init_fn, out_shardings=state_shardings),
    )


def _log_parameter_counts(params: PyTree, labels: PyTree) -> None:
    counts: dict[str, int] = {}
    for p, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels)):
        counts[lab] = counts.get(lab, 0) + int(np.prod(p.shape))
    logging.info("Parameters by group: %s (total %d).", counts, sum(counts.values()))
