"""Shared by the speed benchmarks: an inference checkpoint of the demo model
(`configs/demo.py`) with random weights, which do not change how fast it runs."""

from __future__ import annotations

import pathlib

import jax

from grefel_jax import checkpoints as ckpt_lib
from grefel_jax import settings
from grefel_jax.configs import demo
from grefel_jax.data import classes
from grefel_jax.models import init_variables


def random_demo_checkpoint(directory: pathlib.Path) -> pathlib.Path:
    """Writes the checkpoint into `directory` and returns it."""
    config = demo.get_config()
    model_config = settings.model_config(config, num_classes=len(classes.SYNTHETIC_FACES))
    variables = init_variables(settings.make_model(model_config), jax.random.key(0))
    record = ckpt_lib.ModelRecord(model_config, class_names=classes.SYNTHETIC_FACES)
    ckpt_lib.save_inference_checkpoint(directory, variables, record)
    return directory
