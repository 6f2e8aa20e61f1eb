"""Every orbax call of the project: inference checkpoints, training checkpoints, `init_from`.

Two on-disk layouts are ours:

* An **inference checkpoint** (written by `save_inference_checkpoint`, e.g. by the weight
  converters or at the end of training)::

      DIR/grefel_inference.json   {"format": ..., "model_config": {...}, "metadata": {...}}
      DIR/variables/              orbax PyTree: {'params': ..., 'batch_stats': ...}

  The variables may hold only some top-level modules (a backbone-only conversion writes just
  `face_landback` and/or `ir_back`); `init_from` merges whatever is there.

* A **training workdir** (written by `TrainCheckpointer`)::

      WORKDIR/model_config.json
      WORKDIR/checkpoints/<step>/model       {'params', 'batch_stats'[, 'ema_params']}
      WORKDIR/checkpoints/<step>/train       {'step', 'opt_state', 'rng'}
      WORKDIR/checkpoints/<step>/data_iter   Grain iterator state (one file per process)
      WORKDIR/checkpoints/<step>/model_config  the ModelConfig as JSON

  The model and the optimizer state are separate items so that evaluation and prediction
  read only the weights.

Restores go through abstract targets (`jax.ShapeDtypeStruct` with a sharding) or to host
numpy arrays, so a checkpoint written on N devices restores onto any other device count.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax.traverse_util import flatten_dict, unflatten_dict

from grefel_jax.models.config import ModelConfig, model_config_from_dict, model_config_to_dict

INFERENCE_FORMAT = "grefel_jax.inference"
INFERENCE_MARKER = "grefel_inference.json"
VARIABLES_DIR = "variables"
CHECKPOINTS_DIR = "checkpoints"
MODEL_CONFIG_FILE = "model_config.json"

PyTree = Any


class CheckpointError(ValueError):
    """A checkpoint path that does not exist, is not ours, or does not fit the model."""


# --------------------------------------------------------------------------------------------
# Inference checkpoints.
# --------------------------------------------------------------------------------------------


def absolute_path(path) -> epath.Path:
    """`path` as an absolute `epath.Path`: orbax refuses relative local paths.

    Paths with a scheme (`gs://...`) are already absolute and are kept as they are.
    """
    text = os.fspath(path)
    return epath.Path(text if "://" in text else os.path.abspath(os.path.expanduser(text)))


def save_inference_checkpoint(
    directory: str | epath.PathLike,
    variables: Mapping[str, PyTree],
    model_config: ModelConfig,
    extra_metadata: Mapping[str, Any] | None = None,
) -> epath.Path:
    """Writes model variables and their ModelConfig to `directory` (created; must not exist).

    Args:
      directory: destination folder. An existing non-empty folder is an error, so that a
        conversion never silently overwrites weights.
      variables: `{'params': tree, 'batch_stats': tree}` of jax or numpy arrays. Either tree
        may hold only some top-level modules (partial conversions).
      model_config: the architecture the variables belong to.
      extra_metadata: JSON-serialisable facts to keep beside the weights (source file,
        conversion date, accuracy, ...).

    Returns:
      The directory path.
    """
    directory = absolute_path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise CheckpointError(f"{directory}: exists and is not empty; refusing to overwrite.")
    missing = {"params", "batch_stats"} - set(variables)
    if missing:
        raise CheckpointError(f"save_inference_checkpoint: variables lack {sorted(missing)}.")
    tree = {"params": dict(variables["params"]), "batch_stats": dict(variables["batch_stats"])}
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / VARIABLES_DIR, tree)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if jax.process_index() == 0:
        marker = {
            "format": INFERENCE_FORMAT,
            "version": 1,
            "model_config": model_config_to_dict(model_config),
            "metadata": dict(extra_metadata or {}),
            "modules": {
                "params": sorted(tree["params"]),
                "batch_stats": sorted(tree["batch_stats"]),
            },
        }
        (directory / INFERENCE_MARKER).write_text(json.dumps(marker, indent=2, default=str))
    return directory


def load_inference_checkpoint(
    path: str | epath.PathLike, *, check_shapes: bool = True
) -> tuple[dict[str, PyTree], ModelConfig, dict[str, Any]]:
    """Loads weights for inference from an inference checkpoint or a training workdir.

    Args:
      path: a directory written by `save_inference_checkpoint`, a training workdir (then the
        best checkpoint by the tracked metric if one was recorded, else the latest; the EMA
        parameters if EMA was on), or one step directory `WORKDIR/checkpoints/<step>`.
      check_shapes: compare every array with the shapes the ModelConfig implies (traces the
        model with `jax.eval_shape`, no compute).

    Returns:
      `(variables, model_config, metadata)`: variables `{'params', 'batch_stats'}` as host
      numpy arrays; metadata holds at least `source` (the path read) and, for workdirs,
      `step` and `used_ema`.
    """
    path = absolute_path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory.")
    if (path / INFERENCE_MARKER).exists():
        variables, model_config, metadata = _load_inference_dir(path)
    elif (path / CHECKPOINTS_DIR).is_dir() or _is_step_dir(path):
        variables, model_config, metadata = _load_from_workdir(path)
    else:
        raise CheckpointError(
            f"{path}: not a grefel_jax checkpoint (expected {INFERENCE_MARKER} for an inference "
            f"checkpoint or a '{CHECKPOINTS_DIR}/' folder for a training workdir)."
        )
    if check_shapes:
        check_variable_shapes(variables, model_config, where=str(path))
    return variables, model_config, metadata


def _load_inference_dir(path: epath.Path):
    try:
        marker = json.loads((path / INFERENCE_MARKER).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / INFERENCE_MARKER}: not valid JSON ({e}).") from e
    if marker.get("format") != INFERENCE_FORMAT:
        raise CheckpointError(
            f"{path / INFERENCE_MARKER}: format {marker.get('format')!r}, "
            f"expected {INFERENCE_FORMAT!r}."
        )
    try:
        model_config = model_config_from_dict(marker["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path / INFERENCE_MARKER}: bad model_config ({e}).") from e
    variables = _restore_numpy(path / VARIABLES_DIR)
    variables.setdefault("params", {})
    variables.setdefault("batch_stats", {})
    metadata = dict(marker.get("metadata", {}))
    metadata["source"] = str(path)
    return variables, model_config, metadata


def _is_step_dir(path: epath.Path) -> bool:
    return (path / "model").is_dir() and (path / "model_config").exists()


def _load_from_workdir(path: epath.Path):
    if _is_step_dir(path):
        step_dir, step = path, int(path.name) if path.name.isdigit() else None
    else:
        manager = _read_only_manager(path / CHECKPOINTS_DIR)
        # best_step() is None when no checkpoint recorded metrics: fall back to the latest.
        step = manager.best_step()
        if step is None:
            step = manager.latest_step()
        if step is None:
            raise CheckpointError(f"{path}: training workdir without any checkpoint yet.")
        step_dir = path / CHECKPOINTS_DIR / str(step)
        manager.close()
    model_tree = _restore_numpy(step_dir / "model")
    model_config = _read_model_config(step_dir / "model_config")
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
    return variables, model_config, metadata


def _read_model_config(item_dir: epath.Path) -> ModelConfig:
    # The JSON item is a folder holding one file named after the item.
    files = [item_dir] if item_dir.is_file() else list(item_dir.glob("*"))
    for f in files:
        if f.name.startswith("_"):
            continue
        try:
            return model_config_from_dict(json.loads(f.read_text()))
        except (json.JSONDecodeError, ValueError, TypeError):
            continue
    raise CheckpointError(f"{item_dir}: no readable model config.")


def _restore_numpy(directory: epath.Path) -> dict[str, PyTree]:
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
    except CheckpointError:
        raise
    except Exception as e:  # orbax raises many types; name the path either way.
        raise CheckpointError(f"{directory}: cannot read orbax checkpoint ({e}).") from e
    finally:
        checkpointer.close()


def expected_variable_shapes(model_config: ModelConfig) -> dict[str, PyTree]:
    """`{'params', 'batch_stats'}` of `jax.ShapeDtypeStruct` for a ModelConfig (no compute)."""
    from grefel_jax.models import GReFEL  # Local: the model imports are heavy.

    model = GReFEL(config=model_config)
    size = model_config.backbone.image_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    shapes = jax.eval_shape(lambda r, x: model.init(r, x, train=False), rngs, images)
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def check_variable_shapes(
    variables: Mapping[str, PyTree], model_config: ModelConfig, *, where: str
) -> None:
    """Raises CheckpointError naming `where` and the first mismatching arrays.

    Only the modules present in `variables` are checked, so partial checkpoints pass when
    what they hold fits.
    """
    expected = expected_variable_shapes(model_config)
    problems = []
    for collection in ("params", "batch_stats"):
        got = flatten_dict(variables.get(collection, {}))
        want = flatten_dict(expected.get(collection, {}))
        present_modules = {k[0] for k in got}
        for key, arr in got.items():
            if key not in want:
                problems.append(f"{collection}/{'/'.join(key)}: not in the model")
            elif tuple(arr.shape) != tuple(want[key].shape):
                problems.append(
                    f"{collection}/{'/'.join(key)}: shape {tuple(arr.shape)}, "
                    f"model expects {tuple(want[key].shape)}"
                )
        for key in want:
            if key[0] in present_modules and key not in got:
                problems.append(f"{collection}/{'/'.join(key)}: missing")
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise CheckpointError(f"{where}: variables do not match the model config:\n  {shown}{more}")


# --------------------------------------------------------------------------------------------
# init_from: merge pretrained (possibly partial) variables into fresh ones.
# --------------------------------------------------------------------------------------------


def merge_pretrained(
    init_variables: Mapping[str, PyTree], path: str | epath.PathLike
) -> tuple[dict[str, PyTree], list[str]]:
    """Replaces the subtrees of `init_variables` that the checkpoint at `path` holds.

    Args:
      init_variables: freshly initialised `{'params', 'batch_stats'}` (jax or numpy arrays).
      path: an inference checkpoint (possibly partial) or a training workdir.

    Returns:
      `(variables, loaded_modules)`: the merged variables (numpy for loaded leaves) and the
      sorted top-level module names that were loaded. Every loaded array must match the shape
      of the array it replaces; a mismatch or an unknown key raises CheckpointError naming
      `path`.
    """
    loaded, _, _ = load_inference_checkpoint(path, check_shapes=False)
    merged = {}
    modules: set[str] = set()
    problems = []
    for collection in ("params", "batch_stats"):
        base = flatten_dict(init_variables.get(collection, {}))
        new = flatten_dict(loaded.get(collection, {}))
        for key, arr in new.items():
            if key not in base:
                problems.append(f"{collection}/{'/'.join(key)}: not in the model")
            elif tuple(arr.shape) != tuple(base[key].shape):
                problems.append(
                    f"{collection}/{'/'.join(key)}: shape {tuple(arr.shape)} vs model "
                    f"{tuple(base[key].shape)}"
                )
            else:
                base[key] = np.asarray(arr, dtype=base[key].dtype)
                modules.add(key[0])
        merged[collection] = unflatten_dict(base)
    if problems:
        raise CheckpointError(f"init_from={path}: " + "; ".join(problems[:10]))
    for collection in init_variables:
        merged.setdefault(collection, init_variables[collection])
    logging.info("init_from %s: loaded modules %s", path, sorted(modules))
    return merged, sorted(modules)


# --------------------------------------------------------------------------------------------
# Training checkpoints.
# --------------------------------------------------------------------------------------------


def _read_only_manager(directory: epath.Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        read_only=True, best_fn=_best_fn_from_file(directory), best_mode="max"
    )
    return ocp.CheckpointManager(directory, options=options)


def _best_fn_from_file(directory: epath.Path) -> Callable | None:
    """The tracked metric name is stored beside the checkpoints by TrainCheckpointer."""
    spec = directory / "best_metric.json"
    if not spec.exists():
        return None
    name = json.loads(spec.read_text())["name"]
    mode = json.loads(spec.read_text()).get("mode", "max")
    sign = 1.0 if mode == "max" else -1.0
    return lambda metrics: sign * float(metrics.get(name, -np.inf * sign))


class TrainCheckpointer:
    """Training checkpoints in `WORKDIR/checkpoints`: async, keep-last-N + keep-best.

    Usage::

        ckpt = TrainCheckpointer(workdir, keep=3, best_metric="accuracy")
        if ckpt.latest_step() is not None:
            model, train, step = ckpt.restore(abstract_model, abstract_train, data_iter)
        ...
        ckpt.save(step, model_tree, train_tree, data_iter, model_config, metrics=eval_metrics)
        ckpt.close()
    """

    def __init__(
        self,
        workdir: str | epath.PathLike,
        *,
        keep: int = 3,
        best_metric: str | None = "accuracy",
        best_mode: str = "max",
        async_save: bool = True,
    ):
        self.directory = absolute_path(workdir) / CHECKPOINTS_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.best_metric = best_metric
        best_fn = None
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=keep)]
        if best_metric:
            if jax.process_index() == 0:
                (self.directory / "best_metric.json").write_text(
                    json.dumps({"name": best_metric, "mode": best_mode})
                )
            best_fn = lambda metrics: float(metrics[best_metric])
            policies.append(
                ocp.checkpoint_managers.BestN(
                    get_metric_fn=best_fn,
                    reverse=best_mode == "min",
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            best_fn=best_fn,
            best_mode=best_mode,
            keep_checkpoints_without_metrics=False,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            enable_async_checkpointing=async_save,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """The step with the best tracked metric (the latest when none was recorded)."""
        best = self._manager.best_step()
        return self.latest_step() if best is None else best

    def save(
        self,
        step: int,
        model: Mapping[str, PyTree],
        train: Mapping[str, PyTree],
        model_config: ModelConfig,
        data_iterator: Any | None = None,
        metrics: Mapping[str, float] | None = None,
        force: bool = False,
    ) -> bool:
        """Starts an (async) save of one step; returns whether a save was started.

        Args:
          step: the global step.
          model: `{'params', 'batch_stats'[, 'ema_params']}` (jax arrays, any sharding).
          train: `{'step', 'opt_state', 'rng'}`.
          model_config: written as JSON beside the arrays.
          data_iterator: a Grain DataLoader iterator (state saved per process) or None.
          metrics: eval metrics for keep-best; must contain `best_metric` when given.
          force: save even if a checkpoint policy would skip this step.
        """
        items = {
            "model": ocp.args.StandardSave(dict(model)),
            "train": ocp.args.StandardSave(dict(train)),
            "model_config": ocp.args.JsonSave(model_config_to_dict(model_config)),
        }
        if data_iterator is not None:
            import grain

            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iterator)
        if metrics is not None and self.best_metric and self.best_metric not in metrics:
            raise ValueError(f"metrics {sorted(metrics)} lack the tracked {self.best_metric!r}.")
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        return self._manager.save(
            int(step), args=ocp.args.Composite(**items), metrics=metrics, force=force
        )

    def restore(
        self,
        abstract_model: Mapping[str, PyTree],
        abstract_train: Mapping[str, PyTree],
        data_iterator: Any | None = None,
        step: int | None = None,
    ) -> tuple[dict[str, PyTree], dict[str, PyTree]]:
        """Restores model and train trees onto the shardings of the abstract targets.

        Args:
          abstract_model / abstract_train: trees of `jax.ShapeDtypeStruct` with `.sharding`
            (e.g. from `jax.eval_shape` + the current mesh); the saved arrays are resharded
            onto them, whatever device count wrote them.
          data_iterator: a Grain iterator whose state is set in place, or None.
          step: which step (default: the latest).
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"{self.directory}: nothing to restore.")
        items = {
            "model": ocp.args.StandardRestore(dict(abstract_model)),
            "train": ocp.args.StandardRestore(dict(abstract_train)),
        }
        if data_iterator is not None:
            import grain

            if (self.directory / str(step) / "data_iter").exists():
                items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iterator)
            else:
                logging.warning("Checkpoint %d has no data iterator state; data restarts.", step)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return dict(restored["model"]), dict(restored["train"])

    def saved_model_keys(self, step: int | None = None) -> set[str]:
        """Top-level keys of the saved model item (tells whether EMA parameters exist)."""
        step = self.latest_step() if step is None else step
        tree = ocp.PyTreeCheckpointer().metadata(self.directory / str(step) / "model")
        return set(tree.item_metadata.tree)

    def reached_preemption(self, step: int) -> bool:
        """True when the JAX preemption service (multi-host TPU/GPU) asks every host to stop."""
        if not jax.distributed.is_initialized():
            return False
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until pending async saves are written."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def write_model_config(workdir: str | epath.PathLike, model_config: ModelConfig) -> None:
    """Writes WORKDIR/model_config.json (process 0 only)."""
    if jax.process_index() == 0:
        path = absolute_path(workdir) / MODEL_CONFIG_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(model_config_to_dict(model_config), indent=2))
