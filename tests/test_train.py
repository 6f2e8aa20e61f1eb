"""Training: sharded vs single-device steps, SAM in the real step, frozen parameters, resume,
SIGTERM, config errors. Tiny model on 64x64 generated faces, 8 fake CPU devices."""

from __future__ import annotations

import copy
import functools
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest

from grefel_jax import optim, sharding, train
from grefel_jax.data import pipeline

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from configs import base  # noqa: E402

needs_8 = pytest.mark.skipif(
    jax.device_count() < 8, reason="run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
)


def tiny_config(data_config):
    """A config small enough to compile in seconds: tiny variant, 64x64, one IR unit each."""
    config = base.get_base_config()
    config.model.variant = "tiny"
    config.model.backbone.image_size = 64
    config.model.backbone.ir_units = (1, 1, 1)
    config.model.backbone.vit_depth = 1
    config.data = copy.deepcopy(data_config)
    config.mode = "train"
    config.batch_size = 16
    config.eval_batch_size = 16
    config.num_train_steps = 20
    config.log_every_steps = 5
    config.checkpoint_every_steps = 10
    config.optim.sam = False
    config.optim.lr_backbone = config.optim.lr_head = config.optim.lr_anchors = 1e-3
    config.optim.schedule = "constant"
    config.mesh.fsdp_min_size = 256
    return config


@pytest.fixture(scope="module")
def step_setup(tiny_faces_config):
    """Model, SGD+SAM optimizer, a fresh state and one batch: shared by the step tests."""
    config = tiny_config(tiny_faces_config)
    config.optim.name = "sgd"
    config.optim.momentum = 0.0
    # Without DropPath/dropout the sharded and single-device steps agree to ~1e-6; with them
    # (rate 0.5 here) a few ViT parameters differ by ~1e-3 after one step, an amplified
    # float32 reduction-order effect (the dropout bits themselves are sharding-invariant).
    config.model.backbone.drop_path_max = 0.0
    config.model.head.mlp_dropout = 0.0
    # Gradients at init are large (global norm in the hundreds), so a small SGD rate.
    config.optim.lr_backbone = config.optim.lr_head = config.optim.lr_anchors = 1e-3
    model_config = train.model_config_from(config, num_classes=7)
    model = train.make_model(config, model_config)
    abstract = jax.eval_shape(
        lambda: train.init_state(jax.random.key(0), model=model, tx=optax.identity(), use_ema=False)
    )
    labels = optim.param_labels(abstract.params, freeze_image_backbone=False)
    trainable = optim.trainable_mask(labels)
    tx, _ = optim.make_optimizer(config.optim, labels, steps_per_epoch=10, total_steps=20)
    state = jax.jit(functools.partial(train.init_state, model=model, tx=tx, use_ema=True))(
        jax.random.key(0)
    )
    step_fn = functools.partial(
        train.train_step,
        model=model,
        tx=tx,
        trainable=trainable,
        total_steps=20,
        class_weights=None,
        loss_config=train.loss_kwargs(config),
        # SAM is left to the resume test: its ascent step normalises by the gradient norm,
        # which amplifies float32 reduction-order differences beyond a tight tolerance.
        sam_rho=0.0,
        sam_adaptive=False,
        ema_decay=0.9,
    )
    batch = next(
        pipeline.make_train_iterator(config.data, image_size=64, global_batch_size=16, seed=0)
    )
    batch = {"image": batch["image"], "label": batch["label"]}
    return dict(config=config, state=jax.device_get(state), step_fn=step_fn, batch=batch)


def sharded_step(setup, mesh):
    state_sh = sharding.param_shardings(setup["state"], mesh, fsdp_min_size=256)
    batch_sh = {k: sharding.batch_sharding(mesh) for k in setup["batch"]}
    step = jax.jit(
        setup["step_fn"],
        in_shardings=(state_sh, batch_sh),
        out_shardings=(state_sh, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
    state = jax.device_put(setup["state"], state_sh)
    return step, state, sharding.host_local_to_global(setup["batch"], mesh)


@needs_8
def test_sharded_step_equals_single_device_step(step_setup):
    single = jax.jit(step_setup["step_fn"])
    state_1, metrics_1 = single(
        jax.device_put(step_setup["state"], jax.devices()[0]), step_setup["batch"]
    )
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    step, state, batch = sharded_step(step_setup, mesh)
    # Some parameters really are split over the fsdp axis.
    specs = {x.sharding.spec for x in jax.tree.leaves(state.params)}
    assert any("fsdp" in str(spec) for spec in specs)
    state_8, metrics_8 = step(state, batch)
    # Equal up to float32 reduction order (batch statistics and gradients are all-reduced).
    np.testing.assert_allclose(metrics_8["loss"], metrics_1["loss"], rtol=1e-4)
    for a, b in zip(jax.tree.leaves(state_8.params), jax.tree.leaves(state_1.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@needs_8
def test_steps_on_mesh_lower_the_loss_and_keep_frozen_params(step_setup):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    step, state, batch = sharded_step(step_setup, mesh)
    before = step_setup["state"]
    losses = []
    for _ in range(6):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0] - 0.05, losses
    after = jax.device_get(state)
    # The landmark network is frozen: parameters and BN statistics unchanged...
    for a, b in zip(
        jax.tree.leaves(after.params["face_landback"]),
        jax.tree.leaves(before.params["face_landback"]),
    ):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(
        jax.tree.leaves(after.batch_stats["face_landback"]),
        jax.tree.leaves(before.batch_stats["face_landback"]),
    ):
        np.testing.assert_array_equal(a, b)
    # ... while the image backbone, the head and the EMA move.
    changed = lambda x, y: any(
        not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y))
    )
    assert changed(after.params["ir_back"], before.params["ir_back"])
    assert changed(after.params["head"], before.params["head"])
    assert changed(after.ema_params, before.ema_params)
    assert int(after.step) == 6


@needs_8
def test_resume_and_sigterm_match_an_uninterrupted_run(tiny_faces_config, tmp_path):
    config = tiny_config(tiny_faces_config)
    config.mesh.data, config.mesh.fsdp = 4, 2
    config.optim.ema_decay = 0.99  # EMA parameters go through the checkpoints too
    config.checkpoint_every_steps = 15  # so that the checkpoint at step 10 is SIGTERM's

    def run(workdir, stop_at=None):
        labels = {}

        def callback(step, state, batch):
            labels[step] = np.asarray(batch["label"]).copy()
            if step == stop_at:
                os.kill(os.getpid(), signal.SIGTERM)

        state = train.train_and_evaluate(
            config, str(workdir), evaluate_during_training=False, step_callback=callback
        )
        return jax.device_get(state), labels

    straight, straight_labels = run(tmp_path / "straight")
    interrupted, first_labels = run(tmp_path / "resumed", stop_at=10)
    # SIGTERM at step 10: the loop saved that step and returned.
    assert int(interrupted.step) == 10 and max(first_labels) == 10
    assert (tmp_path / "resumed" / "checkpoints" / "10").is_dir()
    resumed, second_labels = run(tmp_path / "resumed")
    assert min(second_labels) == 11 and int(resumed.step) == 20
    for step in range(1, 21):
        labels = first_labels[step] if step <= 10 else second_labels[step]
        np.testing.assert_array_equal(labels, straight_labels[step], err_msg=f"step {step}")
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(resumed.ema_params), jax.tree.leaves(straight.ema_params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(resumed.opt_state), jax.tree.leaves(straight.opt_state)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert (tmp_path / "straight" / "metrics.jsonl").exists()
    assert (tmp_path / "straight" / "config.json").exists()


def run_main(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "grefel_jax.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


@pytest.mark.parametrize(
    "override, name",
    [
        ("--config.optim.lr_bakbone=1e-3", "lr_bakbone"),
        ("--config.model.head.anchorz=3", "anchorz"),
    ],
)
def test_unknown_config_keys_fail_with_their_name(tmp_path, override, name):
    result = run_main("--config", "configs/demo.py", "--workdir", str(tmp_path), override)
    assert result.returncode != 0
    assert name in result.stderr


def test_unprepared_dataset_fails_fast_with_instructions(tmp_path):
    result = run_main(
        "--config",
        "configs/rafdb.py",
        "--workdir",
        str(tmp_path / "run"),
        f"--config.data.data_dir={tmp_path / 'empty'}",
    )
    assert result.returncode == 2
    assert "python -m grefel_jax.data.prepare --dataset raf_db" in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
