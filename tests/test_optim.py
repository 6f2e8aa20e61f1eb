"""Parameter groups, schedules, frozen parameters, SAM and EMA (no model needed)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from grefel_jax import optim


def fake_params():
    return {
        "face_landback": {"conv": {"kernel": jnp.ones((3, 3))}},
        "ir_back": {"body": {"kernel": jnp.ones((4,))}},
        "VIT": {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros((2,))}},
        "head": {"anchors": jnp.ones((3, 2, 4)), "mlp": {"kernel": jnp.ones((4, 3))}},
    }


def optim_config(**overrides):
    c = ml_collections.ConfigDict(
        dict(
            name="adam",
            lr_backbone=0.1,
            lr_head=0.2,
            lr_anchors=0.3,
            schedule="constant",
            decay_rate=0.98,
            warmup_steps=0,
            min_lr_ratio=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.0,
            momentum=0.9,
            grad_clip_norm=0.0,
        )
    )
    c.update(overrides)
    return c


@pytest.mark.parametrize("freeze_ir", [False, True])
def test_param_labels(freeze_ir):
    labels = optim.param_labels(fake_params(), freeze_image_backbone=freeze_ir)
    assert labels["face_landback"]["conv"]["kernel"] == "frozen"
    assert labels["ir_back"]["body"]["kernel"] == ("frozen" if freeze_ir else "backbone")
    assert labels["VIT"]["dense"]["kernel"] == "backbone"
    assert labels["head"]["anchors"] == "anchors"
    assert labels["head"]["mlp"]["kernel"] == "head"


def test_frozen_params_get_no_update_and_no_state():
    params = fake_params()
    labels = optim.param_labels(params, freeze_image_backbone=True)
    tx, _ = optim.make_optimizer(optim_config(), labels, steps_per_epoch=10, total_steps=100)
    state = tx.init(params)
    # Adam keeps two moments per trainable leaf only: frozen leaves add no state.
    trainable_size = sum(
        p.size
        for p, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels))
        if lab != "frozen"
    )
    state_size = sum(x.size for x in jax.tree.leaves(state) if x.ndim > 0)
    assert state_size == 2 * trainable_size
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    assert float(jnp.abs(updates["face_landback"]["conv"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(updates["ir_back"]["body"]["kernel"]).max()) == 0.0
    # First Adam step moves every trainable leaf by its group's learning rate.
    np.testing.assert_allclose(updates["VIT"]["dense"]["kernel"], -0.1, rtol=1e-4)
    np.testing.assert_allclose(updates["head"]["mlp"]["kernel"], -0.2, rtol=1e-4)
    np.testing.assert_allclose(updates["head"]["anchors"], -0.3, rtol=1e-4)


def test_gradient_clipping_limits_global_norm():
    params = {"VIT": {"w": jnp.zeros((4,))}}
    labels = optim.param_labels(params, freeze_image_backbone=False)
    tx, _ = optim.make_optimizer(
        optim_config(name="sgd", momentum=0.0, grad_clip_norm=1.0),
        labels,
        steps_per_epoch=1,
        total_steps=1,
    )
    updates, _ = tx.update({"VIT": {"w": jnp.full((4,), 10.0)}}, tx.init(params), params)
    # SGD update = -lr * clipped grad; the clipped grad has norm 1.
    np.testing.assert_allclose(float(optax.tree.norm(updates)), 0.1, rtol=1e-5)


def test_exponential_schedule_decays_once_per_epoch():
    schedule = optim.make_schedule(
        1.0, optim_config(schedule="exponential"), steps_per_epoch=10, total_steps=100
    )
    for step in (0, 9, 10, 19, 25, 99):
        np.testing.assert_allclose(float(schedule(step)), 0.98 ** (step // 10), rtol=1e-6)


def test_warmup_cosine_schedule():
    config = optim_config(schedule="cosine", warmup_steps=10, min_lr_ratio=0.1)
    schedule = optim.make_schedule(2.0, config, steps_per_epoch=5, total_steps=110)
    np.testing.assert_allclose(float(schedule(5)), 1.0, rtol=1e-6)  # half-way up the ramp
    np.testing.assert_allclose(float(schedule(10)), 2.0, rtol=1e-6)  # peak
    expected_mid = 2.0 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)))
    np.testing.assert_allclose(float(schedule(60)), expected_mid, rtol=1e-5)
    np.testing.assert_allclose(float(schedule(110)), 0.2, rtol=1e-5)


def test_unknown_names_are_rejected():
    labels = optim.param_labels(fake_params(), freeze_image_backbone=False)
    with pytest.raises(ValueError, match="config.optim.name"):
        optim.make_optimizer(optim_config(name="lamb"), labels, steps_per_epoch=1, total_steps=1)
    with pytest.raises(ValueError, match="config.optim.schedule"):
        optim.make_schedule(1.0, optim_config(schedule="step"), steps_per_epoch=1, total_steps=1)


def quadratic_loss(params):
    """A non-quadratic-symmetric loss so that the perturbed gradient differs from g(w)."""
    w, b = params["w"], params["b"]
    return jnp.sum(jnp.sin(w) * w**2) + jnp.sum(b**4) + jnp.sum(w) * jnp.sum(b)


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_equals_its_two_step_definition(adaptive):
    params = {"w": jnp.array([0.5, -1.0, 2.0]), "b": jnp.array([0.3, -0.7])}
    rho = 0.05

    def grad_fn(p):
        return jax.grad(quadratic_loss)(p), None

    sam_grads, _, first = optim.sam_gradients(grad_fn, params, rho=rho, adaptive=adaptive)

    # The definition, written out with numpy on flat vectors.
    flat_w = np.concatenate([np.asarray(params["b"]), np.asarray(params["w"])])
    g = jax.grad(quadratic_loss)(params)
    flat_g = np.concatenate([np.asarray(g["b"]), np.asarray(g["w"])])
    if adaptive:
        e = rho * flat_w**2 * flat_g / np.linalg.norm(np.abs(flat_w) * flat_g)
    else:
        e = rho * flat_g / np.linalg.norm(flat_g)
    perturbed = {"b": jnp.asarray(flat_w[:2] + e[:2]), "w": jnp.asarray(flat_w[2:] + e[2:])}
    expected = jax.grad(quadratic_loss)(perturbed)
    for key in params:
        np.testing.assert_allclose(first[key], g[key], rtol=1e-6)
        np.testing.assert_allclose(sam_grads[key], expected[key], rtol=1e-5, atol=1e-7)
    # And the perturbation is not a no-op.
    assert not np.allclose(np.asarray(sam_grads["w"]), np.asarray(g["w"]))


def test_sam_leaves_frozen_leaves_alone():
    params = {"frozen": jnp.array([1.0, 2.0]), "live": jnp.array([0.5, -0.5])}
    mask = {"frozen": False, "live": True}
    seen = []

    def grad_fn(p):
        seen.append(p)
        return {"frozen": 2 * p["frozen"], "live": 2 * p["live"] ** 3}, None

    sam_grads, _, _ = optim.sam_gradients(grad_fn, params, rho=0.1, adaptive=False, mask=mask)
    np.testing.assert_array_equal(seen[1]["frozen"], params["frozen"])  # not perturbed
    np.testing.assert_array_equal(sam_grads["frozen"], 0.0)  # and no gradient
    # The ascent step has norm rho over the trainable leaves only.
    np.testing.assert_allclose(np.linalg.norm(seen[1]["live"] - params["live"]), 0.1, rtol=1e-5)


def test_ema_update():
    ema = {"w": jnp.zeros(3)}
    params = {"w": jnp.ones(3)}
    # Warm-up: decay min(0.99, (1 + t) / (10 + t)); at t = 0 that is 0.1.
    out = optim.ema_update(ema, params, 0.99, jnp.array(0))
    np.testing.assert_allclose(out["w"], 0.9, rtol=1e-6)
    out = optim.ema_update(ema, params, 0.99, jnp.array(10_000))
    np.testing.assert_allclose(out["w"], 0.01, rtol=1e-4)
