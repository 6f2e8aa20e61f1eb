"""Mesh construction, partition rules and host-local -> global batches (8 fake CPU devices)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from grefel_jax import sharding

needs_8 = pytest.mark.skipif(
    jax.device_count() < 8, reason="run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
)


@needs_8
@pytest.mark.parametrize(
    "config, shape", [({"data": -1, "fsdp": 1}, (8, 1)), ({"data": 2, "fsdp": -1}, (2, 4))]
)
def test_make_mesh(config, shape):
    mesh = sharding.make_mesh(config)
    assert tuple(mesh.shape.values()) == shape
    assert mesh.axis_names == ("data", "fsdp")


@needs_8
def test_make_mesh_rejects_bad_sizes():
    with pytest.raises(ValueError, match="config.mesh"):
        sharding.make_mesh({"data": 3, "fsdp": 2})
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh({"data": -1, "fsdp": -1})


def test_fsdp_rule():
    # Large: the largest dimension divisible by the fsdp size is split.
    assert sharding.fsdp_spec((3, 3, 64, 256), 4, 1000) == P(None, None, None, "fsdp")
    assert sharding.fsdp_spec((256, 6), 4, 1000) == P("fsdp", None)
    # Small, or nothing divisible, or no fsdp axis: replicated.
    assert sharding.fsdp_spec((7, 7), 4, 10) == P()
    assert sharding.fsdp_spec((64,), 4, 1000) == P()
    assert sharding.fsdp_spec((1024, 1024), 1, 10) == P()


@needs_8
def test_param_shardings_and_global_batch():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
    tree = {
        "big": jax.ShapeDtypeStruct((128, 256), np.float32),
        "small": jax.ShapeDtypeStruct((3,), np.float32),
    }
    shardings = sharding.param_shardings(tree, mesh, fsdp_min_size=1000)
    assert shardings["big"].spec == P(None, "fsdp")
    assert shardings["small"].spec == P()

    local = {"image": np.arange(16 * 2, dtype=np.float32).reshape(16, 2), "label": np.arange(16)}
    batch = sharding.host_local_to_global(local, mesh)
    assert batch["image"].shape == (16, 2)
    assert batch["image"].sharding.spec == P(("data", "fsdp"))
    # Every device holds 2 consecutive examples; the values are the host's, in order.
    assert {s.data.shape for s in batch["image"].addressable_shards} == {(2, 2)}
    np.testing.assert_array_equal(np.asarray(batch["label"]), local["label"])


@needs_8
def test_check_batch_size():
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    assert sharding.check_batch_size(16, mesh) == 16
    with pytest.raises(ValueError, match="config.batch_size=12"):
        sharding.check_batch_size(12, mesh)
