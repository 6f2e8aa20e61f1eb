"""Training: sharded vs single-device steps of the full head, frozen parameters, resume,
SIGTERM, corrupt checkpoints, the workdir lock, config errors. Tiny model on 64x64 generated
faces, 8 fake CPU devices."""

from __future__ import annotations

import copy
import logging
import os
import pathlib
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from grefel_jax import checkpoints, sharding, train
from grefel_jax.configs import base
from grefel_jax.data import pipeline, source
from grefel_jax.models import names
from grefel_jax.trainer import build_trainer

REPO = pathlib.Path(__file__).resolve().parents[1]

needs_8 = pytest.mark.skipif(
    jax.device_count() < 8, reason="run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
)


def tiny_config(data_config):
    """The full default head at tiny size on a backbone that compiles in seconds."""
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


def sam_sgd_config(data_config):
    """`tiny_config` with SGD + SAM, EMA, DropPath and dropout all on, 20 steps. The
    sharded-vs-single fixture and the resume test share it (and its (2, 4) mesh), so the
    persistent compilation cache serves the second one's train step."""
    config = tiny_config(data_config)
    config.optim.name = "sgd"
    config.optim.momentum = 0.0
    config.optim.sam = True
    config.optim.sam_rho = 0.05
    config.optim.ema_decay = 0.9
    config.model.backbone.drop_path_max = 0.5  # DropPath and the MLP's dropout 0.5 both on
    config.mesh.data, config.mesh.fsdp = 2, 4
    return config


# --- sharded == single device -------------------------------------------------------------
#
# Tolerances. Both runs compute in float32 and differ only in the order of reductions (batch
# statistics, the loss mean and the gradients are all-reduced over the 8 shards). Each such
# sum of n terms carries a relative rounding error of at most ~n * 2^-24 and typically
# ~sqrt(n) * 2^-24; the model's gradient against a float64 run of the same step is off by
# ~5e-6 (relative, global norm; docs/numerics.md §2), so two float32 orders are expected to agree
# to about that. One SGD step moves the parameters by lr * g, so the relative difference of
# all updates together, ||u_8 - u_1|| / ||u_1||, is the relative difference of the gradients:
# we allow 1e-4 (10x the measured float32 error). After 20 steps the rounding differences
# have been fed through 20 nonlinear updates and grow: 1e-3 of the distance travelled.
#
# Per parameter tensor the differences are larger where a gradient is a small difference of
# large terms: at step 1 the classifier's last layer is zero, so every other gradient comes
# from SAM's ascent step through that layer and from a batch sum of (p - y) whose terms
# nearly cancel; up to 5.5e-4 was measured (SE block of the ViT). A per-tensor bound of 1e-2
# leaves room for that and still fails the ill-conditioned model of issue 9 (8 % on
# VIT/pos_embed after one step). Attention key biases are left out of the per-tensor bound
# (their exact gradient is zero, see the test).
ONE_STEP_RTOL = 1e-4
TWENTY_STEP_RTOL = 1e-3
PER_TENSOR_RTOL = 1e-2


@pytest.fixture(scope="module")
def sharded_vs_single(tiny_faces_config):
    """20 steps of SGD + SAM with dropout and DropPath, on 1 device and on a (2, 4) mesh,
    from the same init on the same 20 batches; the states after step 1 and step 20. The
    (2, 4) run is also the uninterrupted reference of the resume test: the training loop
    builds the same step (`build_trainer`) on the same mesh, init seed and stream.

    The suite's slowest fixture, by nature: it compiles the SAM train step twice (one device
    and eight: different programs) and runs 40 steps; every other training test of this file
    reuses what it computed or the compiled programs it left in the persistent cache."""
    config = sam_sgd_config(tiny_faces_config)
    data = source.open_training_set(config.data)
    stream = pipeline.make_train_iterator(config.data, image_size=64, global_batch_size=16, seed=0)
    batches = [next(stream) for _ in range(20)]
    runs = {}
    for name, mesh in [
        ("single", sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])),
        ("sharded", sharding.make_mesh(config.mesh)),  # (2, 4), as the resume test
    ]:
        trainer = build_trainer(config, data, mesh)
        state = trainer.init_state(jax.random.key(0))
        initial = jax.device_get(state)
        specs = {str(x.sharding.spec) for x in jax.tree.leaves(state.params)}
        after = {}
        losses = []
        for step, batch in enumerate(batches, 1):
            state, metrics = trainer.step(state, trainer.global_batch(batch))
            losses.append(float(metrics["loss"]))
            if step in (1, 20):
                after[step] = jax.device_get(state)
        runs[name] = dict(initial=initial, after=after, losses=losses, specs=specs)
    runs["labels"] = {step: np.asarray(b["label"]) for step, b in enumerate(batches, 1)}
    return runs


def _update_differences(initial, a, b):
    """Relative difference of the updates a - p0 and b - p0: (over all tensors together,
    {path: per tensor}) for the tensors that moved.

    Per tensor, the difference that float32 storage alone can make is subtracted first: an
    update of a few ULPs of its parameters (a tensor whose gradient is nearly zero) is
    quantised, so one rounding step more or less is a large relative change that says nothing
    about the computation (measured: 1/27 on `attn1/qkv/kernel` with jax 0.12). The floor is
    one ULP per element, sqrt(sum(spacing(p)^2))."""
    per_tensor, total_diff, total_norm = {}, 0.0, 0.0
    flat_0 = jax.tree_util.tree_flatten_with_path(initial)[0]
    for (path, p0), pa, pb in zip(flat_0, jax.tree.leaves(a), jax.tree.leaves(b)):
        ua = np.asarray(pa, np.float64) - np.asarray(p0, np.float64)
        ub = np.asarray(pb, np.float64) - np.asarray(p0, np.float64)
        norm = np.linalg.norm(ua)
        diff = np.linalg.norm(ua - ub)
        total_diff += diff**2
        total_norm += norm**2
        if norm > 0:
            ulp_floor = np.linalg.norm(np.spacing(np.abs(np.asarray(pa, np.float32))))
            excess = max(diff - ulp_floor, 0.0)
            per_tensor[jax.tree_util.keystr(path)] = float(excess / norm)
    return float(np.sqrt(total_diff / total_norm)), per_tensor


@needs_8
def test_sharded_step_equals_single_device_step(sharded_vs_single):
    single, sharded = sharded_vs_single["single"], sharded_vs_single["sharded"]
    assert any("fsdp" in spec for spec in sharded["specs"])  # some params really are split
    np.testing.assert_allclose(sharded["losses"][0], single["losses"][0], rtol=1e-5)
    for step, rtol in [(1, ONE_STEP_RTOL), (20, TWENTY_STEP_RTOL)]:
        total, per_tensor = _update_differences(
            single["initial"].params, single["after"][step].params, sharded["after"][step].params
        )
        assert total < rtol, f"step {step}: all parameters {total:.2e}"
        # Attention key biases add the same amount to every logit of a query, which softmax
        # cancels: their gradient is zero in exact arithmetic and pure rounding in float32.
        per_tensor = {k: v for k, v in per_tensor.items() if not k.endswith("['key']['bias']")}
        worst = max(per_tensor, key=per_tensor.get)
        assert per_tensor[worst] < PER_TENSOR_RTOL, f"step {step} {worst}: {per_tensor[worst]}"
        # Running statistics: many are near zero (means after a normalisation), so absolute.
        for a, b in zip(
            jax.tree.leaves(single["after"][step].batch_stats),
            jax.tree.leaves(sharded["after"][step].batch_stats),
        ):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-5)
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-3)


@needs_8
def test_dropout_bits_do_not_depend_on_the_sharding():
    """The masks of a step are drawn for the global batch: same bits however it is split."""
    key = jax.random.fold_in(jax.random.key(3), 7)
    draw = lambda k: jax.random.bernoulli(k, 0.5, (16, 8, 8, 32))
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    whole = jax.jit(draw)(key)
    split = jax.jit(draw, out_shardings=sharding.batch_sharding(mesh))(key)
    assert len(split.sharding.device_set) == 8
    np.testing.assert_array_equal(np.asarray(split), np.asarray(whole))


@needs_8
def test_training_moves_what_it_should_and_keeps_frozen_params(sharded_vs_single):
    run = sharded_vs_single["sharded"]
    before, after = run["initial"], run["after"][20]
    # (No check that the total loss falls: over these 20 steps the trust ramp tau = t / 20
    # switches the anchor and center terms on, so the total rises by construction.)
    # The landmark network is frozen: parameters and BN statistics unchanged...
    for tree in ("params", "batch_stats"):
        for a, b in zip(
            jax.tree.leaves(getattr(after, tree)[names.LANDMARK_NET]),
            jax.tree.leaves(getattr(before, tree)[names.LANDMARK_NET]),
        ):
            np.testing.assert_array_equal(a, b)

    # ... while the image backbone, the head, the anchors and the EMA move.
    def changed(x, y):
        return any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)))

    assert changed(after.params[names.IMAGE_BACKBONE], before.params[names.IMAGE_BACKBONE])
    assert changed(
        after.params[names.HEAD][names.ANCHORS], before.params[names.HEAD][names.ANCHORS]
    )
    assert changed(after.params[names.HEAD], before.params[names.HEAD])
    assert changed(after.ema_params, before.ema_params)
    assert int(after.step) == 20


# --- resume, SIGTERM, corrupt checkpoints, lock -------------------------------------------


def _run(config, workdir, stop_at=None):
    """train_and_evaluate with a SIGTERM after step `stop_at`; (state, labels by step)."""
    labels = {}

    def callback(step, state, batch):
        labels[step] = np.asarray(batch["label"]).copy()
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)

    state = train.train_and_evaluate(
        config, str(workdir), evaluate_during_training=False, step_callback=callback
    )
    return jax.device_get(state), labels


def _assert_trees_close(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


@needs_8
def test_resume_and_sigterm_match_an_uninterrupted_run(
    sharded_vs_single, tiny_faces_config, tmp_path, caplog
):
    """The loop stopped by SIGTERM at step 13 and resumed ends where 20 uninterrupted steps
    end (the sharded run of the `sharded_vs_single` fixture: same config, mesh, seed and
    batches), having seen the same labels at every step."""
    config = sam_sgd_config(tiny_faces_config)  # SAM, EMA and dropout go through resume too
    config.checkpoint_every_steps = 9  # so that the checkpoint at step 13 is SIGTERM's
    straight = sharded_vs_single["sharded"]["after"][20]
    straight_labels = sharded_vs_single["labels"]

    interrupted, first_labels = _run(config, tmp_path / "resumed", stop_at=13)
    # SIGTERM at step 13: the loop saved that step and returned.
    assert int(interrupted.step) == 13 and max(first_labels) == 13
    assert (tmp_path / "resumed" / "checkpoints" / "13").is_dir()
    resumed, second_labels = _run(config, tmp_path / "resumed")
    assert min(second_labels) == 14 and int(resumed.step) == 20
    for step in range(1, 21):
        labels = first_labels[step] if step <= 13 else second_labels[step]
        np.testing.assert_array_equal(labels, straight_labels[step], err_msg=f"step {step}")
    _assert_trees_close(resumed.params, straight.params)
    _assert_trees_close(resumed.ema_params, straight.ema_params)
    _assert_trees_close(resumed.opt_state, straight.opt_state)
    assert (tmp_path / "resumed" / "metrics.jsonl").exists()
    assert (tmp_path / "resumed" / "config.json").exists()

    # A corrupt newest checkpoint (here: its arrays truncated, as by a crash mid-write):
    # resume starts from the newest readable one and says which step it skipped.
    # (Same step count: a new total would change the trust ramp and cost a compilation.)
    newest = tmp_path / "resumed" / "checkpoints" / "20"
    for path in newest.rglob("*"):
        if path.is_file() and "record" not in path.name and path.suffix != ".json":
            path.write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        again, again_labels = _run(config, tmp_path / "resumed")
    assert "Checkpoint step 20" in caplog.text and "unreadable" in caplog.text
    assert min(again_labels) == 19 and int(again.step) == 20
    _assert_trees_close(again.params, straight.params)
    # The unreadable step was set aside (not deleted) so that step 20 could be saved again.
    assert (tmp_path / "resumed" / "unreadable_checkpoints" / "20").is_dir()
    reader = checkpoints.TrainCheckpointer(tmp_path / "resumed")
    assert reader.latest_step() == 20
    reader.close()


def test_second_run_on_a_busy_workdir_is_refused(tmp_path):
    with checkpoints.WorkdirLock(tmp_path):
        with pytest.raises(checkpoints.WorkdirBusyError, match=str(tmp_path)):
            with checkpoints.WorkdirLock(tmp_path):
                pass
    with checkpoints.WorkdirLock(tmp_path):  # released: usable again
        pass


# --- command-line errors: one line, no traceback --------------------------------------------


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
    "override, message",
    [
        ("--config.optim.lr_backbon=1e-3", "did you mean 'lr_backbone'"),
        ("--config.model.head.num_anchorz=3", "did you mean 'num_anchors'"),
    ],
)
def test_config_typos_fail_in_one_line_with_a_suggestion(tmp_path, override, message):
    result = run_main("--config", "configs/demo.py", "--workdir", str(tmp_path), override)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_unprepared_dataset_fails_fast_with_instructions(tmp_path):
    result = run_main(
        "--config",
        "configs/rafdb.py",
        "--workdir",
        str(tmp_path / "run"),
        f"--config.data.data_dir={tmp_path / 'empty'}",
    )
    assert result.returncode == 2
    assert "python -m grefel_jax.prepare --dataset raf_db" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_busy_workdir_fails_in_one_line(tiny_faces_config, tmp_path):
    with checkpoints.WorkdirLock(tmp_path / "run"):
        result = run_main(
            "--config",
            "configs/demo.py",
            "--workdir",
            str(tmp_path / "run"),
            "--config.data.builder_config=tiny_64",
            f"--config.data.data_dir={tiny_faces_config.data_dir}",
        )
    assert result.returncode == 2
    assert "is in use by another run" in result.stderr and "Traceback" not in result.stderr
