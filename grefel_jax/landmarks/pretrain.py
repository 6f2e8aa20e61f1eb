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

import functools
import logging

import jax
import numpy as np
from etils import epath

from grefel_jax import checkpoints, logging_utils, optim, settings, sharding
from grefel_jax.landmarks import data as landmark_data
from grefel_jax.landmarks import evaluate as landmark_eval
from grefel_jax.landmarks import model as landmark_model
from grefel_jax.landmarks.points import layout_for
from grefel_jax.train import StopSignal
from grefel_jax.train_state import TrainState


def pretrain(config, workdir: str) -> dict:
    """Trains (resuming from `workdir`), then writes the report; returns the report dict."""
    from grefel_jax.data import pipeline

    layout = layout_for(config.data.name)
    info = pipeline.dataset_info(config.data)  # fails first if the dataset is not prepared
    landmark_data.check_landmark_dataset(config.data, layout)
    workdir = epath.Path(workdir)
    with checkpoints.WorkdirLock(workdir):
        mesh = sharding.make_mesh(config.mesh)
        sharding.check_batch_size(config.batch_size, mesh)
        model_config = settings.model_config(config, info.num_classes)
        size = model_config.backbone.image_size
        model = landmark_model.LandmarkNet(
            model_config.backbone, layout.num_points, settings.compute_dtype(config)
        )
        length = settings.run_length(config, info.split_sizes[config.data.train_split])

        # Optimizer (one group: everything trains), state shardings, jitted functions.
        abstract_params = jax.eval_shape(
            lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, size, size, 3)), train=False)[
                "params"
            ]
        )
        tx, schedules = optim.make_optimizer(
            config.optim,
            landmark_model.all_trained_labels(abstract_params),
            steps_per_epoch=length.steps_per_epoch,
            total_steps=length.total_steps,
        )
        init_fn = functools.partial(landmark_model.init_state, model=model, tx=tx)
        shapes = jax.eval_shape(init_fn, jax.random.key(0))
        state_shardings = sharding.param_shardings(
            shapes, mesh, fsdp_min_size=config.mesh.fsdp_min_size
        )
        batch_shardings = {k: sharding.batch_sharding(mesh) for k in ("image", "points")}
        step_fn = jax.jit(
            functools.partial(
                landmark_model.train_step,
                model=model,
                tx=tx,
                loss_fn=landmark_model.loss_fn_for(config),
            ),
            in_shardings=(state_shardings, batch_shardings),
            out_shardings=(state_shardings, sharding.replicated(mesh)),
            donate_argnums=(0,),
        )
        eval_fn = landmark_eval.make_eval_fn(
            functools.partial(landmark_model.predict, model=model), layout, mesh
        )

        # Checkpoints carry a ModelRecord of the GReFEL model the trunk belongs to.
        record = checkpoints.ModelRecord(model_config, dataset=info.full_name)
        logging_utils.write_run_info(workdir, config)
        checkpoints.write_record(workdir, record)
        checkpointer = checkpoints.TrainCheckpointer(
            workdir,
            keep=config.keep_checkpoints,
            best_metric=config.best_metric,
            best_mode="min",
            async_save=config.async_checkpoints,
        )
        state = _initial_state(checkpointer, config, init_fn, shapes, state_shardings)
        writer = logging_utils.MetricWriter(workdir)

        def run_eval(variables, split):
            return landmark_eval.evaluate(
                eval_fn,
                variables,
                config.data,
                split,
                image_size=size,
                global_batch_size=config.eval_batch_size,
                mesh=mesh,
            )

        start_step = int(state.step)
        train_iter = landmark_data.make_train_iterator(
            config.data,
            layout,
            image_size=size,
            global_batch_size=config.batch_size,
            seed=config.seed,
            start_step=start_step,
        )
        progress = logging_utils.ProgressLogger(
            length.total_steps, config.batch_size, start_step, extra=("point_error",)
        )
        logging.info(
            "Landmark pretraining: %d points, %d steps (global batch %d) on mesh %s from step %d.",
            layout.num_points,
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
                state, metrics = step_fn(state, batch)
                step += 1
                pending.append(metrics)
                if step == start_step + 1:
                    progress.reset_timer(step)  # leave compilation out of the rates

                if step % length.log_every == 0 or step == length.total_steps:
                    averaged = _average(pending)
                    pending = []
                    rates = progress.rates(step)
                    averaged["lr"] = float(schedules[optim.BACKBONE](step - 1))
                    progress.line(step, averaged, rates)
                    writer.write_scalars(step, {**averaged, **rates}, split="train")

                last_eval = None
                if step % length.eval_every == 0 or step == length.total_steps:
                    result = run_eval(state.eval_variables(), config.data.eval_split)
                    last_eval = {"nme": result["nme"]}
                    writer.write_scalars(step, last_eval, split=config.data.eval_split)
                    logging.info(
                        "step %d: %s NME %.4f on %d faces.",
                        step,
                        config.data.eval_split,
                        result["nme"],
                        result["num_examples"],
                    )
                    progress.reset_timer(step)

                stopping = stop.requested or checkpointer.reached_preemption(step)
                if (
                    step % length.checkpoint_every == 0
                    or step == length.total_steps
                    or stopping
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
                if stopping:
                    logging.warning("Stopped at step %d; the checkpoint resumes from here.", step)
                    break
        checkpointer.close()

        report = {}
        if step == length.total_steps:
            report = _report(workdir, config, run_eval, writer, step)
        writer.close()
    return report


def _initial_state(checkpointer, config, init_fn, shapes, state_shardings) -> TrainState:
    """Resume > init_from > fresh (as in `grefel_jax.train`)."""
    if checkpointer.latest_step() is not None:
        target = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            shapes,
            state_shardings,
        )
        model, train, step = checkpointer.restore(target.model_tree(), target.train_tree())
        logging.info("Resumed from %s at step %d.", checkpointer.directory, step)
        return TrainState.from_trees(model, train)
    state = jax.jit(init_fn, out_shardings=state_shardings)(jax.random.key(config.seed))
    if config.init_from:
        current = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        merged, _ = checkpoints.merge_pretrained(current, config.init_from)
        state = state.replace(
            params=jax.device_put(merged["params"], state_shardings.params),
            batch_stats=jax.device_put(merged["batch_stats"], state_shardings.batch_stats),
        )
    return state


def _report(workdir, config, run_eval, writer, step) -> dict:
    """The best checkpoint (lowest validation NME; what `init_from` loads) on the report split."""
    variables, _, meta = checkpoints.load_inference_checkpoint(workdir, check_shapes=False)
    split = config.landmarks.report_split
    result = run_eval(variables, split)
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
