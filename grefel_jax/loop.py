"""The one training loop: GReFEL training and both pretrainings (landmarks, identity) run here.

What differs between them is a `Task` (built by `grefel_jax.train`, `grefel_jax.pretrain.
landmarks` and `grefel_jax.pretrain.identity`): the jitted step, the batches, the periodic
evaluation and its best metric, the final report. What they share is here, once:

1. Workdir lock; the task is built under it (mesh, shardings, jitted step); `config.json`,
   `versions.json` and the model record are written.
2. Initial state: the newest readable checkpoint of the workdir (automatic resume), else the
   `init_from` sources merged in order (`checkpoints.merge_pretrained_sources`), else fresh.
3. Steps: host-local batch -> global arrays -> jitted step (state donated); a console line
   and TensorBoard scalars every `log_every` steps, the task's evaluation every `eval_every`
   steps, a checkpoint every `checkpoint_every` steps and at every evaluation (kept: the last
   N and the best by the task's metric).
4. SIGTERM on any host (or an orbax preemption notice) makes every host save the same step
   and stop: the flag is agreed across processes before each save decision.
5. When the run reached its last step, the task's final report (with the best checkpoint).
"""

from __future__ import annotations

import dataclasses
import logging
import signal
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np
import optax
from etils import epath

from grefel_jax import checkpoints, logging_utils, settings
from grefel_jax.train_state import TrainState

HostBatch = dict[str, np.ndarray]


@dataclasses.dataclass
class Task:
    """What one kind of training gives the loop.

    Attributes:
      name: 'grefel', 'landmarks' or 'identity' (log lines).
      length: run length and periods (settings.RunLength).
      mesh: the device mesh.
      record: the ModelRecord saved with every checkpoint.
      abstract_state: TrainState of ShapeDtypeStructs with their shardings (restore targets).
      state_shardings: NamedSharding of every state leaf (init_from places weights by them).
      init_state: jitted `rng -> TrainState`, created in its shardings.
      step: jitted `(state, global batch) -> (state, metrics)`; donates the state.
      train_batches: `start_step -> iterator` of this process's host batches from that step
        (the stream is a function of the step, so resuming rebuilds it there).
      global_batch: this process's host batch -> the global arrays `step` takes.
      schedules: learning rate by optimizer group (logged as `lr_<group>`).
      evaluate: `(state, step) -> scalars` of the periodic evaluation (logged and written by
        the task), or None for no evaluation.
      eval_split: the split `evaluate` reads (the TensorBoard folder of its scalars).
      best_metric / best_mode: the scalar of `evaluate` that keep-best tracks, and whether
        larger ('max') or smaller ('min') is better; None = no best checkpoint.
      report: `(workdir, writer, step) -> dict`, run once after the last step (the best
        checkpoint's final numbers), or None.
      progress_extra: metric names shown on the console line after the loss.
    """

    name: str
    length: settings.RunLength
    mesh: jax.sharding.Mesh
    record: checkpoints.ModelRecord
    abstract_state: TrainState
    state_shardings: TrainState
    init_state: Callable[[jax.Array], TrainState]
    step: Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, dict]]
    train_batches: Callable[[int], Iterator[HostBatch]]
    global_batch: Callable[[HostBatch], dict[str, jax.Array]]
    schedules: Mapping[str, optax.Schedule]
    evaluate: Callable[[TrainState, int], dict[str, float]] | None = None
    eval_split: str = "validation"
    best_metric: str | None = None
    best_mode: str = "max"
    report: Callable[[epath.Path, logging_utils.MetricWriter, int], dict] | None = None
    progress_extra: tuple[str, ...] = ()


@dataclasses.dataclass
class RunResult:
    """What `run` returns.

    Attributes:
      state: the final TrainState.
      step: the last step run.
      finished: True when the run reached its last step (not stopped by a signal).
      report: the task's final report ({} when unfinished or the task has none).
    """

    state: TrainState
    step: int
    finished: bool
    report: dict[str, Any]


class StopSignal:
    """Turns SIGTERM into a flag that the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: no handler, no flag.
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint and stopping.")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


def run(
    config,
    workdir: str | epath.PathLike,
    make_task: Callable[[jax.sharding.Mesh], Task],
    *,
    step_callback: Callable[[int, TrainState, HostBatch], None] | None = None,
) -> RunResult:
    """Runs (or resumes) one training in `workdir`.

    Args:
      config: the run config; the loop reads it through `settings.loop_settings`.
      workdir: checkpoints, logs and reports go here.
      make_task: builds the Task on the mesh (called once, under the workdir lock).
      step_callback: called after every step with (step, state, host batch); for tests and
        custom monitoring.

    Returns:
      RunResult.
    """
    from grefel_jax import sharding

    loop_settings = settings.loop_settings(config)
    workdir = epath.Path(workdir)
    with checkpoints.WorkdirLock(workdir):
        task = make_task(sharding.make_mesh(config.mesh))
        logging_utils.write_run_info(workdir, config)
        checkpoints.write_record(workdir, task.record)
        checkpointer = checkpoints.TrainCheckpointer(
            workdir,
            keep=loop_settings.keep_checkpoints,
            best_metric=task.best_metric,
            best_mode=task.best_mode,
            async_save=loop_settings.async_checkpoints,
        )
        state = initial_state(task, checkpointer, loop_settings)
        writer = logging_utils.MetricWriter(workdir)
        state, step = _loop(task, state, loop_settings, checkpointer, writer, step_callback)
        checkpointer.close()
        finished = step == task.length.total_steps
        report = {}
        if finished and task.report is not None:
            report = task.report(workdir, writer, step)
        writer.close()
    return RunResult(state=state, step=step, finished=finished, report=report or {})


def initial_state(task: Task, checkpointer, loop_settings: settings.LoopSettings) -> TrainState:
    """Resume > init_from (every source, in order) > fresh."""
    if checkpointer.latest_step() is not None:
        target = task.abstract_state
        model, train, step = checkpointer.restore(target.model_tree(), target.train_tree())
        logging.info("Resumed from %s at step %d.", checkpointer.directory, step)
        return TrainState.from_trees(model, train)
    state = task.init_state(jax.random.key(loop_settings.seed))
    if loop_settings.init_from:
        state = load_pretrained(state, loop_settings.init_from, task.state_shardings)
    return state


def load_pretrained(
    state: TrainState, sources: tuple[str, ...], state_shardings: TrainState
) -> TrainState:
    """`state` with the weights of the `init_from` sources in place (and in the EMA copy)."""
    current = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    merged, loaded = checkpoints.merge_pretrained_sources(current, sources)
    for source, modules in loaded.items():
        logging.info("init_from %s: loaded %s.", source, ", ".join(modules) or "nothing")
    params = jax.device_put(merged["params"], state_shardings.params)
    batch_stats = jax.device_put(merged["batch_stats"], state_shardings.batch_stats)
    # The EMA starts equal to the parameters but must own its buffers: the step donates the
    # whole state, and two leaves on one buffer is a double donation.
    ema = None
    if state.ema_params is not None:
        ema = jax.device_put(merged["params"], state_shardings.ema_params)
    return state.replace(params=params, batch_stats=batch_stats, ema_params=ema)


def _loop(task: Task, state, loop_settings, checkpointer, writer, step_callback):
    """Runs steps until the end or a stop request; returns (state, last step)."""
    length = task.length
    start_step = int(state.step)
    train_iter = task.train_batches(start_step)
    progress = logging_utils.ProgressLogger(
        length.total_steps, loop_settings.batch_size, start_step, extra=task.progress_extra
    )
    logging.info(
        "Training %s: %d steps (%d per epoch, global batch %d) on mesh %s from step %d.",
        task.name,
        length.total_steps,
        length.steps_per_epoch,
        loop_settings.batch_size,
        dict(task.mesh.shape),
        start_step,
    )
    pending_metrics: list[dict[str, jax.Array]] = []
    step = start_step
    with StopSignal() as stop:
        while step < length.total_steps:
            host_batch = next(train_iter)
            state, metrics = task.step(state, task.global_batch(host_batch))
            step += 1
            pending_metrics.append(metrics)
            if step_callback is not None:
                step_callback(step, state, host_batch)
            if step == start_step + 1:
                progress.reset_timer(step)  # Leave compilation out of the rates.

            if step % length.log_every == 0 or step == length.total_steps:
                averaged = _average(pending_metrics)
                pending_metrics = []
                rates = progress.rates(step)
                for group, schedule in task.schedules.items():
                    averaged[f"lr_{group}"] = float(schedule(step - 1))
                progress.line(step, averaged, rates)
                writer.write_scalars(step, {**averaged, **rates}, split="train")

            last_eval = None
            if task.evaluate is not None and (
                step % length.eval_every == 0 or step == length.total_steps
            ):
                last_eval = task.evaluate(state, step)
                writer.write_scalars(step, last_eval, split=task.eval_split)
                progress.reset_timer(step)

            preempted = _any_host(stop.requested) or checkpointer.reached_preemption(step)
            if (
                step % length.checkpoint_every == 0
                or step == length.total_steps
                or preempted
                or last_eval  # every evaluated step competes for best
            ):
                checkpointer.save(
                    step,
                    state.model_tree(),
                    state.train_tree(),
                    task.record,
                    metrics=last_eval,
                    force=True,
                )
            if preempted:
                logging.warning("Stopped at step %d; the checkpoint resumes from here.", step)
                break
    return state, step


def _any_host(flag: bool) -> bool:
    """True if any process set `flag`; every host must stop and save at the same step."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def _average(metrics: list[Mapping[str, jax.Array]]) -> dict[str, float]:
    stacked = jax.device_get(metrics)
    return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}
