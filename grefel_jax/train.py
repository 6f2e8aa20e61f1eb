"""GReFEL training, read top to bottom (setup is `trainer.build_trainer`, the loop is
`grefel_jax.loop`, shared with both pretrainings).

1. The training set, opened once (`source.open_training_set`: metadata, the records read,
   their class counts when asked): an unprepared dataset fails before anything is written.
2. The task (under the workdir lock): the Trainer (model, optimizer, shardings, jitted step),
   the training stream, and with `evaluate_during_training` the evaluator of
   `config.data.eval_split`, whose `config.best_metric` picks the best checkpoint.
3. The loop: resume > `init_from` > fresh, steps, logs, evaluations, checkpoints, SIGTERM.
4. Final reports with the best checkpoint: `eval_<split>.json` and confusion PNGs for the
   evaluation split and `config.final_eval_splits`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from etils import epath

from grefel_jax import checkpoints, loop
from grefel_jax.data.source import TrainingSet
from grefel_jax.train_state import TrainState
from grefel_jax.trainer import build_trainer


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
    from grefel_jax.data import source

    data = source.open_training_set(config.data)
    result = loop.run(
        config,
        workdir,
        lambda mesh: grefel_task(config, data, mesh, evaluate=evaluate_during_training),
        step_callback=step_callback,
    )
    return result.state


def grefel_task(
    config, data: TrainingSet, mesh: jax.sharding.Mesh, *, evaluate: bool = True
) -> loop.Task:
    """The loop's Task for GReFEL training of `config` on the training set `data` over `mesh`."""
    from grefel_jax import evaluate as eval_lib
    from grefel_jax import metrics as metrics_lib
    from grefel_jax.data import pipeline

    info = data.info
    trainer = build_trainer(config, data, mesh)
    record = checkpoints.ModelRecord(
        trainer.model_config, class_names=info.class_names, dataset=info.full_name
    )
    split = config.data.eval_split

    def train_batches(start_step: int):
        # The data stream is a function of the step (data/pipeline.py): resume = start there.
        return pipeline.make_train_iterator(
            config.data,
            image_size=trainer.image_size,
            global_batch_size=config.batch_size,
            seed=config.seed,
            start_step=start_step,
            training_set=data,
        )

    periodic = final = None
    if evaluate:
        evaluator = eval_lib.Evaluator(
            trainer.model,
            config.data,
            split=split,
            mesh=mesh,
            global_batch_size=config.eval_batch_size,
            image_size=trainer.image_size,
            class_names=info.class_names,
        )

        def periodic(state: TrainState, step: int) -> dict[str, float]:
            summary = evaluator.run(state.eval_variables())
            eval_lib.log_summary(summary, split, step)
            return metrics_lib.scalar_metrics(summary)

        def final(workdir: epath.Path, writer, step: int) -> dict:
            # eval_<split>.json + PNGs with the best checkpoint's weights.
            reports = {}
            for name in dict.fromkeys([split, *config.final_eval_splits]):
                reports[name], _ = eval_lib.evaluate_workdir(
                    config, str(workdir), split=name, mesh=mesh, writer=writer, step=step
                )
            return reports

    return loop.Task(
        name="grefel",
        length=trainer.length,
        mesh=mesh,
        record=record,
        abstract_state=trainer.abstract_state,
        state_shardings=trainer.state_shardings,
        init_state=trainer.init_state,
        step=trainer.step,
        train_batches=train_batches,
        global_batch=trainer.global_batch,
        schedules=trainer.schedules,
        evaluate=periodic,
        eval_split=split,
        best_metric=config.best_metric if evaluate else None,
        best_mode="max",
        report=final,
    )
