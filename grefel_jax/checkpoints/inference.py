"""Weights for inference: write an inference checkpoint; read one, or a training workdir.

Restores go to host numpy arrays, so a checkpoint written on N devices loads on any device
count. Every failure is a CheckpointError whose message names the path (no orbax traceback).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from grefel_jax.checkpoints import paths
from grefel_jax.checkpoints.paths import CheckpointError
from grefel_jax.checkpoints.record import ModelRecord
from grefel_jax.checkpoints.shapes import check_variable_shapes
from grefel_jax.models.config import ModelConfig

PyTree = Any


def save_inference_checkpoint(
    directory: str | epath.PathLike,
    variables: Mapping[str, PyTree],
    model_config: ModelConfig | ModelRecord,
    extra_metadata: Mapping[str, Any] | None = None,
) -> epath.Path:
    """Writes model variables and their ModelRecord to `directory` (created; must not exist).

    Args:
      directory: destination folder. An existing non-empty folder is an error, so that a
        conversion never silently overwrites weights.
      variables: `{'params': tree, 'batch_stats': tree}` of jax or numpy arrays. Either tree
        may hold only some top-level modules (partial conversions).
      model_config: the architecture (a ModelConfig), or a full ModelRecord with class names,
        dataset and preprocessing.
      extra_metadata: JSON-serialisable facts to keep beside the weights (source file,
        conversion date, accuracy, ...).

    Returns:
      The directory path.
    """
    record = model_config if isinstance(model_config, ModelRecord) else ModelRecord(model_config)
    directory = paths.absolute_path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise CheckpointError(f"{directory}: exists and is not empty; refusing to overwrite.")
    missing = {"params", "batch_stats"} - set(variables)
    if missing:
        raise CheckpointError(f"save_inference_checkpoint: variables lack {sorted(missing)}.")
    tree = {"params": dict(variables["params"]), "batch_stats": dict(variables["batch_stats"])}
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / paths.VARIABLES_DIR, tree)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if jax.process_index() == 0:
        marker = {
            "format": paths.INFERENCE_FORMAT,
            "version": 2,
            **record.to_dict(),
            "metadata": dict(extra_metadata or {}),
            "modules": {
                "params": sorted(tree["params"]),
                "batch_stats": sorted(tree["batch_stats"]),
            },
        }
        (directory / paths.INFERENCE_MARKER).write_text(json.dumps(marker, indent=2, default=str))
    return directory


def load_inference_checkpoint(
    path: str | epath.PathLike, *, check_shapes: bool = True
) -> tuple[dict[str, PyTree], ModelConfig, dict[str, Any]]:
    """Loads weights for inference from an inference checkpoint or a training workdir.

    Args:
      path: a directory written by `save_inference_checkpoint`, a training workdir (then the
        best checkpoint by the tracked metric if one was recorded, else the newest readable
        one; the EMA parameters if EMA was on), or one step directory
        `WORKDIR/checkpoints/<step>`.
      check_shapes: compare every array with the shapes the ModelConfig implies (traces the
        model with `jax.eval_shape`, no compute).

    Returns:
      `(variables, model_config, metadata)`: variables `{'params', 'batch_stats'}` as host
      numpy arrays; metadata holds `source` (the path read), the record's `class_names`,
      `dataset` and `preprocessing`, and for workdirs `step` and `used_ema`.

    Raises:
      CheckpointError: naming the path and what is wrong.
    """
    path = paths.absolute_path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory.")
    if (path / paths.INFERENCE_MARKER).exists():
        variables, record, metadata = _load_inference_dir(path)
    elif (path / paths.CHECKPOINTS_DIR).is_dir() or paths.is_step_dir(path):
        variables, record, metadata = _load_from_workdir(path)
    else:
        raise CheckpointError(
            f"{path}: not a grefel_jax checkpoint (expected {paths.INFERENCE_MARKER} for an "
            f"inference checkpoint or a '{paths.CHECKPOINTS_DIR}/' folder for a training "
            "workdir)."
        )
    metadata["preprocessing"] = dict(record.preprocessing)
    for key in ("class_names", "dataset"):
        if getattr(record, key) is not None:
            metadata[key] = getattr(record, key)
    if check_shapes:
        check_variable_shapes(variables, record.model_config, where=str(path))
    return variables, record.model_config, metadata


def _load_inference_dir(path: epath.Path):
    marker_file = path / paths.INFERENCE_MARKER
    try:
        marker = json.loads(marker_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{marker_file}: not valid JSON ({e}).") from e
    if marker.get("format") != paths.INFERENCE_FORMAT:
        raise CheckpointError(
            f"{marker_file}: format {marker.get('format')!r}, expected {paths.INFERENCE_FORMAT!r}."
        )
    try:
        record = ModelRecord.from_dict(marker)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{marker_file}: bad model record ({e}).") from e
    variables = restore_numpy(path / paths.VARIABLES_DIR)
    variables.setdefault("params", {})
    variables.setdefault("batch_stats", {})
    metadata = dict(marker.get("metadata", {}))
    metadata["source"] = str(path)
    return variables, record, metadata


def _load_from_workdir(path: epath.Path):
    if paths.is_step_dir(path):
        candidates = [(path, int(path.name) if path.name.isdigit() else None)]
    else:
        from grefel_jax.checkpoints.training import readable_step_order

        steps = readable_step_order(path / paths.CHECKPOINTS_DIR)
        if not steps:
            raise CheckpointError(f"{path}: training workdir without any checkpoint yet.")
        candidates = [(path / paths.CHECKPOINTS_DIR / str(s), s) for s in steps]
    errors = []
    for step_dir, step in candidates:
        try:
            model_tree = restore_numpy(step_dir / "model")
            record = read_step_record(step_dir)
        except CheckpointError as e:
            errors.append(str(e))
            logging.warning("Skipping unreadable checkpoint %s: %s", step_dir, e)
            continue
        ema = model_tree.get("ema_params")
        used_ema = bool(ema)
        variables = {
            "params": ema if used_ema else model_tree["params"],
            "batch_stats": model_tree.get("batch_stats", {}),
        }
        metadata = {"source": str(path), "step": step, "used_ema": used_ema}
        metrics_file = step_dir / "metrics" / "metrics"
        if metrics_file.exists():
            metadata["metrics"] = json.loads(metrics_file.read_text())
        return variables, record, metadata
    raise CheckpointError(f"{path}: no readable checkpoint ({errors[0]}).")


def read_step_record(step_dir: epath.Path) -> ModelRecord:
    """The ModelRecord of one training step directory (or of an older `model_config`)."""
    for item in (paths.RECORD_ITEM, paths.LEGACY_CONFIG_ITEM):
        item_dir = step_dir / item
        if not item_dir.exists():
            continue
        # The JSON item is a folder holding one file named after the item.
        files = [item_dir] if item_dir.is_file() else list(item_dir.glob("*"))
        for f in files:
            if f.name.startswith("_"):
                continue
            try:
                return ModelRecord.from_dict(json.loads(f.read_text()))
            except (json.JSONDecodeError, ValueError, TypeError, KeyError):
                continue
    raise CheckpointError(f"{step_dir}: no readable model record.")


def restore_numpy(directory: epath.Path) -> dict[str, PyTree]:
    """Restores an orbax PyTree as host numpy arrays (works on any device count)."""
    if not directory.exists():
        raise CheckpointError(f"{directory}: missing (incomplete or foreign checkpoint).")
    checkpointer = ocp.PyTreeCheckpointer()
    try:
        tree_metadata = checkpointer.metadata(directory).item_metadata.tree
        restore_args = jax.tree.map(
            lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree_metadata
        )
        return checkpointer.restore(
            directory, args=ocp.args.PyTreeRestore(restore_args=restore_args)
        )
    except Exception as e:  # orbax raises many types; name the path either way.
        reason = paths.error_summary(e)
        raise CheckpointError(f"{directory}: cannot read orbax checkpoint ({reason}).") from e
    finally:
        checkpointer.close()
