r"""Exports a checkpoint as StableHLO and ONNX artifacts with a model.json beside them.

  python -m grefel_jax.export --checkpoint runs/demo --out exported/demo
  python -m grefel_jax.export --checkpoint converted/poster_rafdb --dataset raf_db \
      --out exported/poster --format stablehlo --batch 8 --dtype bfloat16

`--checkpoint` is anything `grefel_jax.predict` accepts. Writes into `--out` (which must be
new or empty):
  model.stablehlo  `jax.export` of the model with its weights, batch-polymorphic unless
                   `--batch N`; deserialize with `jax.export.deserialize`, call `.call`;
  model.onnx       the same function through jax2onnx, checked with `onnx.checker`;
  model.json       class names, input size, mean/std, crop and alignment settings, outputs,
                   the versions used and each artifact's SHA-256 and self-check result.
Every artifact is run once on a fixed random batch and compared with the jitted model; one
that differs by more than 1e-4 (float32) is not written. Run them with
`python -m grefel_jax.export.predict DIR image...`.

Exit status: 0 when every requested format was written; 1 when some format failed (the
others were written, model.json lists the failure); 2 on bad flags or an unreadable
checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

EXIT_OK = 0
EXIT_SOME_FAILED = 1


def main(argv: Sequence[str]) -> int:
    """Entry point of `python -m grefel_jax.export`; bad input -> one line via cli.fail."""
    from grefel_jax import cli
    from grefel_jax.export import exporter

    FLAGS = flags.FLAGS
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {list(argv[1:])}; everything is a --flag.")
    if not FLAGS.checkpoint:
        cli.fail("--checkpoint is required (workdir or inference checkpoint).")
    if not FLAGS.out:
        cli.fail("--out is required (the export directory).")
    try:
        formats = exporter.parse_formats(FLAGS.format)
        batch = exporter.parse_batch(FLAGS.batch)
        dtype = exporter.parse_dtype(FLAGS.dtype)
    except ValueError as e:
        cli.fail(str(e))
    platforms = tuple(p.strip() for p in FLAGS.platforms.split(",") if p.strip())
    class_names = [n.strip() for n in FLAGS.class_names.split(",")] if FLAGS.class_names else None
    try:
        result = exporter.export_checkpoint(
            FLAGS.checkpoint,
            FLAGS.out,
            formats=formats,
            batch=batch,
            dtype=dtype,
            dataset=FLAGS.dataset,
            class_names=class_names,
            platforms=platforms or ("cpu",),
        )
    except exporter.ExportError as e:
        cli.fail(str(e))
    for fmt, entry in result.manifest["artifacts"].items():
        print(
            f"{fmt}: {result.directory / entry['file']} ({entry['bytes'] / 1e6:.1f} MB), "
            f"max |artifact - JAX| = {entry['check']['max_abs_diff']:.2e} "
            f"on {entry['check']['batch']} random inputs",
            file=sys.stderr,
        )
    for fmt, message in result.errors.items():
        print(f"ERROR: {fmt}: {message}", file=sys.stderr)
    print(f"wrote {result.directory / 'model.json'}", file=sys.stderr)
    return EXIT_SOME_FAILED if result.errors else EXIT_OK


def _define_flags() -> None:
    flags.DEFINE_string(
        "checkpoint", None, "Training workdir, step directory or inference checkpoint."
    )
    flags.DEFINE_string("out", None, "Export directory (created; must be empty).")
    flags.DEFINE_string("format", "stablehlo,onnx", "Comma-separated: stablehlo, onnx.")
    flags.DEFINE_string("batch", "dynamic", "Batch size of the artifacts: 'dynamic' or N.")
    flags.DEFINE_string("dtype", "float32", "Backbone compute dtype: float32 or bfloat16.")
    flags.DEFINE_string("platforms", "cpu", "StableHLO lowering platforms, e.g. 'cpu,cuda'.")
    flags.DEFINE_string("dataset", None, "Use this dataset's class names (e.g. raf_db).")
    flags.DEFINE_string("class_names", None, "Comma-separated class names (overrides all).")


if __name__ == "__main__":
    from absl import app

    from grefel_jax import cli

    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
