r"""`python -m grefel_jax.study noise|imbalance`: a grid of training runs and its reports.

  python -m grefel_jax.study noise --config configs/demo.py --workdir runs/study_noise \
      --preset smoke
  python -m grefel_jax.study noise --config configs/demo.py --workdir runs/study_noise \
      --preset symmetric   # then symmetric2, pairs, pairs2, anchors, anchors_pairs
  python -m grefel_jax.study imbalance --config configs/demo.py --workdir runs/study_lt \
      --preset imbalance
  python -m grefel_jax.study noise --config configs/rafdb.py --workdir runs/rafdb_noise \
      --preset full --label_files noisy_labels/rafdb_30.txt

Each run is an ordinary training run in its own sub-workdir of `--workdir` (a re-run skips
finished runs and resumes an interrupted one from its checkpoint); `--config.x=y` overrides
apply to every run. Runs start from the config's `init_from` (the demo: the packaged
pretrained backbones) unless `--init_from` says otherwise, and evaluate the clean test split
every `eval_every` steps: each row has the peak, the final and the step of the peak, and for
noise the training accuracy on the given labels and the memorised fraction. Noise: each
training label is flipped with probability r, to a uniformly drawn other class (`symmetric`)
or to its confusable partner (`pairs`); test labels stay clean; `--label_files` adds runs on
given label files (one label per training record). Imbalance: long-tailed training subsets
(exponential profile) with each remedy of `--balancing`. Outputs (every finished run of the
workdir in the preset's regime, so presets run one after another share one report):
W/results.json (one row per run), W/results.md (mean ± std over seeds, and the computed
summary), W/noise.png or W/imbalance.png. Presets, their cost and the protocol:
docs/robustness.md.
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
flags.DEFINE_string(
    "preset",
    "smoke",
    "Grid: noise: smoke, symmetric, symmetric2, pairs, pairs2, anchors, anchors_pairs, full, "
    "default (issue 11's short grid); imbalance: smoke, imbalance, imbalance_grefel, "
    "imbalance_trust, full, default. See docs/robustness.md.",
)
flags.DEFINE_string(
    "init_from",
    None,
    "Pretrained sources of every run, as config.init_from (comma-separated workdirs or "
    "package:NAME; '' = random weights); default: the config's own.",
)
flags.DEFINE_list("heads", None, "Heads (grefel_jax.study.grid.HEADS); default: the preset's.")
flags.DEFINE_list("seeds", None, "Seeds; default: the preset's.")
flags.DEFINE_integer("steps", None, "Training steps per run; default: the preset's.")
flags.DEFINE_integer(
    "train_records", None, "Train on the first N training records; default: the preset's."
)
flags.DEFINE_integer("eval_every", None, "Test evaluation period (steps); default: the preset's.")
flags.DEFINE_list("rates", None, "noise: label-noise rates in [0, 1); default: the preset's.")
flags.DEFINE_list("kinds", None, "noise: noise kinds, symmetric and/or pairs; default: preset's.")
flags.DEFINE_list("label_files", [], "noise: extra runs on these label files.")
flags.DEFINE_list("ratios", None, "imbalance: imbalance ratios >= 1; default: the preset's.")
flags.DEFINE_list("balancing", None, "imbalance: none, sampler, class_weights.")
flags.DEFINE_string("split", None, "Clean split evaluated (default: the config's test split).")
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


def check_init_from(value, flag: str) -> str:
    """The normalised init_from string, each source checked to exist (packaged backbone,
    workdir or checkpoint file), so a typo stops before anything compiles.

    Raises:
      ValueError: one line naming `flag` and the source.
    """
    from grefel_jax.checkpoints import pretrained
    from grefel_jax.study import grid

    sources = grid.normalise_init(value)
    for source in filter(None, sources.split(",")):
        try:
            path = pretrained.resolve_source(source)
        except Exception as e:  # CheckpointError: an unknown packaged backbone
            raise ValueError(f"{flag}: {e}") from None
        if not Path(path).expanduser().exists():
            raise ValueError(
                f"{flag}: source {source!r} is neither a packaged backbone (package:NAME) nor "
                "an existing workdir or checkpoint."
            )
    return sources


def build_grid(kind: str, preset: str, init_from: str):
    """The RunSpecs of `kind` at `preset`, with the flags' overrides, starting from
    `init_from` (normalised sources; '' = random weights)."""
    from grefel_jax.study import grid

    if preset not in grid.PRESETS[kind]:
        raise ValueError(
            f"--preset={preset}: unknown for the {kind} study; expected one of "
            f"{list(grid.PRESETS[kind])}."
        )
    settings = dict(grid.PRESETS[kind][preset])
    if FLAGS.heads:
        settings["heads"] = tuple(FLAGS.heads)
    if FLAGS.seeds:
        try:
            settings["seeds"] = tuple(int(s) for s in FLAGS.seeds)
        except ValueError:
            raise ValueError(f"--seeds={','.join(FLAGS.seeds)}: expected integers.") from None
    for flag in ("steps", "eval_every", "train_records"):
        value = getattr(FLAGS, flag)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{flag}={value}: must be >= 1.")
            if flag == "train_records" and kind != "noise":
                raise ValueError("--train_records: only for the noise study.")
            settings[flag] = value
    grid.check_names(settings["heads"], settings.get("balancing", ()))
    settings["init_from"] = init_from
    if kind == "noise":
        if FLAGS.rates:
            settings["rates"] = _floats(FLAGS.rates, "rates", 0.0, 1.0)
        if FLAGS.kinds:
            settings["kinds"] = tuple(FLAGS.kinds)
        grid.check_names(kinds=settings.get("kinds", ()))
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
    try:
        with cli.user_errors(KeyError):
            if config.data.label_noise.get("file"):
                # Every run sets its own labels (a rate or one of --label_files).
                raise ValueError(
                    "--config.data.label_noise.file: a study sets each run's labels itself; "
                    "pass label files with --label_files instead."
                )
            if FLAGS.init_from is not None:
                init_from = check_init_from(FLAGS.init_from, "--init_from")
            else:
                init_from = check_init_from(config.init_from, "--config.init_from")
            specs = build_grid(kind, FLAGS.preset, init_from)
            if specs and specs[0].train_records is not None:
                runner.training_set(config.data, specs[0].train_records)  # checks the size
            logging.info("study %s/%s: %d runs into %s.", kind, FLAGS.preset, len(specs), workdir)
            if not jax.config.jax_compilation_cache_dir:
                # Runs of one head compile the same programs: compile once per head.
                jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))

            def write(rows=None):
                del rows  # the report covers every finished run of this regime in the workdir
                finished = runner.finished_rows(workdir, kind, like=specs[0] if specs else None)
                return report.write_reports(finished, kind, workdir) if finished else []

            runner.run_study(config, specs, workdir, split=split, study=kind, on_row=write)
    except runner.StudyInterrupted as e:
        print(f"Study interrupted ({e}); run the same command again to resume.", file=sys.stderr)
        sys.exit(1)
    paths = write()
    print("\nStudy reports: " + ", ".join(str(p) for p in paths))
    if kind == "noise" and paths:
        rows = runner.finished_rows(workdir, kind, like=specs[0])
        for line in report.summary_lines(rows):
            print(line)


if __name__ == "__main__":
    from grefel_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
