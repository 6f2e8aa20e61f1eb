"""Landmark pretraining setup, separate from the loop (as `grefel_jax.trainer` for training):
config + dataset + mesh -> a `LandmarkTrainer` holding the model, the optimizer, the state
shardings and the jitted train and evaluation functions."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from grefel_jax import optim, settings, sharding
from grefel_jax.data.landmark_layouts import PointLayout
from grefel_jax.data.source import DatasetInfo
from grefel_jax.landmarks import evaluate as landmark_eval
from grefel_jax.landmarks import train_step as landmark_steps
from grefel_jax.models import ModelConfig
from grefel_jax.models import landmarks as landmark_model
from grefel_jax.train_state import TrainState


@dataclasses.dataclass
class LandmarkTrainer:
    """Everything the pretraining loop needs, built once.

    Attributes:
      model_config: the GReFEL ModelConfig whose landmark branch is trained (its backbone
        sizes; saved with every checkpoint).
      layout: the dataset's point layout.
      length: run length and periods (settings.RunLength).
      mesh: the device mesh.
      model: the LandmarkNet.
      schedules: learning rate by optimizer group (only `backbone` is used).
      abstract_state: TrainState of ShapeDtypeStructs carrying the state shardings.
      state_shardings: NamedSharding of every state leaf.
      init: jitted `rng -> TrainState`, created in its shardings.
      step: jitted `(state, {'image', 'points'}) -> (state, metrics)`; donates the state.
      eval_fn: from `landmarks.evaluate.make_eval_fn`.
    """

    model_config: ModelConfig
    layout: PointLayout
    length: settings.RunLength
    mesh: jax.sharding.Mesh
    model: landmark_model.LandmarkNet
    schedules: dict[str, optax.Schedule]
    abstract_state: TrainState
    state_shardings: TrainState
    init: Callable[[jax.Array], TrainState]
    step: Callable
    eval_fn: Callable

    @property
    def image_size(self) -> int:
        """S, the side of the model's input images."""
        return self.model_config.backbone.image_size


def build_landmark_trainer(
    config, dataset: DatasetInfo, layout: PointLayout, mesh: jax.sharding.Mesh
) -> LandmarkTrainer:
    """Builds the LandmarkTrainer for `config` (configs/landmarks_*.py) on `dataset`."""
    run = settings.trainer_settings(config)
    sharding.check_batch_size(run.batch_size, mesh)
    model_config = settings.model_config(config, dataset.num_classes)
    size = model_config.backbone.image_size
    model = landmark_model.LandmarkNet(model_config.backbone, layout.num_points, run.compute_dtype)
    length = settings.run_length(config, dataset.split_sizes[config.data.train_split])

    # One optimizer group: trunk and head are all trained, at `optim.lr_backbone`.
    abstract_params = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )["params"]
    tx, schedules = optim.make_optimizer(
        run.optimizer,
        landmark_steps.all_trained_labels(abstract_params),
        steps_per_epoch=length.steps_per_epoch,
        total_steps=length.total_steps,
    )
    init_fn = functools.partial(landmark_steps.init_state, model=model, tx=tx)
    shapes = jax.eval_shape(init_fn, jax.random.key(0))
    state_shardings = sharding.param_shardings(shapes, mesh, fsdp_min_size=run.fsdp_min_size)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, state_shardings
    )
    batch_shardings = {k: sharding.batch_sharding(mesh) for k in ("image", "points")}
    step = jax.jit(
        functools.partial(
            landmark_steps.train_step,
            model=model,
            tx=tx,
            loss_fn=landmark_steps.loss_fn_for(config),
        ),
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
    eval_fn = landmark_eval.make_eval_fn(
        functools.partial(landmark_model.predict, model=model), layout, mesh
    )
    return LandmarkTrainer(
        model_config=model_config,
        layout=layout,
        length=length,
        mesh=mesh,
        model=model,
        schedules=schedules,
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        init=jax.jit(init_fn, out_shardings=state_shardings),
        step=step,
        eval_fn=eval_fn,
    )
