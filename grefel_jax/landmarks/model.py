"""The landmark network being pretrained, and its pure train / predict functions.

`LandmarkNet` is GReFEL's landmark branch plus the GDC head: the same `x[:, ::2, ::2]`
sub-sampling of the model-size input, the same MobileFaceNet under the same name
(`face_landback`), so its variables load into GReFEL with `--config.init_from` (the head,
`face_landback/output_layer`, is left out there, as POSTER++ leaves it out).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from grefel_jax import optim
from grefel_jax.landmarks import losses
from grefel_jax.models import names
from grefel_jax.models.config import BackboneConfig
from grefel_jax.models.layers import Dtype, subsample_by_two
from grefel_jax.models.mobilefacenet import MobileFaceNet
from grefel_jax.train_state import TrainState

PyTree = Any


class LandmarkNet(nn.Module):
    """`images (B, S, S, 3)` ImageNet-normalized -> points `(B, N, 2)` float32 in crop units.

    Attributes:
      backbone: the GReFEL backbone sizes (image_size S, dims[0] = MobileFaceNet width,
        mfn_units).
      num_points: N.
      dtype: compute dtype.
    """

    backbone: BackboneConfig
    num_points: int
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> jax.Array:
        cfg = self.backbone
        x = subsample_by_two(images.astype(self.dtype))
        net = MobileFaceNet(
            cfg.dims[0], cfg.mfn_units, self.dtype, self.num_points, name=names.LANDMARK_NET
        )
        *_, points = net(x, train)
        return points.astype(jnp.float32)


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
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(params),
        ema_params=None,
        rng=jax.random.key_data(rng),
    )


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


def predict(variables: PyTree, images: jax.Array, *, model: LandmarkNet) -> jax.Array:
    """Points `(B, N, 2)` in crop units with the stored BatchNorm statistics."""
    return model.apply(variables, images, train=False)
