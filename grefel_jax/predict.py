r"""Predicts facial expressions in image files: detect faces, crop, classify, report.

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
    min_face_fraction: float | None = None,
    min_neighbors: int | None = None,
    max_faces: int | None = None,
    batch_size: int = 32,
    dataset: str | None = None,
    class_names: Sequence[str] | None = None,
    align: bool = False,
    landmarks: str | None = None,
    align_template: str = "auto",
    camera: int | None = None,
    half_life: float = 0.5,
    every: int = 1,
    max_frames: int | None = None,
    batch_frames: int = 8,
    iou_threshold: float = 0.3,
    max_missed: int = 5,
    detector=None,
    detector_name: str = "ssd",
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
      camera: read this webcam index instead of files (video mode).
      half_life, every, max_frames, batch_frames, iou_threshold, max_missed: video settings
        (see `run_video`); video mode is chosen by `camera` or video file suffixes.
      detector: replaces the named detector (anything with `detect(image) -> [FaceBox]`).
      detector_name: `faces.make_detector` name, 'ssd' (default) or 'haar'; None settings
        (min_face_fraction, min_neighbors) keep that detector's defaults.
      stdout / stderr: streams (tests pass StringIO).
    """
    from grefel_jax.checkpoints import CheckpointError
    from grefel_jax.inference import faces as faces_lib
    from grefel_jax.inference import images as images_lib
    from grefel_jax.inference import report
    from grefel_jax.inference import video as video_lib
    from grefel_jax.inference.predictor import ImagePrediction, Predictor

    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if not inputs and camera is None:
        print("ERROR: no images given (pass files and/or directories).", file=stderr)
        return EXIT_FATAL
    videos = [i for i in inputs if video_lib.is_video_path(i)]
    # Folders are searched for both: folders of videos only are a video run; videos in a
    # folder among images (in it or given beside it) are skipped, each one named.
    folder_videos = video_lib.videos_in_folders(inputs)
    image_entries = list(images_lib.expand_inputs([i for i in inputs if i not in videos]))
    has_images = any(
        problem is None and not video_lib.is_video_path(path) for path, problem in image_entries
    )
    in_folders = [v for vs in folder_videos.values() for v in vs]
    skipped_videos: list[str] = []
    if has_images:
        skipped_videos = in_folders
        # A folder that only held videos: its videos are named below, not "no images".
        image_entries = [(p, e) for p, e in image_entries if not (e and p in folder_videos)]
    elif in_folders:
        videos += in_folders
        inputs = [i for i in inputs if str(Path(i)) not in folder_videos] + in_folders
    video_mode = camera is not None or bool(videos)
    if video_mode and len(videos) != len(inputs):
        others = [i for i in inputs if i not in videos]
        what = "--camera" if camera is not None and not videos else f"video {videos[0]}"
        print(
            f"ERROR: {what} given with non-video inputs {others[:3]}: predict videos "
            "and images in separate runs.",
            file=stderr,
        )
        return EXIT_FATAL
    if camera is not None and videos:
        print("ERROR: --camera given with video files: use one or the other.", file=stderr)
        return EXIT_FATAL
    sources = [camera] if camera is not None else videos
    if video_mode and annotate_dir and len(sources) > 1:
        print("ERROR: --annotate writes one video: give one video per run.", file=stderr)
        return EXIT_FATAL
    if video_mode and annotate_dir and not video_lib.is_video_path(annotate_dir):
        print(
            f"ERROR: --annotate={annotate_dir}: for video, name an output video file "
            "(.avi for Motion-JPEG, or .mp4).",
            file=stderr,
        )
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
        named = faces_lib.make_detector(
            detector_name,
            min_face_fraction=min_face_fraction,
            min_neighbors=min_neighbors,
            max_faces=max_faces or None,
        )
        predictor = Predictor.from_checkpoint(
            checkpoint,
            class_names=class_names,
            dataset=dataset,
            detect=detect,
            detector=named,
            margin=margin,
            batch_size=batch_size,
            align=align,
            landmarks=landmark_model,
            template=align_template,
            warn=lambda message: print(f"WARNING: {message}", file=stderr),
            verifier=named,
        )
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"ERROR: {e}", file=stderr)
        return EXIT_FATAL
    for path in skipped_videos:
        print(
            f"WARNING: {path}: skipped, a video among images: predict videos in a separate "
            "run (name the video, or a folder that holds only videos).",
            file=stderr,
        )
    if video_mode:
        return run_video(
            predictor,
            sources,
            checkpoint=checkpoint,
            json_path=json_path,
            csv_path=csv_path,
            annotate_path=annotate_dir,
            half_life=half_life,
            every=every,
            max_frames=max_frames,
            batch_frames=batch_frames,
            iou_threshold=iou_threshold,
            max_missed=max_missed,
            detector=detector,
            stdout=stdout,
            stderr=stderr,
        )
    if detector is not None:
        predictor.detector = detector

    entries = image_entries
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
    skipped = f", {len(skipped_videos)} video(s) skipped" if skipped_videos else ""
    print(
        f"{len(results)} image(s): {faces} face(s) predicted, {no_face} without a face, "
        f"{len(failed)} failed{skipped}.",
        file=stderr,
    )
    return EXIT_SOME_FAILED if failed else EXIT_OK


def run_video(
    predictor,
    sources: Sequence[str | int],
    *,
    checkpoint: str,
    json_path: str | None = None,
    csv_path: str | None = None,
    annotate_path: str | None = None,
    half_life: float = 0.5,
    every: int = 1,
    max_frames: int | None = None,
    batch_frames: int = 8,
    iou_threshold: float = 0.3,
    max_missed: int = 5,
    detector=None,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """Video mode of `run`: each source (a file path or camera index) in turn.

    Args:
      predictor: the loaded Predictor.
      sources: video files, or one camera index.
      half_life: EMA half-life of each track's probabilities, seconds (0: none).
      every: keep one frame in `every`.
      max_frames: stop each source after this many kept frames (None: all).
      batch_frames: frames classified per batch.
      iou_threshold / max_missed: tracker settings (`inference.tracking.IoUTracker`).
      Others as in `run`.

    Returns:
      0, 1 when some video could not be opened (the others still run), 2 for bad settings.
    """
    import csv
    import time

    from grefel_jax.inference import video as video_lib
    from grefel_jax.inference import video_predict
    from grefel_jax.inference.tracking import IoUTracker

    names = predictor.class_names
    problems = [
        f"--{name}={value} must be {rule}"
        for name, value, ok, rule in (
            ("half_life", half_life, half_life >= 0, ">= 0 (0: no smoothing)"),
            ("every", every, every >= 1, ">= 1"),
            ("max_frames", max_frames, max_frames is None or max_frames >= 1, ">= 0 (0: all)"),
            ("batch_frames", batch_frames, batch_frames >= 1, ">= 1"),
            ("iou_threshold", iou_threshold, 0 < iou_threshold <= 1, "in (0, 1]"),
            ("max_missed", max_missed, max_missed >= 0, ">= 0"),
        )
        if not ok
    ]
    if problems:
        print(f"ERROR: {problems[0]}.", file=stderr)
        return EXIT_FATAL
    trackers = [IoUTracker(iou_threshold, max_missed, half_life) for _ in sources]

    to_stdout = "-" in (json_path, csv_path)
    csv_stream = (
        contextlib.ExitStack() if not csv_path else open_output(csv_path, stdout, newline="")
    )
    records, failed, frames_done, faces_done, seconds = [], 0, 0, 0, 0.0
    with csv_stream as csv_file:
        csv_writer = csv.writer(csv_file) if csv_path else None
        if csv_writer:
            csv_writer.writerow(video_predict.csv_header(names))
        for source, tracker in zip(sources, trackers):
            name = f"camera {source}" if isinstance(source, int) else str(source)
            try:
                reader = video_lib.VideoReader(source, every=every, max_frames=max_frames)
            except video_lib.VideoOpenError as e:
                print(f"ERROR: {e}", file=stderr)
                failed += 1
                continue
            writer = None
            start = time.perf_counter()
            with reader, contextlib.ExitStack() as stack:
                frames_and_faces = video_predict.predict_video(
                    predictor, reader, tracker, batch_frames=batch_frames, detector=detector
                )
                for frame, faces in _until_interrupted(frames_and_faces, stderr):
                    frames_done += 1
                    faces_done += len(faces)
                    if csv_writer:
                        csv_writer.writerows(video_predict.csv_rows(name, frame, faces))
                    if json_path:
                        records.append(video_predict.frame_record(name, frame, faces, names))
                    if not to_stdout:
                        for face in faces:
                            p = face.prediction
                            print(
                                f"{name} frame {frame.index} t={frame.time_s:.2f}s "
                                f"track {face.track_id} box {','.join(map(str, p.box.as_tuple()))}"
                                f" {p.label} {p.probability:.3f} smoothed "
                                f"{face.smoothed_label} {face.smoothed_probability:.3f}",
                                file=stdout,
                            )
                    if annotate_path:
                        if writer is None:
                            size = (frame.image.shape[1], frame.image.shape[0])
                            try:
                                writer = stack.enter_context(
                                    video_lib.VideoWriter(annotate_path, reader.fps / every, size)
                                )
                            except video_lib.VideoOpenError as e:
                                print(f"ERROR: --annotate: {e}", file=stderr)
                                return EXIT_FATAL
                        writer.write(video_predict.annotate_frame(frame.image, faces))
            seconds += time.perf_counter() - start

    if json_path:
        document = {
            "checkpoint": checkpoint,
            "class_names": list(names),
            "detect": predictor.detect,
            "half_life_s": half_life,
            "every": every,
            "frames": records,
        }
        with open_output(json_path, stdout) as f:
            json.dump(document, f, indent=2)
            f.write("\n")
    fps = frames_done / seconds if seconds > 0 else 0.0
    print(
        f"{len(sources)} video source(s): {frames_done} frame(s), {faces_done} face(s) "
        f"predicted in {seconds:.1f} s ({fps:.1f} frames/s, compilation included), "
        f"{failed} failed.",
        file=stderr,
    )
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _until_interrupted(items, stderr: TextIO):
    """`items` until Ctrl-C: a webcam runs until interrupted, and the reports (JSON, CSV,
    annotated video) must still be written for the frames read so far."""
    try:
        yield from items
    except KeyboardInterrupt:
        print("Interrupted: the reports hold the frames read so far.", file=stderr)


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
        camera=FLAGS.camera,
        half_life=FLAGS.half_life,
        every=FLAGS.every,
        max_frames=FLAGS.max_frames if FLAGS.max_frames else None,
        batch_frames=FLAGS.batch_frames,
        iou_threshold=FLAGS.iou_threshold,
        max_missed=FLAGS.max_missed,
        detector_name=FLAGS.detector,
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

    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
