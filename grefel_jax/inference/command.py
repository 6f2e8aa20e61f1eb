"""The prediction command without its flags: inputs and settings objects -> reports, status.

`python -m grefel_jax.inference` (`__main__`: the flags and the usage) turns its flags into a
`PredictorSettings` (which model, how faces are found, cropped and aligned), an `Outputs`
(where the reports go) and a `video_predict.VideoSettings`, and calls `run`. Tests and
scripts call `run` with the same objects.

Exit status: 0 when every input was read and predicted (images without a face count as
success); 1 when some input could not be read (each one is reported, the others still run);
2 when nothing could run (a bad checkpoint or setting).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from grefel_jax.inference import images as images_lib
from grefel_jax.inference import report
from grefel_jax.inference import video as video_lib
from grefel_jax.inference.report import EXIT_FATAL, EXIT_OK, EXIT_SOME_FAILED, open_output
from grefel_jax.inference.video_predict import VideoSettings


@dataclasses.dataclass(frozen=True)
class PredictorSettings:
    """Which model predicts, and how faces are found, cropped and aligned.

    Attributes:
      checkpoint: a training workdir, one of its step directories or an inference checkpoint.
      detect: run the face detector; False feeds each image whole as one face crop.
      detector: `faces.make_detector` name, 'ssd' or 'haar'.
      min_face_fraction, min_neighbors, max_faces: detector settings (None: the detector's
        defaults; max_faces 0 or None: all faces).
      margin: context around a detected face, fraction of its side.
      batch_size: faces per jitted forward pass.
      dataset / class_names: override the checkpoint's class names.
      align: warp each face onto a five-point template, with the points of the landmark
        network in `landmarks` (a landmark pretraining workdir; required with align).
      align_template: 'auto', 'arcface' or 'synthetic_faces'.
    """

    checkpoint: str
    detect: bool = True
    detector: str = "ssd"
    min_face_fraction: float | None = None
    min_neighbors: int | None = None
    max_faces: int | None = None
    margin: float = 0.2
    batch_size: int = 32
    dataset: str | None = None
    class_names: tuple[str, ...] | None = None
    align: bool = False
    landmarks: str | None = None
    align_template: str = "auto"

    def problem(self) -> str | None:
        """The settings' own inconsistency (one line), checked before any loading."""
        if self.align and not self.landmarks:
            return (
                "--align needs --landmarks WORKDIR (a landmark pretraining workdir, "
                "python -m grefel_jax.pretrain landmarks)."
            )
        if self.landmarks and not self.align:
            return "--landmarks is only used with --align."
        return None

    def load(self, warn: Callable[[str], None]):
        """The Predictor these settings describe.

        Raises:
          CheckpointError, FileNotFoundError, KeyError, ValueError: naming the path or flag.
        """
        from grefel_jax.inference import faces as faces_lib
        from grefel_jax.inference.predictor import Predictor

        landmark_model = None
        if self.align:
            from grefel_jax.inference.landmark_points import LandmarkModel

            landmark_model = LandmarkModel.from_checkpoint(self.landmarks)
        named = faces_lib.make_detector(
            self.detector,
            min_face_fraction=self.min_face_fraction,
            min_neighbors=self.min_neighbors,
            max_faces=self.max_faces or None,
        )
        return Predictor.from_checkpoint(
            self.checkpoint,
            class_names=self.class_names,
            dataset=self.dataset,
            detect=self.detect,
            detector=named,
            margin=self.margin,
            batch_size=self.batch_size,
            align=self.align,
            landmarks=landmark_model,
            template=self.align_template,
            warn=warn,
            verifier=named,
        )


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Where the reports go.

    Attributes:
      json / csv: write the JSON / CSV report there ('-': to stdout, instead of the table).
      annotate: images: a folder for annotated copies; video: one annotated video file.
    """

    json: str | None = None
    csv: str | None = None
    annotate: str | None = None

    @property
    def table(self) -> bool:
        """Whether the table goes to stdout (no report does)."""
        return "-" not in (self.json, self.csv)


@dataclasses.dataclass
class _Inputs:
    """The command line's inputs, sorted into an image run or a video run."""

    images: list[tuple[str, str | None]]  # (path, problem or None), as images_lib expands
    sources: list[str | int]  # video files, or one camera index
    skipped_videos: list[str]  # videos in folders among images: named, not run

    @property
    def video(self) -> bool:
        return bool(self.sources)


def _sort_inputs(inputs: Sequence[str], camera: int | None) -> _Inputs | str:
    """The run the inputs ask for, or the one-line reason they cannot run together.

    Folders are searched for both: folders of videos only are a video run; videos in a folder
    among images (in it or given beside it) are skipped, each one named.
    """
    videos = [i for i in inputs if video_lib.is_video_path(i)]
    folder_videos = video_lib.videos_in_folders(inputs)
    image_entries = list(images_lib.expand_inputs([i for i in inputs if i not in videos]))
    has_images = any(
        problem is None and not video_lib.is_video_path(path) for path, problem in image_entries
    )
    in_folders = [v for vs in folder_videos.values() for v in vs]
    skipped: list[str] = []
    if has_images:
        skipped = in_folders
        # A folder that only held videos: its videos are named below, not "no images".
        image_entries = [(p, e) for p, e in image_entries if not (e and p in folder_videos)]
    elif in_folders:
        videos += in_folders
        inputs = [i for i in inputs if str(Path(i)) not in folder_videos] + in_folders
    if camera is not None or videos:
        if len(videos) != len(inputs):
            others = [i for i in inputs if i not in videos]
            what = "--camera" if camera is not None and not videos else f"video {videos[0]}"
            return (
                f"{what} given with non-video inputs {others[:3]}: predict videos and images "
                "in separate runs."
            )
        if camera is not None and videos:
            return "--camera given with video files: use one or the other."
        return _Inputs([], [camera] if camera is not None else videos, [])
    return _Inputs(image_entries, [], skipped)


def run(
    inputs: Sequence[str],
    predictor: PredictorSettings,
    *,
    outputs: Outputs = Outputs(),
    video: VideoSettings | None = None,
    camera: int | None = None,
    detector: Any = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Predicts on image files, video files or a camera; returns the exit status.

    Args:
      inputs: image and/or video files and directories (a directory of videos only is a
        video run).
      predictor: the model and the face settings.
      outputs: the report files.
      video: the video settings (video mode: `camera`, or video inputs; None: defaults).
      camera: read this webcam index instead of files.
      detector: replaces the named detector (anything with `detect(image) -> [FaceBox]`).
      stdout / stderr: streams (tests pass StringIO).
    """
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr

    def fatal(message: str) -> int:
        print(f"ERROR: {message}", file=stderr)
        return EXIT_FATAL

    if not inputs and camera is None:
        return fatal("no images given (pass files and/or directories).")
    sorted_inputs = _sort_inputs(inputs, camera)
    if isinstance(sorted_inputs, str):
        return fatal(sorted_inputs)
    if sorted_inputs.video and outputs.annotate:
        if len(sorted_inputs.sources) > 1:
            return fatal("--annotate writes one video: give one video per run.")
        if not video_lib.is_video_path(outputs.annotate):
            return fatal(
                f"--annotate={outputs.annotate}: for video, name an output video file "
                "(.avi for Motion-JPEG, or .mp4)."
            )
    problem = predictor.problem()
    if problem:
        return fatal(problem)
    from grefel_jax.checkpoints import CheckpointError

    try:
        model = predictor.load(warn=lambda message: print(f"WARNING: {message}", file=stderr))
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        return fatal(str(e))
    for path in sorted_inputs.skipped_videos:
        print(
            f"WARNING: {path}: skipped, a video among images: predict videos in a separate "
            "run (name the video, or a folder that holds only videos).",
            file=stderr,
        )
    if sorted_inputs.video:
        return run_video(
            model,
            sorted_inputs.sources,
            video or VideoSettings(),
            checkpoint=predictor.checkpoint,
            outputs=outputs,
            detector=detector,
            stdout=stdout,
            stderr=stderr,
        )
    if detector is not None:
        model.detector = detector
    return run_images(
        model,
        sorted_inputs.images,
        checkpoint=predictor.checkpoint,
        outputs=outputs,
        skipped_videos=len(sorted_inputs.skipped_videos),
        stdout=stdout,
        stderr=stderr,
    )


def run_images(
    predictor,
    entries: Sequence[tuple[str, str | None]],
    *,
    checkpoint: str,
    outputs: Outputs,
    skipped_videos: int = 0,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """Image mode of `run`: predicts each readable entry, reports every entry in order.

    Args:
      predictor: the loaded Predictor.
      entries: `(path, problem)` pairs; a problem (unreadable input) is reported as is.
      checkpoint: recorded in the JSON report.
      skipped_videos: how many videos were skipped (for the summary line).
    """
    from grefel_jax.inference.results import ImagePrediction

    files = [path for path, problem in entries if problem is None]
    table = report.TableWriter(stdout, file_width=min(60, max(len(p) for p, _ in entries)))
    if outputs.table:
        table.header()
    annotations = report.AnnotationWriter(outputs.annotate) if outputs.annotate else None

    results = []
    predictions = predictor.predict_iter(files, keep_images=annotations is not None)
    for path, problem in entries:
        result = ImagePrediction(path, error=problem) if problem else next(predictions)
        if outputs.table:
            table.write(result)
        elif result.error is not None:
            print(f"ERROR: {result.error}", file=stderr)  # Else the table shows it.
        if annotations is not None:
            annotations.save(result)
        result.image = None  # Drop the pixels: keep only the numbers of large runs.
        results.append(result)

    names = predictor.class_names
    if outputs.json:
        document = {
            "checkpoint": checkpoint,
            "class_names": list(names),
            "detect": predictor.detect,
            "align": predictor.align,
            "images": [report.image_record(r, names) for r in results],
        }
        report.write_json(outputs.json, document, stdout)
    if outputs.csv:
        with open_output(outputs.csv, stdout, newline="") as f:
            report.write_csv(f, results, names)

    failed = [r for r in results if r.error is not None]
    no_face = sum(1 for r in results if r.no_face)
    faces = sum(len(r.faces) for r in results)
    skipped = f", {skipped_videos} video(s) skipped" if skipped_videos else ""
    print(
        f"{len(results)} image(s): {faces} face(s) predicted, {no_face} without a face, "
        f"{len(failed)} failed{skipped}.",
        file=stderr,
    )
    return EXIT_SOME_FAILED if failed else EXIT_OK


def run_video(
    predictor,
    sources: Sequence[str | int],
    settings: VideoSettings,
    *,
    checkpoint: str,
    outputs: Outputs,
    detector: Any = None,
    stdout: TextIO,
    stderr: TextIO,
) -> int:
    """Video mode of `run`: each source (a file path or camera index) in turn.

    Args:
      predictor: the loaded Predictor.
      sources: video files, or one camera index.
      settings: frame sampling, batching, tracking and smoothing.
      checkpoint: recorded in the JSON report.
      detector: overrides `predictor.detector`.

    Returns:
      0, 1 when some video could not be opened (the others still run), 2 for bad settings.
    """
    import csv

    from grefel_jax.inference import video_predict

    problems = settings.problems()
    if problems:
        print(f"ERROR: {problems[0]}.", file=stderr)
        return EXIT_FATAL
    names = predictor.class_names
    csv_stream = (
        open_output(outputs.csv, stdout, newline="") if outputs.csv else contextlib.ExitStack()
    )
    records, failed, frames_done, faces_done, seconds = [], 0, 0, 0, 0.0
    with csv_stream as csv_file:
        csv_writer = csv.writer(csv_file) if outputs.csv else None
        if csv_writer:
            csv_writer.writerow(video_predict.csv_header(names))
        for source in sources:
            name = f"camera {source}" if isinstance(source, int) else str(source)
            try:
                reader = video_lib.VideoReader(
                    source, every=settings.every, max_frames=settings.max_frames
                )
            except video_lib.VideoOpenError as e:
                print(f"ERROR: {e}", file=stderr)
                failed += 1
                continue
            writer = None
            start = time.perf_counter()
            with reader, contextlib.ExitStack() as stack:
                frames_and_faces = video_predict.predict_video(
                    predictor,
                    reader,
                    settings.tracker(),
                    batch_frames=settings.batch_frames,
                    detector=detector,
                )
                for frame, faces in _until_interrupted(frames_and_faces, stderr):
                    frames_done += 1
                    faces_done += len(faces)
                    if csv_writer:
                        csv_writer.writerows(video_predict.csv_rows(name, frame, faces))
                    if outputs.json:
                        records.append(video_predict.frame_record(name, frame, faces, names))
                    if outputs.table:
                        for face in faces:
                            print(video_predict.console_line(name, frame, face), file=stdout)
                    if outputs.annotate:
                        if writer is None:
                            size = (frame.image.shape[1], frame.image.shape[0])
                            fps = reader.fps / settings.every
                            try:
                                writer = stack.enter_context(
                                    video_lib.VideoWriter(outputs.annotate, fps, size)
                                )
                            except video_lib.VideoOpenError as e:
                                print(f"ERROR: --annotate: {e}", file=stderr)
                                return EXIT_FATAL
                        writer.write(video_predict.annotate_frame(frame.image, faces))
            seconds += time.perf_counter() - start

    if outputs.json:
        document = {
            "checkpoint": checkpoint,
            "class_names": list(names),
            "detect": predictor.detect,
            "half_life_s": settings.half_life,
            "every": settings.every,
            "frames": records,
        }
        report.write_json(outputs.json, document, stdout)
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
