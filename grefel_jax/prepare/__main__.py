r"""Builds one dataset into ArrayRecord files and prints its split sizes and class counts.

  python -m grefel_jax.prepare --dataset synthetic_faces --config demo_96 \
      --data_dir ~/tensorflow_datasets
  python -m grefel_jax.prepare --dataset affectnet --config 7 \
      --manual_dir ~/downloads/AffectNet --data_dir ~/tensorflow_datasets
  python -m grefel_jax.prepare --dataset image_folder --config mine \
      --manual_dir ~/photos_by_class --align --landmarks runs/landmarks

`--align` (image_folder only) stores each image as its face aligned onto a five-point
template, as `predict --align` does (`grefel_jax.prepare.align_folder`), under the config
`<config>_aligned`, and writes the aligned / fallback counts to `alignment.json` there.
`python -m grefel_jax.data.prepare` is the same command (its older name).
"""

from __future__ import annotations

import sys

from absl import app, flags, logging

from grefel_jax.data import builders, errors
from grefel_jax.prepare import align_folder
from grefel_jax.prepare.build import prepare

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags, defined only when a command line runs (this module or its alias
    `grefel_jax.data.prepare`): an importer's own flags must not clash with them."""
    flags.DEFINE_enum("dataset", None, list(builders.DATASETS), "Dataset to build.")
    flags.DEFINE_string(
        "config",
        None,
        "Builder config: image size for synthetic_faces ('96', 'demo_96', '64', '224', "
        "'tiny_64'), '96' or 'tiny_64' for synthetic_identities, '7' or '8' for affectnet, a "
        "name of your choice for image_folder and identity_folder.",
    )
    flags.DEFINE_string("manual_dir", None, "Folder with the official files (manual datasets).")
    flags.DEFINE_string("data_dir", "~/tensorflow_datasets", "Where prepared datasets go.")
    flags.DEFINE_bool("skip_corrupt", False, "Skip undecodable images (counted), don't fail.")
    flags.DEFINE_bool("overwrite", False, "Rebuild even if the dataset is already prepared.")
    # Alignment (image_folder only): the flags of `predict --align` where they mean the same.
    flags.DEFINE_bool(
        "align", False, "image_folder: store each image's largest face aligned onto a template."
    )
    flags.DEFINE_string(
        "landmarks", None, "Landmark pretraining workdir (or converted checkpoint) for --align."
    )
    flags.DEFINE_string(
        "align_template",
        "arcface",
        "Template of --align: arcface (RAF-DB stand-in) or synthetic_faces.",
    )
    flags.DEFINE_integer(
        "align_size", align_folder.DEFAULT_SIZE, "Side in pixels of the aligned crops."
    )
    flags.DEFINE_string("detector", "ssd", "Face detector of --align: ssd (CNN) or haar.")
    flags.DEFINE_float("margin", 0.2, "--align: context of the square crop (fallback), fraction.")


def main(argv):
    del argv
    if not FLAGS.dataset:
        raise app.UsageError(f"--dataset is required: one of {', '.join(builders.DATASETS)}")
    logging.set_verbosity(logging.WARNING)
    try:
        aligner = align_folder.from_flags(
            FLAGS.dataset,
            align=FLAGS.align,
            landmarks=FLAGS.landmarks,
            template=FLAGS.align_template,
            detector=FLAGS.detector,
            size=FLAGS.align_size,
            margin=FLAGS.margin,
        )
        prepare(
            FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            config=FLAGS.config,
            manual_dir=FLAGS.manual_dir,
            skip_corrupt=FLAGS.skip_corrupt,
            overwrite=FLAGS.overwrite,
            align=aligner,
        )
    except errors.DataError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    define_flags()
    from grefel_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
