r"""Landmark pretraining of the MobileFaceNet trunk + GDC head, read top to bottom.

  python -m grefel_jax.landmarks.pretrain --config configs/landmarks_synthetic.py \
      --workdir runs/landmarks [--config.num_train_steps=500 ...]

1. The dataset must be prepared and store the layout's points (`landmarks.points`).
2. Workdir lock, mesh, model (`LandmarkNet`: GReFEL's landmark branch + head), optimizer.
3. Initial state: the newest readable checkpoint of the workdir (automatic resume), else
   `init_from` (e.g. a converted official MobileFaceNet), else fresh.
4. The loop: augmented batches (flips permute left/right points) -> jitted step; a console
   line every `log_every_steps`, the validation NME every `eval_every_steps`, a checkpoint
   every `checkpoint_every_steps` (kept: the last N and the lowest NME); SIGTERM saves and
   stops. Scalars go to TensorBoard and metrics.jsonl.
5. The report: the best checkpoint's NME on `landmarks.report_split`,
   `W/landmarks_eval.json` and `W/landmarks_eval.png` (16 faces, true vs predicted).

The workdir is a training workdir like any other: `--config.init_from=W` in
`grefel_jax.main` loads its `face_landback` trunk as GReFEL's landmark network.
"""

from __future__ import annotations

import logging

import jax
import numpy as np
from etils import epath

from grefel_jax import checkpoints, logging_utils, optim, sharding
from grefel_jax.landmarks import data as landmark_data
from grefel_jax.landmarks import evaluate as landmark_eval
from grefel_jax.landmarks.points import layout_for
from grefel_jax.landmarks.trainer import LandmarkTrainer, build_landmark_trainer
from grefel_jax.train import StopSignal
from grefel_jax.train_state import TrainState


def pretrain(config, workdir: str) -> dict:
    """Trains (resuming from `workdir`), then writes the report.

    Returns:
      The report (`landmarks_eval.json`'s dict), or {} when the run stopped early (SIGTERM).
    """
    from grefel_jax.data import pipeline

    layout = layout_for(config.data.name)
    info = pipeline.dataset_info(config.data)  # fails first if the dataset is not prepared
    landmark_data.check_landmark_dataset(config.data, layout)
    workdir = epath.Path(workdir)
    with checkpoints.WorkdirLock(workdir):
        trainer = build_landmark_trainer(config, info, layout, sharding.make_mesh(config.mesh))
        # Checkpoints carry a ModelRecord of the GReFEL model the trunk belongs to.
        record = checkpoints.ModelRecord(trainer.model_config, dataset=info.full_name)
        logging_utils.write_run_info(workdir, config)
        checkpoints.write_record(workdir, record)
        checkpointer = checkpoints.TrainCheckpointer(
            workdir,
            keep=config.keep_checkpoints,
            best_metric=config.best_metric,
            best_mode="min",
            async_save=config.async_checkpoints,
        )
        state = _initial_state(trainer, checkpointer, config)
        writer = logging_utils.MetricWriter(workdir)
        step = _loop(trainer, state, config, checkpointer, record, writer)
        checkpointer.close()
        report = {}
        if step == trainer.length.total_steps:
            report = _report(trainer, workdir, config, writer, step)
        writer.close()
    return report


def _initial_state(trainer: LandmarkTrainer, checkpointer, config) -> TrainState:
    """Resume > init_from (e.g. a converted MobileFaceNet) > fresh, as in `grefel_jax.train`."""
    if checkpointer.latest_step() is not None:
        target = trainer.abstract_state
        model, train, step = checkpointer.restore(target.model_tree(), target.train_tree())
        logging.info("Resumed from %s at step %d.", checkpointer.directory, step)
        return TrainState.from_trees(model, train)
    state = trainer.init(jax.random.key(config.seed))
    if config.init_from:
        current = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        merged, _ = checkpoints.merge_pretrained(current, config.init_from)
        shardings = trainer.state_shardings
        state = state.replace(
            params=jax.device_put(merged["params"], shardings.params),
            batch_stats=jax.device_put(merged["batch_stats"], shardings.batch_stats),
        )
    return state


def _evaluate(trainer: LandmarkTrainer, variables, config, split: str) -> dict:
    return landmark_eval.evaluate(
        trainer.eval_fn,
        variables,
        config.data,
        split,
        image_size=trainer.image_size,
        global_batch_size=config.eval_batch_size,
        mesh=trainer.mesh,
    )


def _loop(trainer: LandmarkTrainer, state, config, checkpointer, record, writer) -> int:
    """Runs steps until the end or a stop request; returns the last step."""
    length, mesh = trainer.length, trainer.mesh
    start_step = int(state.step)
    # The stream is a function of the step (data/pipeline.py): resuming = starting there.
    train_iter = landmark_data.make_train_iterator(
        config.data,
        trainer.layout,
        image_size=trainer.image_size,
        global_batch_size=config.batch_size,
        seed=config.seed,
        start_step=start_step,
    )
    progress = logging_utils.ProgressLogger(
        length.total_steps, config.batch_size, start_step, extra=("point_error",)
    )
    logging.info(
        "Landmark pretraining: %d points, %d steps (global batch %d) on mesh %s from step %d.",
        trainer.layout.num_points,
        length.total_steps,
        config.batch_size,
        dict(mesh.shape),
        start_step,
    )
    pending, step = [], start_step
    with StopSignal() as stop:
        while step < length.total_steps:
            host_batch = next(train_iter)
            batch = sharding.host_local_to_global(
                {"image": host_batch["image"], "points": host_batch["points"]}, mesh
            )
            state, metrics = trainer.step(state, batch)
            step += 1
            pending.append(metrics)
            if step == start_step + 1:
                progress.reset_timer(step)  # leave compilation out of the rates

            if step % length.log_every == 0 or step == length.total_steps:
                averaged = _average(pending)
                pending = []
                rates = progress.rates(step)
                averaged["lr"] = float(trainer.schedules[optim.BACKBONE](step - 1))
                progress.line(step, averaged, rates)
                writer.write_scalars(step, {**averaged, **rates}, split="train")

            last_eval = None
            if step % length.eval_every == 0 or step == length.total_steps:
                split = config.data.eval_split
                result = _evaluate(trainer, state.eval_variables(), config, split)
                last_eval = {"nme": result["nme"]}
                writer.write_scalars(step, last_eval, split=split)
                logging.info(
                    "step %d: %s NME %.4f on %d faces.",
                    step,
                    split,
                    result["nme"],
                    result["num_examples"],
                )
                progress.reset_timer(step)

            stopping = stop.requested or checkpointer.reached_preemption(step)
            periodic = step % length.checkpoint_every == 0 or step == length.total_steps
            if periodic or stopping or last_eval:  # every evaluated step competes for best
                checkpointer.save(
                    step,
                    state.model_tree(),
                    state.train_tree(),
                    record,
                    metrics=last_eval,
                    force=True,
                )
            if stopping:
                logging.warning("Stopped at step %d; the checkpoint resumes from here.", step)
                break
    return step


def _report(trainer: LandmarkTrainer, workdir, config, writer, step) -> dict:
    """The best checkpoint (lowest validation NME; what `init_from` loads) on the report split."""
    variables, _, meta = checkpoints.load_inference_checkpoint(workdir, check_shapes=False)
    split = config.landmarks.report_split
    result = _evaluate(trainer, variables, config, split)
    writer.write_scalars(step, {"nme": result["nme"]}, split=f"report_{split}")
    report = landmark_eval.write_report(
        workdir, result, split=split, step=meta.get("step") or step, source=str(meta["source"])
    )
    logging.info(
        "%s NME %.4f on %d faces (checkpoint step %s): %s",
        split,
        report["nme"],
        report["num_examples"],
        report["step"],
        epath.Path(workdir) / landmark_eval.REPORT_JSON,
    )
    return report


def _average(metrics) -> dict[str, float]:
    stacked = jax.device_get(metrics)
    return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def main(argv):
    from absl import flags
    from absl import logging as absl_logging

    from grefel_jax import cli
    from grefel_jax.data import errors as data_errors

    if len(argv) > 1:
        cli.fail(f"Unexpected arguments: {argv[1:]}")
    try:
        sharding.maybe_initialize_distributed()
    except ValueError as e:
        cli.fail(str(e))
    absl_logging.use_absl_handler()
    logging.getLogger().setLevel(logging.INFO)
    logging_utils.quiet_library_logs()
    workdir = flags.FLAGS.workdir
    try:
        report = pretrain(flags.FLAGS.config, workdir)
    except (
        data_errors.DatasetNotPreparedError,
        checkpoints.WorkdirBusyError,
        checkpoints.CheckpointError,
        ValueError,
    ) as e:
        if flags.FLAGS.verbosity >= 1:
            raise
        cli.fail(str(e))
    if report and jax.process_index() == 0:
        print(
            f"\n{workdir}/{landmark_eval.REPORT_JSON}: NME {report['nme']:.4f} on "
            f"{report['num_examples']} {report['split']} faces; "
            f"{workdir}/{landmark_eval.REPORT_PNG}; TensorBoard: tensorboard --logdir {workdir}"
        )


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from grefel_jax import cli

    config_flags.DEFINE_config_file(
        "config", None, "Landmark pretraining config (configs/landmarks_*.py).", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the report are written.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=cli.parse_flags)
