r"""`python -m grefel_jax.pretrain landmarks|identity --config C --workdir W [--config.x=v]`.

Runs one pretraining to its end (resuming from W), writes its report and prints one line:
`W/landmarks_eval.json` (NME) or `W/identity_eval.json` (verification accuracy, TAR@FAR).
"""

from __future__ import annotations

import logging

from absl import app, flags
from ml_collections import config_flags

from grefel_jax.pretrain import TASKS

FLAGS = flags.FLAGS
# The config section that only each task's recipes have: a landmark recipe given to the
# identity task (or the reverse) fails in one line before any work.
_TASK_SECTION = {"landmarks": "landmarks", "identity": "identity"}


def main(argv):
    from grefel_jax import cli

    if len(argv) != 2 or argv[1] not in TASKS:
        cli.fail(
            f"usage: python -m grefel_jax.pretrain {{{'|'.join(TASKS)}}} --config C --workdir W"
        )
    run(argv[1], FLAGS.config, FLAGS.workdir)


def run(task: str, config, workdir: str) -> dict:
    """Runs pretraining `task` ('landmarks' or 'identity'); returns its report."""
    import jax
    from absl import logging as absl_logging

    from grefel_jax import cli, logging_utils, sharding

    section = _TASK_SECTION[task]
    if section not in config:
        other = (
            next(t for t, s in _TASK_SECTION.items() if s in config)
            if any(s in config for s in _TASK_SECTION.values())
            else None
        )
        hint = f" (it is a {other} recipe)" if other else ""
        cli.fail(f"--config has no `{section}` section: not a {task} pretraining recipe{hint}.")
    try:
        sharding.maybe_initialize_distributed()
    except ValueError as e:
        cli.fail(str(e))
    absl_logging.use_absl_handler()
    logging.getLogger().setLevel(logging.INFO)
    logging_utils.quiet_library_logs()
    if task == "landmarks":
        from grefel_jax.pretrain import landmarks as module
    else:
        from grefel_jax.pretrain import identity as module
    with cli.user_errors():
        report = module.pretrain(config, workdir)
    if report and jax.process_index() == 0:
        print("\n" + module.summary_line(workdir, report))
    return report


def define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config",
        None,
        "Pretraining recipe (configs/landmarks_*.py, configs/identity_*.py).",
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "Where checkpoints, logs and the report are written.")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    from grefel_jax import cli

    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
