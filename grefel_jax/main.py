r"""Entry point: train, evaluate, or both.

  python -m grefel_jax.main --config configs/rafdb.py --workdir runs/rafdb \
      [--config.optim.lr_backbone=1e-5 ...] [--config.mode=eval]

Modes (`config.mode`): `train` (checkpoints only), `train_and_eval` (periodic evaluation,
keep-best, final reports), `eval` (report the workdir's best checkpoint on
`config.data.eval_split` and `config.final_eval_splits`). A workdir that already holds
checkpoints resumes from the newest one.
"""

from __future__ import annotations

import json
import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config file (configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Where checkpoints, logs and reports are written.")
flags.mark_flags_as_required(["config", "workdir"])

MODES = ("train", "eval", "train_and_eval")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Everything heavy is imported after flag parsing so that --help and bad flags are fast.
    import jax

    from grefel_jax import cli, evaluate, logging_utils, sharding, train

    config = FLAGS.config
    if config.mode not in MODES:
        cli.fail(f"config.mode={config.mode!r}: expected one of {MODES}.")
    try:
        sharding.maybe_initialize_distributed()
    except ValueError as e:  # a launcher set an inconsistent environment
        cli.fail(str(e))
    # absl logging to stderr with times, plus python logging from the library modules.
    logging.use_absl_handler()
    std_logging.getLogger().setLevel(std_logging.INFO)
    logging_utils.quiet_library_logs()
    logging.info(
        "JAX %s: %d process(es), %d device(s) (%s).",
        jax.__version__,
        jax.process_count(),
        jax.device_count(),
        jax.devices()[0].device_kind,
    )
    with cli.user_errors():
        if config.mode in ("eval", "train_and_eval"):
            # A misspelt split fails now, not after the training steps have compiled.
            evaluate.check_split(config.data, config.data.eval_split, "config.data.eval_split")
            for split in config.final_eval_splits:
                evaluate.check_split(config.data, split, "config.final_eval_splits")
        if config.mode == "eval":
            mesh = sharding.make_mesh(config.mesh)
            for split in dict.fromkeys([config.data.eval_split, *config.final_eval_splits]):
                evaluate.evaluate_workdir(config, FLAGS.workdir, split=split, mesh=mesh)
        else:
            train.train_and_evaluate(
                config,
                FLAGS.workdir,
                evaluate_during_training=config.mode == "train_and_eval",
            )
    if jax.process_index() == 0:
        print(
            f"\nLogs: {FLAGS.workdir}/metrics.jsonl; "
            f"TensorBoard: tensorboard --logdir {FLAGS.workdir}"
        )
        from etils import epath

        pngs = sorted(str(p) for p in epath.Path(FLAGS.workdir).glob("confusion_*.png"))
        reports = sorted(str(p) for p in epath.Path(FLAGS.workdir).glob("eval_*.json"))
        for path in reports:
            report = json.loads(epath.Path(path).read_text())
            print(
                f"  {path}: accuracy {report['primary/accuracy']:.4f} (corrected "
                f"{report['corrected/accuracy']:.4f}) on {report['num_examples']} examples"
            )
        for path in pngs:
            print(f"  {path}")


if __name__ == "__main__":
    from grefel_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
