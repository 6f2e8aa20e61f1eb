"""Identity pretraining setup, separate from the loop (as `grefel_jax.trainer` for GReFEL):
config + dataset + mesh -> an `IdentityTrainer` holding the model, the optimizer, the state
shardings, the jitted train step and the jitted embedding function."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from grefel_jax import optim, settings, sharding
from grefel_jax.data.source import DatasetInfo
from grefel_jax.identity import losses
from grefel_jax.models import ModelConfig
from grefel_jax.models.identity import MARGIN_HEAD, IdentityHeadConfig, IdentityNet
from grefel_jax.train_state import TrainState

PyTree = Any
EXPRESSION_CLASSES_PLACEHOLDER = 7


@dataclasses.dataclass(frozen=True)
class MarginSettings:
    """The margin loss of `config.identity` (identity.losses).

    Attributes:
      kind: 'arcface' or 'cosface'.
      scale: s.
      margin: m at full strength.
      warmup_steps: m rises linearly from 0 over these steps (0 = full from the start).
    """

    kind: str
    scale: float
    margin: float
    warmup_steps: int

    def __post_init__(self):
        if self.kind not in losses.MARGIN_LOSSES:
            raise ValueError(
                f"identity.loss={self.kind!r}: expected one of {losses.MARGIN_LOSSES}."
            )
        if self.scale <= 0:
            raise ValueError(f"identity.scale={self.scale} must be positive.")
        if self.margin < 0:
            raise ValueError(f"identity.margin={self.margin} must be >= 0.")
        if self.warmup_steps < 0:
            raise ValueError(f"identity.margin_warmup_steps={self.warmup_steps} must be >= 0.")

    def at(self, step: jax.Array) -> jax.Array:
        """The margin at `step` (a traced int)."""
        if self.warmup_steps <= 0:
            return jnp.float32(self.margin)
        ramp = jnp.minimum(step.astype(jnp.float32) / self.warmup_steps, 1.0)
        return self.margin * ramp


def margin_settings(config) -> MarginSettings:
    """MarginSettings of `config.identity`."""
    c = config.identity
    return MarginSettings(
        kind=str(c.loss),
        scale=float(c.scale),
        margin=float(c.margin),
        warmup_steps=int(c.margin_warmup_steps),
    )


def identity_head_config(config, num_identities: int) -> IdentityHeadConfig:
    """IdentityHeadConfig from `config.identity` (unset sizes: the variant's IDENTITY_SIZES)."""
    from grefel_jax.models.identity import IDENTITY_SIZES

    sizes = dict(IDENTITY_SIZES[config.model.variant])
    for key in ("stage4_units", "embedding_dim"):
        if config.identity.get(key) is not None:
            sizes[key] = int(config.identity[key])
    return IdentityHeadConfig(
        num_identities=int(num_identities),
        embedding_dropout=float(config.identity.embedding_dropout),
        **sizes,
    )


@dataclasses.dataclass
class IdentityTrainer:
    """Everything the loop needs for identity pretraining, built once.

    Attributes:
      model_config: the GReFEL ModelConfig whose image backbone is pretrained (its backbone
        sizes; saved with every checkpoint, so `init_from` knows where it belongs).
      head: the IdentityHeadConfig (fourth stage, embedding, identities).
      margin: the MarginSettings.
      length: run length and periods (settings.RunLength).
      mesh: the device mesh.
      model: the IdentityNet.
      schedules: learning rate by optimizer group (`backbone`, and `head` for the margin head).
      abstract_state / state_shardings: as in `grefel_jax.trainer.Trainer`.
      init: jitted `rng -> TrainState`, created in its shardings.
      step: jitted `(state, {'image', 'label'}) -> (state, metrics)`; donates the state.
      embed: jitted `(variables, image (B, S, S, 3)) -> (B, E)` float32 embeddings,
        replicated; with flip averaging when `config.identity.flip_test`.
    """

    model_config: ModelConfig
    head: IdentityHeadConfig
    margin: MarginSettings
    length: settings.RunLength
    mesh: jax.sharding.Mesh
    model: IdentityNet
    schedules: dict[str, optax.Schedule]
    abstract_state: TrainState
    state_shardings: TrainState
    init: Callable[[jax.Array], TrainState]
    step: Callable
    embed: Callable

    @property
    def image_size(self) -> int:
        """S, the side of the model's input images."""
        return self.model_config.backbone.image_size


def num_training_identities(train_labels: np.ndarray, where: str) -> int:
    """N = the training identities; their labels must be 0 .. N-1 (both identity builders
    number the training identities first)."""
    labels = np.unique(np.asarray(train_labels))
    if len(labels) < 2 or labels[0] != 0 or labels[-1] != len(labels) - 1:
        raise ValueError(
            f"{where}: identity pretraining needs training labels 0 .. N-1 with N >= 2 "
            f"(found {len(labels)} distinct labels from {labels[:1]} to {labels[-1:]})."
        )
    return len(labels)


def build_identity_trainer(
    config, dataset: DatasetInfo, num_identities: int, mesh: jax.sharding.Mesh
) -> IdentityTrainer:
    """Builds the IdentityTrainer for `config` (configs/identity_*.py) on `dataset`."""
    run = settings.trainer_settings(config)
    sharding.check_batch_size(run.batch_size, mesh)
    # The record describes the backbone being pretrained; GReFEL's expression head is not
    # built here, so its class count is a placeholder (RAF-DB's 7), not the identity count.
    model_config = settings.model_config(config, EXPRESSION_CLASSES_PLACEHOLDER)
    head = identity_head_config(config, num_identities)
    margin = margin_settings(config)
    size = model_config.backbone.image_size
    model = IdentityNet(model_config.backbone, head, run.compute_dtype)
    length = settings.run_length(config, dataset.split_sizes[config.data.train_split])

    abstract_params = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
    )["params"]
    labels = jax.tree_util.tree_map_with_path(
        lambda path, _: optim.HEAD if path[0].key == MARGIN_HEAD else optim.BACKBONE,
        abstract_params,
    )
    tx, schedules = optim.make_optimizer(
        run.optimizer,
        labels,
        steps_per_epoch=length.steps_per_epoch,
        total_steps=length.total_steps,
    )
    init_fn = functools.partial(init_state, model=model, tx=tx)
    shapes = jax.eval_shape(init_fn, jax.random.key(0))
    state_shardings = sharding.param_shardings(shapes, mesh, fsdp_min_size=run.fsdp_min_size)
    abstract_state = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, state_shardings
    )
    batch_shardings = {k: sharding.batch_sharding(mesh) for k in ("image", "label")}
    step = jax.jit(
        functools.partial(train_step, model=model, tx=tx, margin=margin),
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
    embed_fn = functools.partial(embed, model=model, flip=bool(config.identity.flip_test))
    return IdentityTrainer(
        model_config=model_config,
        head=head,
        margin=margin,
        length=length,
        mesh=mesh,
        model=model,
        schedules={g: schedules[g] for g in (optim.BACKBONE, optim.HEAD)},
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        init=jax.jit(init_fn, out_shardings=state_shardings),
        step=step,
        embed=jax.jit(embed_fn, out_shardings=sharding.replicated(mesh)),
    )


def init_state(rng: jax.Array, *, model: IdentityNet, tx: optax.GradientTransformation):
    """A fresh TrainState (no EMA); meant to run under jit with the state shardings."""
    params_rng, state_rng = jax.random.split(rng)
    size = model.backbone.image_size
    variables = model.init(params_rng, jnp.zeros((1, size, size, 3), jnp.float32), train=False)
    return TrainState.fresh(variables, tx, state_rng)


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: IdentityNet,
    tx: optax.GradientTransformation,
    margin: MarginSettings,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One update on `batch` (`image (B, S, S, 3)`, `label (B,)` identity indices).

    Metrics: `loss`, `accuracy` (nearest identity direction == label, without margin),
    `margin`, `grad_norm`. The dropout key of step t is fold_in(state.rng, t), as in GReFEL.
    """
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    m = margin.at(state.step)

    def objective(params):
        outputs, updated = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        loss = losses.margin_loss(
            outputs["cosine"], batch["label"], kind=margin.kind, scale=margin.scale, margin=m
        )
        return loss, (outputs["cosine"], updated["batch_stats"])

    (loss, (cosine, batch_stats)), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean((jnp.argmax(cosine, axis=-1) == batch["label"]).astype(jnp.float32)),
        "margin": m,
        "grad_norm": optim.global_norm(grads),
    }
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    return new_state, metrics


def embed(variables: PyTree, images: jax.Array, *, model: IdentityNet, flip: bool) -> jax.Array:
    """`images (B, S, S, 3)` -> `(B, E)` float32 embeddings with the stored BN statistics.

    With `flip`, the embedding of the image plus that of its mirror image (the usual
    flip-averaged test embedding of face verification); scores are cosines, so the sum is as
    good as the mean.
    """
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    out = model.apply(variables, images, train=False, embed_only=True)["embedding"]
    if flip:
        mirrored = model.apply(variables, images[:, :, ::-1, :], train=False, embed_only=True)
        out = out + mirrored["embedding"]
    return out
