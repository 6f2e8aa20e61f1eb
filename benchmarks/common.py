"""What the CPU benchmarks share: the machine's name and CPU pressure, timing summaries, and
the jitted train step of `build_trainer` on random inputs (no dataset needed)."""

from __future__ import annotations

import pathlib
import statistics

import jax
import numpy as np

from grefel_jax import logging_utils, sharding
from grefel_jax.configs import base
from grefel_jax.data.source import DatasetInfo, TrainingSet
from grefel_jax.trainer import build_trainer

NUM_CLASSES = 7


def cpu_pressure() -> str:
    """The `some` line of /proc/pressure/cpu, or '' where the kernel has none."""
    try:
        return pathlib.Path("/proc/pressure/cpu").read_text().splitlines()[0]
    except OSError:
        return ""


def cpu_name() -> str:
    """The CPU model name (what `lscpu` prints): `logging_utils.cpu_name`."""
    return logging_utils.cpu_name()


def summary(times: list[float]) -> dict:
    """Median, min and max of per-call seconds."""
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def random_dataset(num_classes: int, batch_size: int) -> TrainingSet:
    """A stand-in training set for random inputs (as benchmarks/train_step.py): no files, so
    no class counts (the benchmarks turn class weighting off)."""
    names = tuple(f"class_{i}" for i in range(num_classes))
    info = DatasetInfo("random", None, num_classes, names, {"train": 1000 * batch_size}, False)
    return TrainingSet(info)


def jax_trainer(variant: str, head: str, sam: bool, batch: int):
    """(step, state, batch) of our jitted train step (Adam, or SAM when asked)."""
    config = base.get_base_config()
    config.model.variant = variant
    config.model.head_preset = head
    config.optim.sam = sam
    config.mesh.data, config.mesh.fsdp = -1, 1
    config.batch_size = batch
    config.num_train_steps = 1000
    config.loss.class_weighting = False
    mesh = sharding.make_mesh(config.mesh)
    trainer = build_trainer(config, random_dataset(NUM_CLASSES, batch), mesh)
    state = trainer.init_state(jax.random.key(0))
    size = trainer.model_config.backbone.image_size
    rng = np.random.default_rng(0)
    data = sharding.host_local_to_global(
        {
            "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
            "label": rng.integers(0, NUM_CLASSES, size=batch).astype(np.int32),
        },
        mesh,
    )
    return trainer, state, data


def trainer_variables(state) -> dict:
    """The model variables (params, plus batch_stats when the state has them) of `state`."""
    variables = {"params": state.params}
    stats = getattr(state, "batch_stats", None)
    if stats is not None:
        variables["batch_stats"] = stats
    return variables
