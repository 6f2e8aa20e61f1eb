"""Where checkpoints live on disk, and the error every checkpoint function raises.

Two layouts are ours:

* An **inference checkpoint** (`checkpoints.inference.save_inference_checkpoint`, written by
  the weight converters)::

      DIR/grefel_inference.json   {"format", "model_config", "class_names", "dataset",
                                   "preprocessing", "metadata", "modules"}
      DIR/variables/              orbax PyTree: {'params': ..., 'batch_stats': ...}

* A **training workdir** (`checkpoints.training.TrainCheckpointer`)::

      WORKDIR/checkpoints/<step>/model         {'params', 'batch_stats'[, 'ema_params']}
      WORKDIR/checkpoints/<step>/train         {'step', 'opt_state', 'rng'}
      WORKDIR/checkpoints/<step>/model_record  the ModelRecord as JSON (model config, class
                                               names, dataset, preprocessing)
      WORKDIR/model_record.json                the same, written when training starts
      WORKDIR/unreadable_checkpoints/<step>    steps that failed to restore, set aside

  (Older checkpoints hold a `model_config` item instead of `model_record`: still read.)
"""

from __future__ import annotations

import os
import re

from etils import epath

from grefel_jax.errors import UserError

INFERENCE_FORMAT = "grefel_jax.inference"
INFERENCE_MARKER = "grefel_inference.json"
VARIABLES_DIR = "variables"
CHECKPOINTS_DIR = "checkpoints"
RECORD_FILE = "model_record.json"
RECORD_ITEM = "model_record"
LEGACY_CONFIG_ITEM = "model_config"
BEST_METRIC_FILE = "best_metric.json"
# Steps that failed to restore are moved here (beside checkpoints/, which orbax lists).
UNREADABLE_DIR = "unreadable_checkpoints"


class CheckpointError(UserError, ValueError):
    """A checkpoint path that does not exist, is not ours, is unreadable or does not fit."""


def error_summary(error: BaseException, limit: int = 300) -> str:
    """One readable line for an orbax / TensorStore error.

    TensorStore messages are a chain `CODE: Error opening ...: Error reading ...: <cause>`
    followed by `[tensorstore_spec='{...}']` reprs of a few kilobytes: cutting that at a fixed
    length ends the line in the middle of a JSON spec. The reprs are dropped and the chain
    is shortened to its code and its last three links (the file and the cause).
    """
    text = str(error).strip()
    text = text.splitlines()[0] if text else type(error).__name__
    text = re.split(r"\s*\[(?:tensorstore_spec|source locations)", text)[0].strip()
    links = text.split(": ")
    if len(links) > 4:
        text = ": ".join([links[0], "...", *links[-3:]])
    if len(text) > limit:
        text = text[: limit - 4].rsplit(" ", 1)[0] + " ..."
    return text


def absolute_path(path) -> epath.Path:
    """`path` as an absolute `epath.Path`: orbax refuses relative local paths.

    Paths with a scheme (`gs://...`) are already absolute and are kept as they are.
    """
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))


def is_step_dir(path: epath.Path) -> bool:
    """True for `WORKDIR/checkpoints/<step>` (a step written by TrainCheckpointer)."""
    return (path / "model").is_dir() and (
        (path / RECORD_ITEM).exists() or (path / LEGACY_CONFIG_ITEM).exists()
    )
