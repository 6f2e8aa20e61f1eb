"""Training checkpoints in `WORKDIR/checkpoints`: async saves, keep-last-N + keep-best, and a
restore that survives a corrupt or half-written newest checkpoint.

A run killed mid-save, a full disk or a damaged file can leave the newest step unreadable.
`TrainCheckpointer.restore` then warns, naming the bad step, and resumes from the newest step
that reads; only when none does is it an error. (Orbax writes each step into a temporary
folder and renames it when complete, so a save that never finished is not listed at all.)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from grefel_jax.checkpoints import paths
from grefel_jax.checkpoints.paths import CheckpointError
from grefel_jax.checkpoints.record import ModelRecord

PyTree = Any

# Orbax's "replica-parallel" save splits every replicated array between its replicas so that
# each writes a part. That takes one compiled slice per array shape, and within one process
# the replicas share the host's memory, so it saves nothing: measured on 2 cores, the first
# save of the tiny model on 4 CPU devices took 8.8 s with it and 0.9 s without (docs/checkpoints.md
# §6e). Across processes it spreads the writing of large arrays, so it stays on there, for
# slices of at least this many bytes.
_MIN_REPLICA_PARALLEL_SLICE_BYTES = 1 << 22


_array_saving_configured = False


def _configure_array_saving() -> None:
    """Registers orbax's jax.Array handler with replica-parallel saves only across processes
    (once per process: the process count is fixed once JAX has started)."""
    global _array_saving_configured
    if _array_saving_configured:
        return
    handler = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=jax.process_count() > 1,
        min_slice_bytes_for_replica_parallel=_MIN_REPLICA_PARALLEL_SLICE_BYTES,
    )
    # Orbax warns on every override of a registered type; this one is intended.
    absl_logger = logging.getLogger("absl")
    quiet = logging.Filter()
    quiet.filter = lambda record: "overriding" not in record.getMessage()
    absl_logger.addFilter(quiet)
    try:
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
    finally:
        absl_logger.removeFilter(quiet)
    _array_saving_configured = True


def _best_fn_from_file(directory: epath.Path) -> Callable | None:
    """The tracked metric name is stored beside the checkpoints by TrainCheckpointer."""
    spec = directory / paths.BEST_METRIC_FILE
    if not spec.exists():
        return None
    spec = json.loads(spec.read_text())
    name, sign = spec["name"], 1.0 if spec.get("mode", "max") == "max" else -1.0
    return lambda metrics: sign * float(metrics.get(name, -np.inf * sign))


def readable_step_order(directory: epath.Path) -> list[int]:
    """Steps of a checkpoints folder in the order evaluation should try them.

    The best step by the tracked metric first (when metrics were recorded), then every other
    step, newest first.
    """
    if not directory.is_dir():
        return []
    options = ocp.CheckpointManagerOptions(
        read_only=True, best_fn=_best_fn_from_file(directory), best_mode="max"
    )
    manager = ocp.CheckpointManager(directory, options=options)
    try:
        steps = sorted(manager.all_steps(), reverse=True)
        best = manager.best_step() if options.best_fn is not None else None
    finally:
        manager.close()
    if best is not None and best in steps:
        steps.remove(best)
        steps.insert(0, best)
    return steps


class TrainCheckpointer:
    """Training checkpoints of one workdir.

    Usage::

        ckpt = TrainCheckpointer(workdir, keep=3, best_metric="primary/accuracy")
        if ckpt.latest_step() is not None:
            model, train, step = ckpt.restore(abstract_model, abstract_train)
        ...
        ckpt.save(step, model_tree, train_tree, record, metrics=eval_metrics)
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
        self.directory = paths.absolute_path(workdir) / paths.CHECKPOINTS_DIR
        self.directory.mkdir(parents=True, exist_ok=True)
        self.best_metric = best_metric
        best_fn = None
        policies: list[Any] = [ocp.checkpoint_managers.LatestN(n=keep)]
        if best_metric:
            if jax.process_index() == 0:
                (self.directory / paths.BEST_METRIC_FILE).write_text(
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
        _configure_array_saving()
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The newest saved step, or None."""
        return self._manager.latest_step()

    def save(
        self,
        step: int,
        model: Mapping[str, PyTree],
        train: Mapping[str, PyTree],
        record: ModelRecord,
        metrics: Mapping[str, float] | None = None,
        force: bool = False,
    ) -> bool:
        """Starts an (async) save of one step; returns whether a save was started.

        Args:
          step: the global step.
          model: `{'params', 'batch_stats'[, 'ema_params']}` (jax arrays, any sharding).
          train: `{'step', 'opt_state', 'rng'}`.
          record: the ModelRecord, written as JSON beside the arrays.
          metrics: eval metrics for keep-best; must contain `best_metric` when given.
          force: save even if a checkpoint policy would skip this step.
        """
        items = {
            "model": ocp.args.StandardSave(dict(model)),
            "train": ocp.args.StandardSave(dict(train)),
            paths.RECORD_ITEM: ocp.args.JsonSave(record.to_dict()),
        }
        if metrics is not None and self.best_metric and self.best_metric not in metrics:
            raise ValueError(f"metrics {sorted(metrics)} lack the tracked {self.best_metric!r}.")
        metrics = None if metrics is None else {k: float(v) for k, v in metrics.items()}
        return self._manager.save(
            int(step), args=ocp.args.Composite(**items), metrics=metrics, force=force
        )

    def restore(
        self, abstract_model: Mapping[str, PyTree], abstract_train: Mapping[str, PyTree]
    ) -> tuple[dict[str, PyTree], dict[str, PyTree], int]:
        """Restores the newest readable step onto the shardings of the abstract targets.

        Args:
          abstract_model / abstract_train: trees of `jax.ShapeDtypeStruct` with `.sharding`;
            the saved arrays are resharded onto them, whatever device count wrote them.

        Returns:
          `(model, train, step)`. Unreadable newer steps are skipped with a warning that
          names them.

        Raises:
          CheckpointError: no step could be read (each failure is named).
        """
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"{self.directory}: nothing to restore.")
        failures = []
        for step in steps:
            items = {
                "model": ocp.args.StandardRestore(dict(abstract_model)),
                "train": ocp.args.StandardRestore(dict(abstract_train)),
            }
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # noqa: BLE001  orbax/tensorstore raise many types
                reason = paths.error_summary(e)
                failures.append(f"step {step}: {reason}")
                logging.warning(
                    "Checkpoint step %d in %s is unreadable (%s); trying an older one.",
                    step,
                    self.directory,
                    reason,
                )
                continue
            if failures:
                logging.warning("Resuming from step %d (skipped: %s).", step, "; ".join(failures))
                self._set_aside([s for s in steps if s > step])
            return dict(restored["model"]), dict(restored["train"]), step
        raise CheckpointError(
            f"{self.directory}: no checkpoint could be read ({'; '.join(failures)}): move "
            "that folder away to start afresh, or pass another --workdir."
        )

    def _set_aside(self, steps: list[int]) -> None:
        """Moves unreadable steps to WORKDIR/unreadable_checkpoints/<step>.

        The resumed run saves those step numbers again, which orbax refuses while they exist;
        moving them (rather than deleting) keeps the files for whoever wants to inspect them.
        """
        if jax.process_index() == 0:
            target = self.directory.parent / paths.UNREADABLE_DIR
            target.mkdir(parents=True, exist_ok=True)
            for step in steps:
                destination = target / str(step)
                suffix = 1
                while destination.exists():  # set aside before: keep both
                    destination = target / f"{step}.{suffix}"
                    suffix += 1
                (self.directory / str(step)).rename(destination)
                logging.warning("Moved unreadable step %d to %s.", step, destination)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("grefel_jax: unreadable steps set aside")
        self._manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """True when the JAX preemption service (multi-host TPU/GPU) asks every host to stop."""
        if not jax.distributed.is_initialized():
            return False
        return self._manager.reached_preemption(step)

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def write_record(workdir: str | epath.PathLike, record: ModelRecord) -> None:
    """Writes WORKDIR/model_record.json (process 0 only)."""
    if jax.process_index() == 0:
        path = paths.absolute_path(workdir) / paths.RECORD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(record.to_json())
