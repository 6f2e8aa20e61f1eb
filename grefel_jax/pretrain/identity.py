"""Face-identity pretraining of the image backbone (IR-50), as a task of the one loop.

  python -m grefel_jax.pretrain identity --config configs/identity_synthetic.py \
      --workdir runs/identity [--config.num_train_steps=500 ...]

1. The dataset is labelled by identity (`synthetic_identities`, or your own
   `<identity>/<image>` folder prepared as `identity_folder`); its training identities are
   labels 0 .. N-1, its held-out splits hold other identities.
2. The task: `IdentityNet` (GReFEL's IR-50 + face.evoLVe's fourth stage and embedding layer +
   a margin head over the N training identities), trained with an additive angular margin
   loss (`identity.loss`: CosFace by default, ArcFace on request; docs/pretraining.md says
   why), on the same augmented input pipeline as GReFEL (only the `label` differs).
3. The loop (`grefel_jax.loop`): resume > `init_from` (e.g. a converted face.evoLVe `ir50.pth`)
   > fresh; face verification on `data.eval_split` every `eval_every_steps`, checkpoints
   kept: the last N and the best verification accuracy.
4. The report: the best checkpoint on `identity.report_split` (held-out identities):
   `W/identity_eval.json` (`verification_accuracy`, `tar_at_far_1e-3`, `num_pairs`, ...) and
   `W/identity_neighbours.png`.

No expression label reaches this task: the identity datasets store none (docs/pretraining.md).
`--config.init_from=W` in `grefel_jax.main` loads its IR-50 stages 1-3 as GReFEL's `ir_back`.
"""

from __future__ import annotations

import logging

import jax
from etils import epath

from grefel_jax import checkpoints, loop
from grefel_jax.data import builders
from grefel_jax.identity import evaluate as identity_eval
from grefel_jax.identity.trainer import (
    IdentityTrainer,
    build_identity_trainer,
    num_training_identities,
)


def pretrain(config, workdir: str) -> dict:
    """Trains (resuming from `workdir`), then writes the report.

    Returns:
      The report (`identity_eval.json`'s dict), or {} when the run stopped early (SIGTERM).
    """
    from grefel_jax.data import pipeline, source

    check_identity_dataset(config.data)
    info = pipeline.dataset_info(config.data)  # fails first if the dataset is not prepared
    where = f"{info.full_name} split {config.data.train_split!r}"
    identities = num_training_identities(
        source.split_labels(config.data, config.data.train_split), where
    )
    result = loop.run(config, workdir, lambda mesh: identity_task(config, info, identities, mesh))
    return result.report


def check_identity_dataset(data_config) -> None:
    """Raises ValueError (one line) unless `config.data` names an identity dataset: an
    expression dataset's labels must not reach identity pretraining."""
    if data_config.name not in builders.IDENTITY_DATASETS:
        raise ValueError(
            f"config.data.name={data_config.name!r}: identity pretraining reads a dataset "
            f"labelled by identity, one of {builders.IDENTITY_DATASETS}."
        )


def identity_task(config, info, num_identities: int, mesh: jax.sharding.Mesh) -> loop.Task:
    """The loop's Task for identity pretraining of `config` on the dataset `info`."""
    from grefel_jax.data import pipeline

    trainer = build_identity_trainer(config, info, num_identities, mesh)
    # Checkpoints carry a ModelRecord of the GReFEL model the backbone belongs to.
    record = checkpoints.ModelRecord(trainer.model_config, dataset=info.full_name)
    split = config.data.eval_split

    def train_batches(start_step: int):
        return pipeline.make_train_iterator(
            config.data,
            image_size=trainer.image_size,
            global_batch_size=config.batch_size,
            seed=config.seed,
            start_step=start_step,
        )

    def global_batch(host_batch):
        from grefel_jax import sharding

        return sharding.host_local_to_global(
            {"image": host_batch["image"], "label": host_batch["label"]}, mesh
        )

    def periodic(state, step: int) -> dict[str, float]:
        result = _verify(trainer, state.eval_variables(), config, split)
        logging.info(
            "step %d: %s verification accuracy %.4f ± %.4f, TAR@FAR=1e-3 %.4f "
            "(%d pairs of %d identities).",
            step,
            split,
            result["verification_accuracy"],
            result["verification_accuracy_std"],
            result["tar_at_far_1e-3"],
            result["num_pairs"],
            result["num_identities"],
        )
        return {k: float(result[k]) for k in ("verification_accuracy", "tar_at_far_1e-3")}

    def final(workdir: epath.Path, writer, step: int) -> dict:
        return _report(trainer, workdir, config, writer, step)

    return loop.Task(
        name="identity",
        length=trainer.length,
        mesh=mesh,
        record=record,
        abstract_state=trainer.abstract_state,
        state_shardings=trainer.state_shardings,
        init_state=trainer.init,
        step=trainer.step,
        train_batches=train_batches,
        global_batch=global_batch,
        schedules=trainer.schedules,
        evaluate=periodic,
        eval_split=split,
        best_metric="verification_accuracy",
        best_mode="max",
        report=final,
    )


def _embed(trainer: IdentityTrainer, variables, config, split: str) -> dict:
    return identity_eval.embed_split(
        trainer.embed,
        variables,
        config.data,
        split,
        image_size=trainer.image_size,
        global_batch_size=config.eval_batch_size,
        mesh=trainer.mesh,
    )


def _verify(trainer: IdentityTrainer, variables, config, split: str) -> dict:
    embedded = _embed(trainer, variables, config, split)
    return identity_eval.verify(embedded, pairs_per_fold=int(config.identity.pairs_per_fold))


def _report(trainer: IdentityTrainer, workdir, config, writer, step) -> dict:
    """The best checkpoint (highest validation verification accuracy; what `init_from`
    loads) on the report split of held-out identities."""
    variables, _, meta = checkpoints.load_inference_checkpoint(workdir, check_shapes=False)
    split = config.identity.report_split
    embedded = _embed(trainer, variables, config, split)
    result = identity_eval.verify(embedded, pairs_per_fold=int(config.identity.pairs_per_fold))
    writer.write_scalars(
        step,
        {k: result[k] for k in ("verification_accuracy", "tar_at_far_1e-3")},
        split=f"report_{split}",
    )
    report = identity_eval.write_report(
        workdir,
        embedded,
        result,
        config.data,
        split=split,
        step=meta.get("step") or step,
        source=str(meta["source"]),
    )
    logging.info(
        "%s verification accuracy %.4f ± %.4f, TAR@FAR=1e-3 %.4f on %d pairs (checkpoint "
        "step %s): %s",
        split,
        report["verification_accuracy"],
        report["verification_accuracy_std"],
        report["tar_at_far_1e-3"],
        report["num_pairs"],
        report["step"],
        epath.Path(workdir) / identity_eval.REPORT_JSON,
    )
    return report


def summary_line(workdir: str, report: dict) -> str:
    """The line the command prints when the run finished."""
    return (
        f"{workdir}/{identity_eval.REPORT_JSON}: verification accuracy "
        f"{report['verification_accuracy']:.4f} ± {report['verification_accuracy_std']:.4f}, "
        f"TAR@FAR=1e-3 {report['tar_at_far_1e-3']:.4f} on {report['num_pairs']} "
        f"{report['split']} pairs; {workdir}/{identity_eval.REPORT_PNG}; "
        f"TensorBoard: tensorboard --logdir {workdir}"
    )
