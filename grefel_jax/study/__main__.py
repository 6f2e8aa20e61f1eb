r"""`python -m grefel_jax.study noise|imbalance`: a grid of training runs and its reports.

  python -m grefel_jax.study noise --config configs/demo.py --workdir runs/study_noise \
      --preset default
  python -m grefel_jax.study noise --config configs/rafdb.py --workdir runs/rafdb_noise \
      --preset full --label_files noisy_labels/rafdb_30.txt
  python -m grefel_jax.study imbalance --config configs/demo.py --workdir runs/study_lt

Each run is an ordinary training run in its own sub-workdir of `--workdir` (a re-run skips
finished runs and resumes an interrupted one from its checkpoint); `--config.x=y` overrides
apply to every run. Noise: each training label is flipped with probability r to a uniformly
drawn other class (test labels stay clean); `--label_files` adds runs on given label files
(one label per training record). Imbalance: long-tailed training subsets (exponential
profile) with each remedy of `--balancing`. Outputs: W/results.json (one row per run),
W/results.md (mean ± std over seeds), W/noise.png or W/imbalance.png. Presets and the
protocol: docs/robustness.md.
"""

from __future__ import annotations

import logging as std_logging
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

KINDS = ("noise", "imbalance")
FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Study directory: one sub-workdir per run, and reports.")
flags.DEFINE_enum("preset", "default", ["smoke", "default", "full"], "Grid size.")
flags.DEFINE_list("heads", None, "Heads (grefel_jax.study.grid.HEADS); default: the preset's.")
flags.DEFINE_list("seeds", None, "Seeds; default: the preset's.")
flags.DEFINE_integer("steps", None, "Training steps per run; default: the preset's.")
flags.DEFINE_list("rates", None, "noise: label-noise rates in [0, 1); default: the preset's.")
flags.DEFINE_list("label_files", [], "noise: extra runs on these label files.")
flags.DEFINE_list("ratios", None, "imbalance: imbalance ratios >= 1; default: the preset's.")
flags.DEFINE_list("balancing", None, "imbalance: none, sampler, class_weights.")
flags.DEFINE_string("split", None, "Clean split reported (default: the config's test split).")
flags.mark_flags_as_required(["config", "workdir"])


def _floats(values, flag: str, low: float, high: float) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in values)
    except ValueError:
        raise ValueError(f"--{flag}={','.join(values)}: expected numbers.") from None
    for v in numbers:
        if not low <= v < high:
            raise ValueError(f"--{flag}: {v} is outside [{low}, {high}).")
    return numbers


def build_grid(kind: str, preset: str):
    """The RunSpecs of `kind` at `preset`, with the flags' overrides."""
    from grefel_jax.study import grid

    settings = dict(grid.PRESETS[kind][preset])
    if FLAGS.heads:
        settings["heads"] = tuple(FLAGS.heads)
    if FLAGS.seeds:
        try:
            settings["seeds"] = tuple(int(s) for s in FLAGS.seeds)
        except ValueError:
            raise ValueError(f"--seeds={','.join(FLAGS.seeds)}: expected integers.") from None
    if FLAGS.steps is not None:
        if FLAGS.steps < 1:
            raise ValueError(f"--steps={FLAGS.steps}: must be >= 1.")
        settings["steps"] = FLAGS.steps
    grid.check_names(settings["heads"], settings.get("balancing", ()))
    if kind == "noise":
        if FLAGS.rates:
            settings["rates"] = _floats(FLAGS.rates, "rates", 0.0, 1.0)
        for path in FLAGS.label_files:
            if not Path(path).expanduser().is_file():
                raise ValueError(f"--label_files: {path}: no such file.")
        return grid.noise_grid(label_files=tuple(FLAGS.label_files), **settings)
    if FLAGS.ratios:
        settings["ratios"] = _floats(FLAGS.ratios, "ratios", 1.0, float("inf"))
    if FLAGS.balancing:
        settings["balancing"] = tuple(FLAGS.balancing)
        grid.check_names(balancing=settings["balancing"])
    return grid.imbalance_grid(**settings)


def main(argv):
    if len(argv) != 2 or argv[1] not in KINDS:
        raise app.UsageError(f"Expected one study kind, {' or '.join(KINDS)}; got {argv[1:]}.")
    kind = argv[1]
    import jax

    from grefel_jax import cli, logging_utils
    from grefel_jax.study import report, runner

    logging.use_absl_handler()
    std_logging.getLogger().setLevel(std_logging.INFO)
    logging_utils.quiet_library_logs()
    config = FLAGS.config
    workdir = Path(FLAGS.workdir)
    split = FLAGS.split or (config.final_eval_splits or (config.data.eval_split,))[0]
    if not jax.config.jax_compilation_cache_dir:
        # Runs of one head compile the same programs: compile once per head.
        jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
    try:
        with cli.user_errors(KeyError):
            if config.data.label_noise.get("file"):
                # Every run sets its own labels (a rate or one of --label_files).
                raise ValueError(
                    "--config.data.label_noise.file: a study sets each run's labels itself; "
                    "pass label files with --label_files instead."
                )
            specs = build_grid(kind, FLAGS.preset)
            logging.info("study %s/%s: %d runs into %s.", kind, FLAGS.preset, len(specs), workdir)
            rows = runner.run_study(
                config,
                specs,
                workdir,
                split=split,
                on_row=lambda rows: report.write_reports(rows, kind, workdir),
            )
    except runner.StudyInterrupted as e:
        print(f"Study interrupted ({e}); run the same command again to resume.", file=sys.stderr)
        sys.exit(1)
    paths = report.write_reports(rows, kind, workdir)
    print("\nStudy reports: " + ", ".join(str(p) for p in paths))


if __name__ == "__main__":
    from grefel_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
