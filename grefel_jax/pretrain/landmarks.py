"""Landmark pretraining of the MobileFaceNet trunk + GDC head, as a task of the one loop.

  python -m grefel_jax.pretrain landmarks --config configs/landmarks_synthetic.py \
      --workdir runs/landmarks [--config.num_train_steps=500 ...]

1. The dataset must be prepared and store the layout's points (`data.landmark_layouts`).
2. The task: `LandmarkNet` (GReFEL's landmark branch + head), its optimizer and jitted step
   (`landmarks.trainer`), augmented batches whose flips permute left/right points.
3. The loop (`grefel_jax.loop`): resume > `init_from` (e.g. a converted official
   MobileFaceNet) > fresh; the validation NME every `eval_every_steps`, checkpoints kept:
   the last N and the lowest NME.
4. The report: the best checkpoint's NME on `landmarks.report_split`,
   `W/landmarks_eval.json` and `W/landmarks_eval.png` (16 faces, true vs predicted).

The workdir is a training workdir like any other: `--config.init_from=W` in
`grefel_jax.main` loads its `face_landback` trunk as GReFEL's landmark network.
"""

from __future__ import annotations

import logging

import jax
from etils import epath

from grefel_jax import checkpoints, loop, optim, sharding
from grefel_jax.data.landmark_layouts import layout_for
from grefel_jax.landmarks import data as landmark_data
from grefel_jax.landmarks import evaluate as landmark_eval
from grefel_jax.landmarks.trainer import LandmarkTrainer, build_landmark_trainer


def pretrain(config, workdir: str) -> dict:
    """Trains (resuming from `workdir`), then writes the report.

    Returns:
      The report (`landmarks_eval.json`'s dict), or {} when the run stopped early (SIGTERM).
    """
    from grefel_jax.data import pipeline

    layout = layout_for(config.data.name)
    info = pipeline.dataset_info(config.data)  # fails first if the dataset is not prepared
    landmark_data.check_landmark_dataset(config.data, layout)
    result = loop.run(config, workdir, lambda mesh: landmark_task(config, info, layout, mesh))
    return result.report


def landmark_task(config, info, layout, mesh: jax.sharding.Mesh) -> loop.Task:
    """The loop's Task for landmark pretraining of `config` on the dataset `info`."""
    trainer = build_landmark_trainer(config, info, layout, mesh)
    # Checkpoints carry a ModelRecord of the GReFEL model the trunk belongs to.
    record = checkpoints.ModelRecord(trainer.model_config, dataset=info.full_name)
    split = config.data.eval_split

    def train_batches(start_step: int):
        return landmark_data.make_train_iterator(
            config.data,
            trainer.layout,
            image_size=trainer.image_size,
            global_batch_size=config.batch_size,
            seed=config.seed,
            start_step=start_step,
        )

    def global_batch(host_batch):
        return sharding.host_local_to_global(
            {"image": host_batch["image"], "points": host_batch["points"]}, mesh
        )

    def periodic(state, step: int) -> dict[str, float]:
        result = _evaluate(trainer, state.eval_variables(), config, split)
        logging.info(
            "step %d: %s NME %.4f on %d faces.", step, split, result["nme"], result["num_examples"]
        )
        return {"nme": result["nme"]}

    def final(workdir: epath.Path, writer, step: int) -> dict:
        return _report(trainer, workdir, config, writer, step)

    return loop.Task(
        name="landmarks",
        length=trainer.length,
        mesh=mesh,
        record=record,
        abstract_state=trainer.abstract_state,
        state_shardings=trainer.state_shardings,
        init_state=trainer.init,
        step=trainer.step,
        train_batches=train_batches,
        global_batch=global_batch,
        # One optimizer group: trunk and head are all trained at `optim.lr_backbone`.
        schedules={optim.BACKBONE: trainer.schedules[optim.BACKBONE]},
        evaluate=periodic,
        eval_split=split,
        best_metric=config.best_metric,
        best_mode="min",
        report=final,
        progress_extra=("point_error",),
    )


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


def summary_line(workdir: str, report: dict) -> str:
    """The line the command prints when the run finished."""
    return (
        f"{workdir}/{landmark_eval.REPORT_JSON}: NME {report['nme']:.4f} on "
        f"{report['num_examples']} {report['split']} faces; "
        f"{workdir}/{landmark_eval.REPORT_PNG}; TensorBoard: tensorboard --logdir {workdir}"
    )
