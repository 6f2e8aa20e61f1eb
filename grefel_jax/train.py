"""The training loop, read top to bottom (setup is `trainer.build_trainer`).

1. Dataset check (an unprepared dataset fails before anything is written), workdir lock,
   mesh, Trainer.
2. Initial state: restored from the newest readable checkpoint of the workdir (automatic
   resume), else `init_from` pretrained weights, else fresh.
3. The loop: host-local batch -> global array -> jitted train step (state donated); a
   console line every `log_every_steps`, evaluation every `eval_every_steps`, a checkpoint
   every `checkpoint_every_steps` (async; kept: the last N and the best by eval accuracy).
4. SIGTERM (or an orbax preemption notice) saves a checkpoint and returns cleanly.
5. Final reports with the best checkpoint.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Mapping

import jax
import numpy as np
from etils import epath

from grefel_jax import checkpoints, logging_utils, sharding
from grefel_jax.train_state import TrainState
from grefel_jax.trainer import Trainer, build_trainer


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


def train_and_evaluate(
    config,
    workdir: str,
    *,
    evaluate_during_training: bool = True,
    step_callback: Callable[[int, TrainState, dict], None] | None = None,
) -> TrainState:
    """Trains (resuming from `workdir` if it holds a checkpoint), evaluating on the way.

    Args:
      config: the full config (configs/*.py).
      workdir: checkpoints, logs and eval reports go here.
      evaluate_during_training: evaluate every `eval_every_steps` and at the end
        (mode train_and_eval) or not (mode train).
      step_callback: called after every step with (step, state, host-local batch); for
        tests and custom monitoring.

    Returns:
      The final TrainState.
    """
    from grefel_jax import evaluate as eval_lib
    from grefel_jax.data import pipeline

    info = pipeline.dataset_info(config.data)
    workdir = epath.Path(workdir)
    with checkpoints.WorkdirLock(workdir):
        mesh = sharding.make_mesh(config.mesh)
        trainer = build_trainer(config, info, mesh)
        record = checkpoints.ModelRecord(
            trainer.model_config, class_names=info.class_names, dataset=info.full_name
        )
        logging_utils.write_run_info(workdir, config)
        checkpoints.write_record(workdir, record)
        checkpointer = checkpoints.TrainCheckpointer(
            workdir,
            keep=config.keep_checkpoints,
            best_metric=config.best_metric if evaluate_during_training else None,
            async_save=config.async_checkpoints,
        )
        state = _initial_state(trainer, checkpointer, config)
        evaluator = None
        if evaluate_during_training:
            evaluator = eval_lib.Evaluator(
                trainer.model,
                config.data,
                split=config.data.eval_split,
                mesh=mesh,
                global_batch_size=config.eval_batch_size,
                image_size=trainer.image_size,
                class_names=info.class_names,
            )
        writer = logging_utils.MetricWriter(workdir)
        state, step = _loop(
            trainer, state, config, checkpointer, record, evaluator, writer, step_callback
        )
        checkpointer.close()
        if evaluator is not None and step == trainer.length.total_steps:
            # Final reports with the best checkpoint's weights (eval_<split>.json + PNGs).
            for split in dict.fromkeys([config.data.eval_split, *config.final_eval_splits]):
                eval_lib.evaluate_workdir(
                    config, str(workdir), split=split, mesh=mesh, writer=writer, step=step
                )
        writer.close()
    return state


def _initial_state(trainer: Trainer, checkpointer, config) -> TrainState:
    """Resume > init_from > fresh."""
    if checkpointer.latest_step() is not None:
        target = trainer.restore_targets()
        model, train, step = checkpointer.restore(target.model_tree(), target.train_tree())
        logging.info("Resumed from %s at step %d.", checkpointer.directory, step)
        return TrainState.from_trees(model, train)
    state = trainer.init_state(jax.random.key(config.seed))
    if config.init_from:
        state = _load_pretrained(state, config.init_from, trainer.state_shardings)
    return state


def _loop(trainer, state, config, checkpointer, record, evaluator, writer, step_callback):
    """Runs steps until the end or a stop request; returns (state, last step)."""
    from grefel_jax import evaluate as eval_lib
    from grefel_jax import metrics as metrics_lib
    from grefel_jax.data import pipeline

    length = trainer.length
    start_step = int(state.step)
    # The data stream is a function of the step (data/pipeline.py): resume = start there.
    train_iter = pipeline.make_train_iterator(
        config.data,
        image_size=trainer.image_size,
        global_batch_size=config.batch_size,
        seed=config.seed,
        start_step=start_step,
    )
    progress = logging_utils.ProgressLogger(length.total_steps, config.batch_size, start_step)
    logging.info(
        "Training %d steps (%d per epoch, global batch %d) on mesh %s from step %d.",
        length.total_steps,
        length.steps_per_epoch,
        config.batch_size,
        dict(trainer.mesh.shape),
        start_step,
    )
    pending_metrics: list[dict[str, jax.Array]] = []
    step = start_step
    with StopSignal() as stop:
        while step < length.total_steps:
            host_batch = next(train_iter)
            state, metrics = trainer.step(state, trainer.global_batch(host_batch))
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
                for group, schedule in trainer.schedules.items():
                    averaged[f"lr_{group}"] = float(schedule(step - 1))
                progress.line(step, averaged, rates)
                writer.write_scalars(step, {**averaged, **rates}, split="train")

            last_eval = None
            if evaluator is not None and (
                step % length.eval_every == 0 or step == length.total_steps
            ):
                summary = evaluator.run(state.eval_variables())
                last_eval = metrics_lib.scalar_metrics(summary)
                writer.write_scalars(step, last_eval, split=config.data.eval_split)
                eval_lib.log_summary(summary, config.data.eval_split, step)
                progress.reset_timer(step)

            preempted = _any_host(stop.requested) or checkpointer.reached_preemption(step)
            if (
                step % length.checkpoint_every == 0
                or step == length.total_steps
                or preempted
                or last_eval
            ):
                checkpointer.save(
                    step,
                    state.model_tree(),
                    state.train_tree(),
                    record,
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


def _load_pretrained(state: TrainState, path: str, state_shardings: TrainState) -> TrainState:
    current = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    merged, modules = checkpoints.merge_pretrained(current, path)
    logging.info("init_from %s: loaded %s.", path, ", ".join(modules) or "nothing")
    params = jax.device_put(merged["params"], state_shardings.params)
    batch_stats = jax.device_put(merged["batch_stats"], state_shardings.batch_stats)
    ema = None if state.ema_params is None else jax.device_put(params, state_shardings.ema_params)
    return state.replace(params=params, batch_stats=batch_stats, ema_params=ema)
