r"""`python -m grefel_jax.predict`: facial expressions in images and videos (also
`python -m grefel_jax.inference`). Detect faces, crop, classify, report.

  python -m grefel_jax.predict --checkpoint runs/demo photo.jpg photos/
  python -m grefel_jax.predict --checkpoint converted/poster_rafdb --dataset raf_db \
      --no-detect --json predictions.json --csv predictions.csv rafdb_aligned/
  python -m grefel_jax.predict --checkpoint runs/rafdb --annotate annotated/ group.png

`--checkpoint` is a training workdir (best checkpoint, EMA weights if EMA was on), one of its
step directories, or an inference checkpoint (e.g. a converted POSTER++ or ARBEx file).
Directories are searched recursively for images; a directory holding only videos is a video
run (its videos in turn), and videos in a folder that also holds images are skipped, each one
named on stderr. Faces are found with `--detector` (default
'ssd', OpenCV's ResNet-10 SSD CNN; 'haar', the frontal-face Haar cascade; README "Face
detection" has the measurements) and cropped square with `--margin` of context;
`--no-detect` feeds whole images (already aligned crops such as RAF-DB's).
`--align --landmarks W` (W: a landmark pretraining workdir) replaces the square crop by the
face warped onto the training data's five-point template (`--align_template`;
docs/landmarks.md "Alignment for prediction"); a face whose predicted points are implausible
keeps its square crop, with a WARNING line (video frames are aligned the same way). Pixels
then go through the evaluation pipeline's own preprocessing function.

Output: a table on stdout (file, face box x,y,w,h, primary class and probability, the
reliability-balanced class and probability, the normalized-entropy confidence);
`--json FILE` and `--csv FILE` ('-' for stdout, which then replaces the table) carry every
class probability and, for the grefel head, the anchor and attention confidences.

Video: inputs ending in .mp4 .avi .mov .mkv .webm (or `--camera N`, a webcam) are read frame by
frame (`--every N` keeps one frame in N); faces are detected per frame, classified in batches
of `--batch_frames` frames, tracked across frames (a face keeps its `track_id`) and each
track's probabilities are smoothed over time (EMA, `--half_life` seconds). `--json`/`--csv`
then hold one row per (frame, face); `--annotate OUT.avi` writes one annotated video (boxes,
track ids, smoothed classes). Frames per second are reported on stderr.

  python -m grefel_jax.predict --checkpoint runs/demo --csv faces.csv --annotate out.avi clip.mp4
  python -m grefel_jax.predict --checkpoint runs/demo --camera 0 --max_frames 300 --csv -

Exit status: 0 when every image was read and predicted (images without a face count as
success and are listed as 'no face found'); 1 when some input could not be read (each one is
reported, the others still run); 2 when nothing could run (bad checkpoint or flags).

The flags become a `command.PredictorSettings`, `command.Outputs` and
`video_predict.VideoSettings`; `command.run` does the rest.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str]) -> int:
    """Flags -> settings objects -> `command.run`; returns the exit status."""
    from absl import flags

    from grefel_jax.inference import command
    from grefel_jax.inference.video_predict import VideoSettings

    FLAGS = flags.FLAGS
    if not FLAGS.checkpoint:
        # Checked here rather than by absl, whose flag errors exit with 1 ("some image failed").
        print("ERROR: --checkpoint is required (workdir or inference checkpoint).", file=sys.stderr)
        return command.EXIT_FATAL
    class_names = [n.strip() for n in FLAGS.class_names.split(",")] if FLAGS.class_names else None
    predictor = command.PredictorSettings(
        checkpoint=FLAGS.checkpoint,
        detect=not FLAGS["no-detect"].value,
        detector=FLAGS.detector,
        min_face_fraction=FLAGS.min_face_size,
        min_neighbors=FLAGS.min_neighbors,
        max_faces=FLAGS.max_faces,
        margin=FLAGS.margin,
        batch_size=FLAGS.batch_size,
        dataset=FLAGS.dataset,
        class_names=tuple(class_names) if class_names else None,
        align=FLAGS.align,
        landmarks=FLAGS.landmarks,
        align_template=FLAGS.align_template,
    )
    video = VideoSettings(
        half_life=FLAGS.half_life,
        every=FLAGS.every,
        max_frames=FLAGS.max_frames or None,
        batch_frames=FLAGS.batch_frames,
        iou_threshold=FLAGS.iou_threshold,
        max_missed=FLAGS.max_missed,
    )
    outputs = command.Outputs(json=FLAGS.json, csv=FLAGS.csv, annotate=FLAGS.annotate)
    return command.run(list(argv[1:]), predictor, outputs=outputs, video=video, camera=FLAGS.camera)


def define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "checkpoint", None, "Training workdir, step directory or inference checkpoint."
    )
    flags.DEFINE_bool(
        "no-detect", False, "Images are already face crops (e.g. RAF-DB aligned): no detection."
    )
    flags.DEFINE_string("json", None, "Write all predictions as JSON to this file ('-': stdout).")
    flags.DEFINE_string("csv", None, "Write one CSV row per face to this file ('-': stdout).")
    flags.DEFINE_string(
        "annotate",
        None,
        "Write the images with boxes and labels to this folder (video: to this .avi/.mp4 file).",
    )
    flags.DEFINE_float("margin", 0.2, "Context around a detected face, fraction of its side.")
    flags.DEFINE_string(
        "detector", "ssd", "Face detector: ssd (CNN, default) or haar (OpenCV Haar cascade)."
    )
    flags.DEFINE_float(
        "min_face_size",
        None,
        "Smallest face side, as a fraction of the image's shorter side (default: the "
        "detector's, haar 0.1, ssd 0).",
    )
    flags.DEFINE_integer("min_neighbors", 5, "--detector haar: minNeighbors (higher: fewer boxes).")
    flags.DEFINE_integer(
        "max_faces",
        0,
        "Keep at most this many faces per image, the surest first (detector score, then size; "
        "0: all).",
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
    flags.DEFINE_integer("camera", None, "Predict on this webcam (OpenCV camera index).")
    flags.DEFINE_float(
        "half_life", 0.5, "Video: half-life in seconds of each track's probability EMA (0: none)."
    )
    flags.DEFINE_integer("every", 1, "Video: keep one frame in this many.")
    flags.DEFINE_integer("max_frames", 0, "Video: stop after this many kept frames (0: all).")
    flags.DEFINE_integer("batch_frames", 8, "Video: frames whose faces are classified together.")
    flags.DEFINE_float("iou_threshold", 0.3, "Video: smallest box IoU continuing a track.")
    flags.DEFINE_integer("max_missed", 5, "Video: frames a track survives without a matching face.")


if __name__ == "__main__":
    from absl import app

    from grefel_jax import cli

    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
