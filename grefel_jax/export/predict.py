r"""Predicts expressions from an export directory alone: no model code, no checkpoint.

  python -m grefel_jax.export.predict exported/demo faces/
  python -m grefel_jax.export.predict exported/demo --format onnx --json predictions.json a.png

Inputs are face crops (files and/or directories, searched recursively), fed whole as
`python -m grefel_jax.predict --no-detect` does: decoded to upright RGB
(`grefel_jax.preprocess.load_image`), resized and normalized as `model.json['input']` says,
run through `DIR/model.stablehlo` (jax) or `DIR/model.onnx` (onnxruntime; jax not imported)
after checking the file's SHA-256 against model.json. The table and `--json` output have
the layout of `predict --no-detect` (the JSON's `checkpoint` is the one exported).

Imports: numpy, PIL, OpenCV (the report module), and jax or onnxruntime; never flax or
`grefel_jax.models`. Exit status as predict: 0 all read, 1 some input unreadable, 2 fatal.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from grefel_jax.export import manifest as manifest_lib
from grefel_jax.export.preprocessing import InputSpec, preprocess_batch
from grefel_jax.inference.report import EXIT_FATAL, EXIT_OK, EXIT_SOME_FAILED

DEFAULT_BATCH = 32  # predict's default, so batch-dependent heads see the same batches.


def run(
    export_dir: str | os.PathLike,
    inputs: Sequence[str],
    *,
    fmt: str | None = None,
    json_path: str | None = None,
    batch_size: int | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The runner without flag parsing; returns the exit status (see the module docstring).

    Args:
      export_dir: a directory written by `python -m grefel_jax.export`.
      inputs: image files and/or directories.
      fmt: 'stablehlo' or 'onnx' (None: stablehlo when exported, else onnx).
      json_path: write the JSON report there ('-' = stdout instead of the table).
      batch_size: faces per call of a batch-polymorphic artifact (default 32, as predict);
        a fixed-batch artifact runs its own batch size, padding the last batch.
      stdout / stderr: streams (tests pass StringIO).
    """
    import numpy as np

    from grefel_jax.export import runtimes
    from grefel_jax.inference import faces as faces_lib
    from grefel_jax.inference import images as images_lib
    from grefel_jax.inference import report, results

    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr

    def fatal(message: str) -> int:
        print(f"ERROR: {' '.join(str(message).split())}", file=stderr)
        return EXIT_FATAL

    if not inputs:
        return fatal("no images given (pass files and/or directories).")
    try:
        manifest = manifest_lib.read_manifest(export_dir)
        if fmt is None:
            fmt = "stablehlo" if "stablehlo" in manifest["artifacts"] else "onnx"
        if fmt not in manifest_lib.FORMATS:
            raise ValueError(f"--format={fmt!r}: expected stablehlo or onnx.")
        path = manifest_lib.artifact_path(export_dir, manifest, fmt)
        spec = InputSpec.from_manifest(manifest["input"])
        runtime = runtimes.load_runtime(path, fmt, manifest)
    except (OSError, ValueError, ImportError) as e:
        return fatal(e)
    fixed = manifest["batch"] if isinstance(manifest["batch"], int) else None
    if batch_size is not None and batch_size < 1:
        return fatal(f"--batch_size={batch_size}: must be >= 1.")
    if fixed and batch_size not in (None, fixed):
        return fatal(f"--batch_size={batch_size}: {export_dir} was exported with --batch {fixed}.")
    chunk = fixed or batch_size or DEFAULT_BATCH
    names = tuple(manifest["class_names"])

    def forward(crops):
        batch = preprocess_batch(crops, spec)
        real = len(batch)
        if fixed and real < fixed:  # The exporter refuses fixed batches for batch-dependent heads.
            batch = np.concatenate([batch, np.zeros((fixed - real, *batch.shape[1:]), np.float32)])
        return {k: v[:real] for k, v in runtime(batch).items()}

    entries = list(images_lib.expand_inputs(inputs))
    table_to_stdout = json_path != "-"
    table = report.TableWriter(stdout, file_width=min(60, max(len(p) for p, _ in entries)))
    if table_to_stdout:
        table.header()
    done: list = []
    queue: list = []  # Results in input order, waiting for their batch.
    crops: list = []

    def flush():
        outputs = forward(crops) if crops else {}
        row = 0
        for result in queue:
            for face in result.faces:
                results.fill_face(face, outputs, row, names)
                row += 1
            if table_to_stdout:
                table.write(result)
            elif result.error is not None:
                print(f"ERROR: {result.error}", file=stderr)
            done.append(result)
        queue.clear()
        crops.clear()

    for source, problem in entries:
        if problem is not None:
            queue.append(results.ImagePrediction(source, error=problem))
            continue
        try:
            image = images_lib.load_image(source)
        except images_lib.ImageReadError as e:
            queue.append(results.ImagePrediction(source, error=str(e)))
            continue
        result = results.ImagePrediction(source, image_shape=tuple(int(s) for s in image.shape[:2]))
        box = faces_lib.whole_image_box(image)
        result.faces.append(results.unfilled_face(box, (0, 0, box.width, box.height)))
        queue.append(result)
        crops.append(image)
        if len(crops) >= chunk:
            flush()
    flush()

    if json_path:
        document = {
            "checkpoint": manifest["checkpoint"],
            "class_names": list(names),
            "detect": False,
            "align": False,  # Artifacts take face crops; `predict --align` is not in them.
            "images": [report.image_record(r, names) for r in done],
        }
        report.write_json(json_path, document, stdout)
    failed = sum(1 for r in done if r.error is not None)
    faces = sum(len(r.faces) for r in done)
    print(
        f"{len(done)} image(s): {faces} face(s) predicted with {fmt}, {failed} failed.",
        file=stderr,
    )
    return EXIT_SOME_FAILED if failed else EXIT_OK


def main(argv: Sequence[str]) -> int:
    """Entry point of `python -m grefel_jax.export.predict DIR image...`."""
    from absl import flags

    FLAGS = flags.FLAGS
    if len(argv) < 2:
        print("ERROR: give the export directory, then images.", file=sys.stderr)
        return EXIT_FATAL
    return run(
        argv[1],
        list(argv[2:]),
        fmt=FLAGS.format,
        json_path=FLAGS.json,
        batch_size=FLAGS.batch_size,
    )


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("format", None, "stablehlo or onnx (default: stablehlo if exported).")
    flags.DEFINE_string("json", None, "Write all predictions as JSON to this file ('-': stdout).")
    flags.DEFINE_integer(
        "batch_size", None, "Faces per call of a dynamic-batch artifact (default 32)."
    )


if __name__ == "__main__":
    from absl import app

    from grefel_jax import cli

    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
