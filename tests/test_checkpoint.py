"""Inference checkpoints, init_from merging, and training checkpoints (keep-N/best, resharding)."""

from __future__ import annotations

import json
import socket

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from grefel_jax import checkpoints as ckpt_lib
from grefel_jax import sharding
from grefel_jax.models import make_model_config

needs_8 = pytest.mark.skipif(
    jax.device_count() < 8, reason="run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
)


@pytest.fixture(scope="module")
def tiny():
    """(model_config, random variables with the model's exact shapes)."""
    config = make_model_config("tiny", num_classes=7, backbone_overrides={"image_size": 64})
    shapes = ckpt_lib.expected_variable_shapes(config)
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes)
    return config, variables


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_inference_round_trip(tiny, tmp_path):
    config, variables = tiny
    ckpt_lib.save_inference_checkpoint(tmp_path / "ckpt", variables, config, {"source": "test"})
    loaded, loaded_config, metadata = ckpt_lib.load_inference_checkpoint(tmp_path / "ckpt")
    assert loaded_config == config
    assert_trees_equal(loaded, variables)
    assert metadata["source"] == str(tmp_path / "ckpt")
    with pytest.raises(ckpt_lib.CheckpointError, match="not empty"):
        ckpt_lib.save_inference_checkpoint(tmp_path / "ckpt", variables, config)


def test_relative_paths_work(tiny, tmp_path, monkeypatch):
    """Orbax refuses relative paths; users type them (`--workdir runs/demo`)."""
    config, variables = tiny
    monkeypatch.chdir(tmp_path)
    ckpt_lib.save_inference_checkpoint("relative/ckpt", variables, config)
    loaded, _, _ = ckpt_lib.load_inference_checkpoint("relative/ckpt")
    assert_trees_equal(loaded, variables)


def test_clear_errors(tiny, tmp_path):
    config, variables = tiny
    with pytest.raises(ckpt_lib.CheckpointError, match="no such file"):
        ckpt_lib.load_inference_checkpoint(tmp_path / "missing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "weights.pth").write_bytes(b"x")
    with pytest.raises(ckpt_lib.CheckpointError, match="foreign.*not a grefel_jax checkpoint"):
        ckpt_lib.load_inference_checkpoint(tmp_path / "foreign")
    # Weights of a 7-class model under an 8-class config: the head shapes disagree.
    eight = make_model_config("tiny", num_classes=8, backbone_overrides={"image_size": 64})
    ckpt_lib.save_inference_checkpoint(tmp_path / "wrong", variables, eight)
    with pytest.raises(ckpt_lib.CheckpointError, match=r"(?s)wrong.*head.*shape"):
        ckpt_lib.load_inference_checkpoint(tmp_path / "wrong")


def test_partial_checkpoint_merges_into_fresh_variables(tiny, tmp_path):
    config, variables = tiny
    pretrained = jax.tree.map(lambda x: x + 1.0, variables)
    partial = {
        "params": {"ir_back": pretrained["params"]["ir_back"]},
        "batch_stats": {"ir_back": pretrained["batch_stats"]["ir_back"]},
    }
    ckpt_lib.save_inference_checkpoint(tmp_path / "ir50", partial, config)
    # A partial checkpoint passes the shape check: only what it holds is checked.
    ckpt_lib.load_inference_checkpoint(tmp_path / "ir50")
    merged, modules = ckpt_lib.merge_pretrained(variables, tmp_path / "ir50")
    assert modules == ["ir_back"]
    assert_trees_equal(merged["params"]["ir_back"], partial["params"]["ir_back"])
    assert_trees_equal(merged["batch_stats"]["ir_back"], partial["batch_stats"]["ir_back"])
    assert_trees_equal(merged["params"]["head"], variables["params"]["head"])
    assert_trees_equal(merged["params"]["face_landback"], variables["params"]["face_landback"])

    bad = {
        "params": {
            "head": jax.tree.map(lambda x: np.zeros(x.shape + (2,)), partial["params"]["ir_back"])
        },
        "batch_stats": {},
    }
    ckpt_lib.save_inference_checkpoint(tmp_path / "bad", bad, config)
    with pytest.raises(ckpt_lib.CheckpointError, match="init_from=.*bad"):
        ckpt_lib.merge_pretrained(variables, tmp_path / "bad")


def toy_state(mesh, value):
    """model/train trees with an FSDP-sharded matrix, as the trainer saves them."""
    big = NamedSharding(mesh, P(None, "fsdp"))
    model = {
        "params": {"w": jax.device_put(jnp.full((4, 8), value), big)},
        "batch_stats": {"mean": jnp.full((3,), value)},
        "ema_params": {"w": jax.device_put(jnp.full((4, 8), -value), big)},
    }
    train = {
        "step": jnp.array(int(value), jnp.int32),
        "opt_state": {"mu": jnp.full((4, 8), 0.5 * value)},
        "rng": jnp.zeros((2,), jnp.uint32),
    }
    return model, train


@needs_8
def test_train_checkpoints_keep_best_and_reshard(tiny, tmp_path):
    config, _ = tiny
    record = ckpt_lib.ModelRecord(config, class_names=tuple("abcdefg"), dataset="toy/1")
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    checkpointer = ckpt_lib.TrainCheckpointer(tmp_path, keep=2, best_metric="accuracy")
    accuracies = {1: 0.2, 2: 0.9, 3: 0.5, 4: 0.4, 5: None}
    for step, accuracy in accuracies.items():
        model, train = toy_state(mesh, float(step))
        metrics = None if accuracy is None else {"accuracy": accuracy}
        checkpointer.save(step, model, train, record, metrics=metrics, force=True)
    checkpointer.close()
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [2, 4, 5]  # the last two and the best

    # A workdir gives the best step's EMA weights and the record saved with it.
    variables, loaded_config, metadata = ckpt_lib.load_inference_checkpoint(
        tmp_path, check_shapes=False
    )
    assert metadata["step"] == 2 and metadata["used_ema"] and loaded_config == config
    assert metadata["class_names"] == tuple("abcdefg") and metadata["dataset"] == "toy/1"
    assert metadata["preprocessing"]["image_size"] == 64
    np.testing.assert_array_equal(variables["params"]["w"], -2.0)

    # Resume the latest step onto other device layouts.
    for target_mesh in (
        sharding.make_mesh({"data": 8, "fsdp": 1}),
        sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1]),
    ):
        abstract = _abstract(target_mesh)
        checkpointer = ckpt_lib.TrainCheckpointer(tmp_path, keep=2, best_metric="accuracy")
        restored_model, restored_train, step = checkpointer.restore(*abstract)
        checkpointer.close()
        np.testing.assert_array_equal(np.asarray(restored_model["params"]["w"]), 5.0)
        assert restored_model["params"]["w"].sharding.mesh.devices.size == target_mesh.devices.size
        assert int(restored_train["step"]) == 5 and step == 5


def _abstract(mesh):
    model, train = toy_state(mesh, 0.0)
    replicated = NamedSharding(mesh, P())
    return jax.tree.map(
        lambda x, s=replicated: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), (model, train)
    )


def _corrupt(step_dir):
    """Truncates every array file of a saved step (what a crash or a bad disk leaves)."""
    damaged = 0
    for f in (step_dir / "model").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"\0" * 7)
            damaged += 1
    assert damaged


def test_resume_skips_a_corrupt_newest_checkpoint(tiny, tmp_path, caplog):
    config, _ = tiny
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1])
    checkpointer = ckpt_lib.TrainCheckpointer(tmp_path, keep=3, best_metric=None)
    for step in (1, 2, 3):
        checkpointer.save(step, *toy_state(mesh, float(step)), ckpt_lib.ModelRecord(config))
    checkpointer.close()
    _corrupt(tmp_path / "checkpoints" / "3")
    checkpointer = ckpt_lib.TrainCheckpointer(tmp_path, keep=3, best_metric=None)
    with caplog.at_level("WARNING"):
        model, train, step = checkpointer.restore(*_abstract(mesh))
    checkpointer.close()
    assert step == 2 and int(train["step"]) == 2
    np.testing.assert_array_equal(np.asarray(model["params"]["w"]), 2.0)
    assert any("step 3" in r.getMessage() for r in caplog.records)
    # Inference on the workdir also falls back to a readable step.
    _, _, metadata = ckpt_lib.load_inference_checkpoint(tmp_path, check_shapes=False)
    assert metadata["step"] == 2
    for step in (1, 2):
        _corrupt(tmp_path / "checkpoints" / str(step))
    checkpointer = ckpt_lib.TrainCheckpointer(tmp_path, keep=3, best_metric=None)
    with pytest.raises(ckpt_lib.CheckpointError, match="no checkpoint could be read"):
        checkpointer.restore(*_abstract(mesh))
    checkpointer.close()
    with pytest.raises(ckpt_lib.CheckpointError, match="no readable checkpoint"):
        ckpt_lib.load_inference_checkpoint(tmp_path, check_shapes=False)


def test_workdir_lock_refuses_a_second_run(tmp_path, monkeypatch):
    with ckpt_lib.WorkdirLock(tmp_path):
        with pytest.raises(ckpt_lib.WorkdirBusyError, match=r"in use by another run.*run\.lock"):
            with ckpt_lib.WorkdirLock(tmp_path):
                pass
    # Released at exit; a lock whose process is gone is taken over.
    stale = {"host": socket.gethostname(), "pid": 999_999_999, "started": "earlier"}
    (tmp_path / "run.lock").write_text(json.dumps(stale))
    with ckpt_lib.WorkdirLock(tmp_path):
        assert (tmp_path / "run.lock").exists()
    assert not (tmp_path / "run.lock").exists()
