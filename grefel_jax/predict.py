r"""Predicts facial expressions in image files: detect faces, crop, classify, report.

  python -m grefel_jax.predict --checkpoint runs/demo photo.jpg photos/
  python -m grefel_jax.predict --checkpoint converted/poster_rafdb --dataset raf_db \
      --no-detect --json predictions.json --csv predictions.csv rafdb_aligned/
  python -m grefel_jax.predict --checkpoint runs/rafdb --annotate annotated/ group.png

`--checkpoint` is a training workdir (best checkpoint, EMA weights if EMA was on), one of its
step directories, or an inference checkpoint (e.g. a converted POSTER++ or ARBEx file).
Directories are searched recursively for images. Faces are found with OpenCV's frontal-face
Haar cascade and cropped square with `--margin` of context; `--no-detect` feeds whole images
(already aligned crops such as RAF-DB's). `--align --landmarks W` (W: a landmark pretraining
workdir) replaces the square crop by the face warped onto the training data's five-point
template (`--align_template`; docs/landmarks.md "Alignment for prediction"); a face whose
predicted points are implausible keeps its square crop, with a WARNING line. Pixels then go
through the evaluation pipeline's own preprocessing function.

Output: a table on stdout (file, face box x,y,w,h, primary class and probability, the
reliability-balanced class and probability, the normalized-entropy confidence);
`--json FILE` and `--csv FILE` ('-' for stdout, which then replaces the table) carry every
class probability and, for the grefel head, the anchor and attention confidences.

Exit status: 0 when every image was read and predicted (images without a face count as
success and are listed as 'no face found'); 1 when some input could not be read (each one is
reported, the others still run); 2 when nothing could run (bad checkpoint or flags).
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_FATAL = 2


def run(
    inputs: Sequence[str],
    *,
    checkpoint: str,
    detect: bool = True,
    json_path: str | None = None,
    csv_path: str | None = None,
    annotate_dir: str | None = None,
    margin: float = 0.2,
    min_face_fraction: float = 0.1,
    min_neighbors: int = 5,
    max_faces: int | None = None,
    batch_size: int = 32,
    dataset: str | None = None,
    class_names: Sequence[str] | None = None,
    align: bool = False,
    landmarks: str | None = None,
    align_template: str = "auto",
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """The CLI without flag parsing; returns the exit status (see the module docstring).

    Args:
      inputs: image files and/or directories.
      checkpoint: workdir, step directory or inference checkpoint.
      detect: run the face detector; False treats each image as one face crop.
      json_path / csv_path: write JSON / CSV there ('-' = stdout instead of the table).
      annotate_dir: write annotated copies of the images there.
      margin, min_face_fraction, min_neighbors, max_faces: cropping and detector settings.
      batch_size: faces per jitted forward pass.
      dataset / class_names: override the checkpoint's class names.
      align / landmarks / align_template: warp faces onto the template with points from the
        landmark workdir `landmarks` (required with align).
      stdout / stderr: streams (tests pass StringIO).
    """
    from grefel_jax.checkpoints import CheckpointError
    from grefel_jax.inference import faces as faces_lib
    from grefel_jax.inference import images as images_lib
    from grefel_jax.inference import report
    from grefel_jax.inference.predictor import ImagePrediction, Predictor

    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if not inputs:
        print("ERROR: no images given (pass files and/or directories).", file=stderr)
        return EXIT_FATAL
    if align and not landmarks:
        print(
            "ERROR: --align needs --landmarks WORKDIR (a landmark pretraining workdir, "
            "python -m grefel_jax.landmarks.pretrain).",
            file=stderr,
        )
        return EXIT_FATAL
    if landmarks and not align:
        print("ERROR: --landmarks is only used with --align.", file=stderr)
        return EXIT_FATAL
    try:
        landmark_model = None
        if align:
            from grefel_jax.inference.landmark_points import LandmarkModel

            landmark_model = LandmarkModel.from_checkpoint(landmarks)
        detector = faces_lib.FaceDetector(
            min_face_fraction=min_face_fraction,
            min_neighbors=min_neighbors,
            max_faces=max_faces or None,
        )
        predictor = Predictor.from_checkpoint(
            checkpoint,
            class_names=class_names,
            dataset=dataset,
            detect=detect,
            detector=detector,
            margin=margin,
            batch_size=batch_size,
            align=align,
            landmarks=landmark_model,
            template=align_template,
            warn=lambda message: print(f"WARNING: {message}", file=stderr),
        )
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"ERROR: {e}", file=stderr)
        return EXIT_FATAL

    entries = list(images_lib.expand_inputs(inputs))
    files = [path for path, problem in entries if problem is None]
    table_to_stdout = "-" not in (json_path, csv_path)
    table = report.TableWriter(stdout, file_width=min(60, max(len(p) for p, _ in entries)))
    if table_to_stdout:
        table.header()
    annotations = report.AnnotationWriter(annotate_dir) if annotate_dir else None

    results = []
    predictions = predictor.predict_iter(files, keep_images=annotations is not None)
    for path, problem in entries:
        result = ImagePrediction(path, error=problem) if problem else next(predictions)
        if table_to_stdout:
            table.write(result)
        if result.error is not None and not table_to_stdout:
            print(f"ERROR: {result.error}", file=stderr)  # Else the table shows it.
        if annotations is not None:
            annotations.save(result)
        result.image = None  # Drop the pixels: keep only the numbers of large runs.
        results.append(result)

    names = predictor.class_names
    if json_path:
        records = [report.image_record(r, names) for r in results]
        document = {
            "checkpoint": checkpoint,
            "class_names": list(names),
            "detect": detect,
            "align": align,
            "images": records,
        }
        with open_output(json_path, stdout) as f:
            json.dump(document, f, indent=2)
            f.write("\n")
    if csv_path:
        with open_output(csv_path, stdout, newline="") as f:
            report.write_csv(f, results, names)

    failed = [r for r in results if r.error is not None]
    no_face = sum(1 for r in results if r.no_face)
    faces = sum(len(r.faces) for r in results)
    print(
        f"{len(results)} image(s): {faces} face(s) predicted, {no_face} without a face, "
        f"{len(failed)} failed.",
        file=stderr,
    )
    return EXIT_SOME_FAILED if failed else EXIT_OK


@contextlib.contextmanager
def open_output(path: str, stdout: TextIO, newline: str | None = None):
    """A text stream to write a report to: `path`, or `stdout` when path is '-'."""
    if path == "-":
        yield stdout
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline=newline) as f:
        yield f


def main(argv: Sequence[str]) -> int:
    """Entry point of `python -m grefel_jax.predict`."""
    from absl import flags

    FLAGS = flags.FLAGS
    if not FLAGS.checkpoint:
        # Checked here rather than by absl, whose flag errors exit with 1 ("some image failed").
        print("ERROR: --checkpoint is required (workdir or inference checkpoint).", file=sys.stderr)
        return EXIT_FATAL
    class_names = [n.strip() for n in FLAGS.class_names.split(",")] if FLAGS.class_names else None
    return run(
        list(argv[1:]),
        checkpoint=FLAGS.checkpoint,
        detect=not FLAGS["no-detect"].value,
        json_path=FLAGS.json,
        csv_path=FLAGS.csv,
        annotate_dir=FLAGS.annotate,
        margin=FLAGS.margin,
        min_face_fraction=FLAGS.min_face_size,
        min_neighbors=FLAGS.min_neighbors,
        max_faces=FLAGS.max_faces,
        batch_size=FLAGS.batch_size,
        dataset=FLAGS.dataset,
        class_names=class_names,
        align=FLAGS.align,
        landmarks=FLAGS.landmarks,
        align_template=FLAGS.align_template,
    )


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "checkpoint", None, "Training workdir, step directory or inference checkpoint."
    )
    flags.DEFINE_bool(
        "no-detect", False, "Images are already face crops (e.g. RAF-DB aligned): no detection."
    )
    flags.DEFINE_string("json", None, "Write all predictions as JSON to this file ('-': stdout).")
    flags.DEFINE_string("csv", None, "Write one CSV row per face to this file ('-': stdout).")
    flags.DEFINE_string("annotate", None, "Write the images with boxes and labels to this folder.")
    flags.DEFINE_float("margin", 0.2, "Context around a detected face, fraction of its side.")
    flags.DEFINE_float(
        "min_face_size", 0.1, "Smallest face side, as a fraction of the image's shorter side."
    )
    flags.DEFINE_integer("min_neighbors", 5, "Haar cascade minNeighbors (higher: fewer boxes).")
    flags.DEFINE_integer(
        "max_faces", 0, "Keep at most this many faces per image, largest first (0: all)."
    )
    flags.DEFINE_integer("batch_size", 32, "Faces per jitted forward pass.")
    flags.DEFINE_string(
        "dataset",
        None,
        "Use this dataset's class names (raf_db, affectnet/7, affectnet/8, "
        "ferplus, ...): converted checkpoints do not record theirs.",
    )
    flags.DEFINE_string("class_names", None, "Comma-separated class names (overrides all).")
    flags.DEFINE_bool(
        "align", False, "Warp each face onto the training data's five-point template."
    )
    flags.DEFINE_string(
        "landmarks", None, "Landmark pretraining workdir whose points --align uses."
    )
    flags.DEFINE_enum(
        "align_template",
        "auto",
        ["auto", "arcface", "synthetic_faces"],
        "Template of --align (auto: synthetic_faces for a synthetic_faces model, else arcface).",
    )


if __name__ == "__main__":
    from absl import app

    from grefel_jax import cli

    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
