"""Inference checkpoints, init_from merging, and training checkpoints (keep-N/best, resharding)."""

from __future__ import annotations

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from grefel_jax import checkpoint as ckpt_lib
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
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    checkpointer = ckpt_lib.TrainCheckpointer(tmp_path, keep=2, best_metric="accuracy")
    iterator = iter(grain.MapDataset.range(1000).to_iter_dataset())
    accuracies = {1: 0.2, 2: 0.9, 3: 0.5, 4: 0.4, 5: None}
    for step, accuracy in accuracies.items():
        next(iterator)
        model, train = toy_state(mesh, float(step))
        metrics = None if accuracy is None else {"accuracy": accuracy}
        checkpointer.save(
            step, model, train, config, data_iterator=iterator, metrics=metrics, force=True
        )
    checkpointer.close()
    kept = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [2, 4, 5]  # the last two and the best

    # A workdir gives the best step's EMA weights.
    variables, loaded_config, metadata = ckpt_lib.load_inference_checkpoint(
        tmp_path, check_shapes=False
    )
    assert metadata["step"] == 2 and metadata["used_ema"] and loaded_config == config
    np.testing.assert_array_equal(variables["params"]["w"], -2.0)

    # Resume the latest step onto other device layouts, iterator included.
    for target_mesh in (
        sharding.make_mesh({"data": 8, "fsdp": 1}),
        sharding.make_mesh({"data": 1, "fsdp": 1}, devices=jax.devices()[:1]),
    ):
        model, train = toy_state(target_mesh, 0.0)
        replicated = NamedSharding(target_mesh, P())
        abstract = jax.tree.map(
            lambda x, s=replicated: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            (model, train),
        )
        restored_iter = iter(grain.MapDataset.range(1000).to_iter_dataset())
        checkpointer = ckpt_lib.TrainCheckpointer(tmp_path, keep=2, best_metric="accuracy")
        restored_model, restored_train = checkpointer.restore(
            *abstract, data_iterator=restored_iter
        )
        checkpointer.close()
        np.testing.assert_array_equal(np.asarray(restored_model["params"]["w"]), 5.0)
        assert restored_model["params"]["w"].sharding.mesh.devices.size == target_mesh.devices.size
        assert int(restored_train["step"]) == 5
        assert next(restored_iter) == 5  # the data continue where they stopped
