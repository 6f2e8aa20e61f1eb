r"""Evaluation: a jitted eval step, a full pass over a split, reports, and a CLI.

  python -m grefel_jax.evaluate --checkpoint runs/demo --split test
  python -m grefel_jax.evaluate --checkpoint converted/poster_rafdb \
      --config configs/rafdb.py --split test --output_dir runs/poster_rafdb_eval

`--checkpoint` is a training workdir (best checkpoint if one was recorded, else the latest;
EMA weights if EMA was on) or an inference checkpoint. The data section comes from
`--config` if given, else from the workdir's `config.json`. Writes `eval_<split>.json` and
`confusion_<split>_{primary,corrected}.png` into `--output_dir` (default: the checkpoint
folder) and prints the main numbers.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from etils import epath

from grefel_jax import checkpoints, settings, sharding
from grefel_jax import metrics as metrics_lib
from grefel_jax.models import GReFEL

PyTree = Any


def eval_step(
    variables: Mapping[str, PyTree], batch: Mapping[str, jax.Array], *, model: GReFEL
) -> dict[str, jax.Array]:
    """Sufficient statistics of one batch (see metrics.batch_statistics).

    Args:
      variables: `{'params', 'batch_stats'}`.
      batch: `image (B, S, S, 3) float32`, `label (B,) int32`, `mask (B,) bool`.
    """
    outputs = model.apply(variables, batch["image"], train=False)
    return metrics_lib.batch_statistics(
        outputs["probs"], outputs["corrected_probs"], batch["label"], batch["mask"]
    )


class Evaluator:
    """Runs `eval_step` over a whole split and summarises.

    Every example is counted exactly once: the pipeline pads the last batch and marks the
    padding with `mask=False`; each host feeds its own share.
    """

    def __init__(
        self,
        model: GReFEL,
        data_config: ml_collections.ConfigDict,
        *,
        split: str,
        mesh: jax.sharding.Mesh,
        global_batch_size: int,
        image_size: int,
        class_names: Sequence[str],
    ):
        sharding.check_batch_size(global_batch_size, mesh, "config.eval_batch_size")
        self.data_config = data_config
        self.split = split
        self.mesh = mesh
        self.global_batch_size = global_batch_size
        self.image_size = image_size
        self.class_names = list(class_names)
        self._step = jax.jit(
            functools.partial(eval_step, model=model), out_shardings=sharding.replicated(mesh)
        )

    def statistics(self, variables: Mapping[str, PyTree]) -> dict[str, Any]:
        """Summed statistics over the split (host numpy)."""
        from grefel_jax.data import pipeline

        iterator = pipeline.make_eval_iterator(
            self.data_config,
            self.split,
            image_size=self.image_size,
            global_batch_size=self.global_batch_size,
        )
        totals = None
        for batch in iterator:
            batch = sharding.host_local_to_global(
                {"image": batch["image"], "label": batch["label"], "mask": batch["mask"]},
                self.mesh,
            )
            stats = self._step(variables, batch)
            totals = stats if totals is None else jax.tree.map(jnp.add, totals, stats)
        if totals is None:
            raise ValueError(f"Split {self.split!r} of {self.data_config.name} is empty.")
        return jax.device_get(totals)

    def run(self, variables: Mapping[str, PyTree]) -> dict[str, Any]:
        """The summary dict of metrics.summarize."""
        summary = metrics_lib.summarize(self.statistics(variables), self.class_names)
        summary["split"] = self.split
        return summary


def log_summary(summary: Mapping[str, Any], split: str, step: int | None = None) -> None:
    """One console line per prediction."""
    at = f" at step {step}" if step is not None else ""
    for name in metrics_lib.PREDICTIONS:
        logging.info(
            "eval %s%s [%s]: acc %.4f | mean class acc %.4f | macro-F1 %.4f | NLL %.4f | "
            "ECE %.4f (%d examples)",
            split,
            at,
            name,
            summary[f"{name}/accuracy"],
            summary[f"{name}/mean_class_accuracy"],
            summary[f"{name}/macro_f1"],
            summary[f"{name}/nll"],
            summary[f"{name}/ece"],
            summary["num_examples"],
        )


def write_report(
    summary: Mapping[str, Any],
    output_dir: str | epath.PathLike,
    split: str,
    class_names: Sequence[str],
    *,
    metadata: Mapping[str, Any] | None = None,
    writer=None,
    step: int = 0,
) -> dict[str, str]:
    """Writes `eval_<split>.json` and the confusion-matrix PNGs; returns their paths."""
    output_dir = epath.Path(output_dir)
    paths = {}
    if jax.process_index() != 0:
        return paths
    output_dir.mkdir(parents=True, exist_ok=True)
    report = dict(summary)
    report["class_names"] = list(class_names)
    if metadata:
        report["checkpoint"] = {k: v for k, v in metadata.items() if k != "metrics"}
    paths["json"] = str(output_dir / f"eval_{split}.json")
    epath.Path(paths["json"]).write_text(json.dumps(report, indent=2, default=str))
    for name in metrics_lib.PREDICTIONS:
        image = metrics_lib.confusion_matrix_figure(
            summary[f"{name}/confusion_matrix"],
            class_names,
            title=f"{split} ({name}) acc {summary[f'{name}/accuracy']:.3f}",
        )
        paths[f"confusion_{name}"] = str(output_dir / f"confusion_{split}_{name}.png")
        metrics_lib.save_png(image, paths[f"confusion_{name}"])
        if writer is not None:
            writer.write_image(step, f"{split}/confusion_{name}", image)
    return paths


def evaluate_checkpoint(
    checkpoint: str,
    data_config: ml_collections.ConfigDict,
    *,
    split: str,
    mesh: jax.sharding.Mesh,
    global_batch_size: int,
    output_dir: str | None = None,
    compute_dtype=jnp.float32,
    writer=None,
    step: int | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Loads a workdir / inference checkpoint, evaluates `split`, writes the report.

    Returns:
      (summary, paths of the written files).
    """
    from grefel_jax.data import pipeline

    check_split(data_config, split)
    variables, model_config, metadata = checkpoints.load_inference_checkpoint(checkpoint)
    info = pipeline.dataset_info(data_config)
    if info.num_classes != model_config.head.num_classes:
        raise ValueError(
            f"{checkpoint}: the model has {model_config.head.num_classes} classes but "
            f"{info.full_name} has {info.num_classes}."
        )
    model = settings.make_model(model_config, compute_dtype)
    replicated = sharding.replicated(mesh)
    variables = jax.device_put(variables, replicated)
    evaluator = Evaluator(
        model,
        data_config,
        split=split,
        mesh=mesh,
        global_batch_size=global_batch_size,
        image_size=model_config.backbone.image_size,
        class_names=info.class_names,
    )
    summary = evaluator.run(variables)
    if metadata.get("step") is not None:
        summary["checkpoint_step"] = metadata["step"]
    log_summary(summary, split, metadata.get("step"))
    paths = write_report(
        summary,
        output_dir or checkpoint,
        split,
        info.class_names,
        metadata=metadata,
        writer=writer,
        step=step if step is not None else int(metadata.get("step") or 0),
    )
    return summary, paths


def check_split(data_config: ml_collections.ConfigDict, split: str, flag: str = "split") -> None:
    """Raises ValueError (one line naming `flag`, the dataset and its splits) when `split` is
    neither a split of the prepared dataset nor a TFDS split expression (`train[:10%]`).

    Reads only the dataset's metadata: called before the checkpoint is loaded and anything
    is compiled.
    """
    from grefel_jax.data import pipeline, source

    info = pipeline.dataset_info(data_config)
    if not source.is_split_expression(split) and split not in info.split_sizes:
        raise ValueError(
            f"{flag}={split!r}: {info.full_name} has no such split; its splits are "
            f"{sorted(info.split_sizes)}."
        )


def evaluate_workdir(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    split: str,
    mesh: jax.sharding.Mesh,
    writer=None,
    step: int | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The final report of a training run (best checkpoint) on one split."""
    return evaluate_checkpoint(
        workdir,
        config.data,
        split=split,
        mesh=mesh,
        global_batch_size=config.eval_batch_size,
        output_dir=workdir,
        compute_dtype=settings.compute_dtype(config),
        writer=writer,
        step=step,
    )


# --------------------------------------------------------------------------------------------
# CLI.
# --------------------------------------------------------------------------------------------


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
    """The resolved config a training run wrote into its workdir."""
    path = epath.Path(workdir) / "config.json"
    if not path.exists():
        raise checkpoints.CheckpointError(
            f"{path}: missing; pass --config configs/<dataset>.py to say which data to use."
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def main(argv: Sequence[str]) -> None:
    """Entry point of `python -m grefel_jax.evaluate`."""
    del argv
    from absl import flags

    from grefel_jax import cli, logging_utils

    FLAGS = flags.FLAGS
    logging_utils.quiet_library_logs()
    with cli.user_errors():
        sharding.maybe_initialize_distributed()  # ValueError: inconsistent cluster environment
        if not checkpoints.absolute_path(FLAGS.checkpoint).exists():
            raise checkpoints.CheckpointError(
                f"--checkpoint={FLAGS.checkpoint}: no such file or directory."
            )
        config = FLAGS.config
        if config is None:
            config = load_workdir_config(FLAGS.checkpoint)
        split = FLAGS.split or config.data.eval_split
        check_split(config.data, split, "--split" if FLAGS.split else "config.data.eval_split")
        mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
        batch_size = FLAGS.batch_size or config.eval_batch_size
        summary, paths = evaluate_checkpoint(
            FLAGS.checkpoint,
            config.data,
            split=split,
            mesh=mesh,
            global_batch_size=batch_size,
            output_dir=FLAGS.output_dir,
            compute_dtype=settings.compute_dtype(config),
        )
    if jax.process_index() == 0:
        print(
            f"{split}: accuracy {summary['primary/accuracy']:.4f} (corrected "
            f"{summary['corrected/accuracy']:.4f}), macro-F1 {summary['primary/macro_f1']:.4f}"
        )
        for kind, path in paths.items():
            print(f"  {kind}: {path}")


def _define_flags():
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config file (its data section says which dataset to read).",
        lock_config=True,
    )
    flags.DEFINE_string("checkpoint", None, "Training workdir or inference checkpoint.")
    flags.DEFINE_string("split", None, "Split to evaluate (default: config.data.eval_split).")
    flags.DEFINE_string("output_dir", None, "Where reports go (default: the checkpoint folder).")
    flags.DEFINE_integer("batch_size", None, "Global eval batch (default: eval_batch_size).")
    flags.mark_flags_as_required(["checkpoint"])


if __name__ == "__main__":
    from absl import app

    from grefel_jax import cli

    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
