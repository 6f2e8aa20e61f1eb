"""Test helper: trains a GReFEL head for a few Adam steps over frozen backbone features, so
that prediction tests have a model whose classes mean something (cheap to compile)."""

from __future__ import annotations

import jax
import numpy as np
import optax

from grefel_jax import preprocess
from grefel_jax.models import GReFEL
from grefel_jax.models.heads import GReFELHead


def train_head(model_config, variables, images, labels, image_size: int, steps: int):
    """Adam steps on the head; returns (variables with the trained head as numpy, losses).

    Args:
      images: (N, H, W, 3) uint8 faces, fed as in evaluation at `image_size`.
      labels: (N,) int32.
    """
    model = GReFEL(model_config)
    batch = np.stack([preprocess.preprocess_eval_image(x, image_size) for x in images])
    features = jax.jit(lambda v, x: model.apply(v, x, train=False, features_only=True))
    embedding = features(variables, batch)["embedding"]
    head = GReFELHead(model_config.head)
    tx = optax.adam(1e-2)

    def loss_fn(params, stats, rng):
        out, updates = head.apply(
            {"params": params, "batch_stats": stats},
            embedding,
            train=True,
            rngs={"dropout": rng},
            mutable=["batch_stats"],
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(out["logits"], labels).mean()
        return loss, updates["batch_stats"]

    @jax.jit
    def step(params, stats, opt_state, rng):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    params, stats = variables["params"]["head"], variables["batch_stats"]["head"]
    opt_state = tx.init(params)
    losses = []
    for i in range(steps):
        params, stats, opt_state, loss = step(params, stats, opt_state, jax.random.key(i))
        losses.append(float(loss))
    trained = jax.tree.map(np.asarray, variables)
    trained["params"]["head"] = jax.tree.map(np.asarray, params)
    trained["batch_stats"]["head"] = jax.tree.map(np.asarray, stats)
    return trained, losses
