"""Device mesh, partition rules and host-local -> global arrays.

The mesh has two axes:

* `data`: pure data parallelism (parameters replicated along it);
* `fsdp`: data parallelism whose members also split the large parameters and their optimizer
  state (ZeRO-3 / FSDP): every parameter with at least `fsdp_min_size` elements is sharded
  along its largest dimension that the fsdp size divides; the others are replicated.

The batch is split over both axes, so every device sees `global_batch / num_devices` examples.
Each host feeds only its own share (`global_batch / process_count`) and
`host_local_to_global` assembles the global `jax.Array`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS, FSDP_AXIS = "data", "fsdp"
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)

PyTree = Any


def maybe_initialize_distributed() -> None:
    """Calls `jax.distributed.initialize()` when the environment describes several processes.

    Detected: GKE TPU pods (TPU_WORKER_HOSTNAMES / MEGASCALE), Slurm jobs with more than one
    task, an explicit coordinator (JAX_COORDINATOR_ADDRESS), and GREFEL_DISTRIBUTED=1, which
    `launch/tpu_vm.sh` sets on the hosts of a TPU VM pod slice (there JAX reads the topology
    from the VM's metadata server, which we do not query on every start). A single process does
    nothing. On TPU and Slurm, JAX finds the process count and index itself. Anywhere else
    (e.g. `grefel_jax.local_cluster`, a plain multi-node launcher), JAX_COORDINATOR_ADDRESS
    comes with JAX_NUM_PROCESSES and JAX_PROCESS_ID (docs/multiprocess.md).
    """
    env = os.environ
    multi = (
        env.get("GREFEL_DISTRIBUTED") == "1"
        or "JAX_COORDINATOR_ADDRESS" in env
        or int(env.get("SLURM_NTASKS", "1")) > 1
        or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
        or "MEGASCALE_COORDINATOR_ADDRESS" in env
    )
    if not multi or jax.distributed.is_initialized():
        return
    kwargs = {}
    if "JAX_NUM_PROCESSES" in env or "JAX_PROCESS_ID" in env:
        try:
            kwargs = dict(
                coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                num_processes=int(env["JAX_NUM_PROCESSES"]),
                process_id=int(env["JAX_PROCESS_ID"]),
            )
        except (KeyError, ValueError) as e:
            raise ValueError(
                "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID must be set "
                f"together, the last two as integers (problem: {e})."
            ) from None
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def make_mesh(mesh_config: Mapping[str, int], devices=None) -> Mesh:
    """A (data, fsdp) mesh; one size may be -1 (= all remaining devices).

    Args:
      mesh_config: `{'data': int, 'fsdp': int}`.
      devices: default `jax.devices()`.
    """
    devices = jax.devices() if devices is None else devices
    n = len(devices)
    data, fsdp = int(mesh_config["data"]), int(mesh_config["fsdp"])
    if data == -1 and fsdp == -1:
        raise ValueError("config.mesh: at most one of data / fsdp may be -1.")
    if data == -1:
        data = n // max(fsdp, 1)
    if fsdp == -1:
        fsdp = n // max(data, 1)
    if data * fsdp != n or data < 1 or fsdp < 1:
        raise ValueError(
            f"config.mesh: data={mesh_config['data']} x fsdp={mesh_config['fsdp']} does not "
            f"cover the {n} available devices."
        )
    axis_types = (jax.sharding.AxisType.Auto,) * 2
    return jax.make_mesh((data, fsdp), BATCH_AXES, axis_types=axis_types, devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over all mesh axes, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """Fully replicated sharding."""
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    """PartitionSpec for one parameter: largest divisible dim over `fsdp`, else replicated."""
    if fsdp_size <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = FSDP_AXIS
            return P(*spec)
    return P()


def param_shardings(abstract_tree: PyTree, mesh: Mesh, *, fsdp_min_size: int = 2**14) -> PyTree:
    """NamedSharding for every leaf of a params-like tree (params, EMA, optimizer moments)."""
    fsdp_size = mesh.shape[FSDP_AXIS]
    return jax.tree.map(
        lambda x: NamedSharding(mesh, fsdp_spec(tuple(x.shape), fsdp_size, fsdp_min_size)),
        abstract_tree,
    )


def host_local_to_global(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Builds global arrays from this host's share of the batch.

    Args:
      batch: arrays of shape `(global_batch / process_count, ...)` on this host.
      mesh: the training mesh; the batch dim is split over `BATCH_AXES`.

    Returns:
      Global `jax.Array`s of shape `(global_batch, ...)`.
    """
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
    }


def check_batch_size(global_batch_size: int, mesh: Mesh, where: str = "config.batch_size") -> int:
    """Raises unless the global batch splits evenly over devices and hosts; returns per host."""
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(f"{where}={global_batch_size} is not divisible by {n} devices.")
    if global_batch_size % jax.process_count():
        raise ValueError(f"{where}={global_batch_size} not divisible by the process count.")
    return global_batch_size // jax.process_count()
