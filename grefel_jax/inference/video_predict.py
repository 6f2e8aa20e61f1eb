"""Expression predictions on video: detect faces per frame, classify in batches, track, smooth.

  predictor = Predictor.from_checkpoint("runs/demo")
  with VideoReader("clip.mp4") as reader:
      for frame, faces in predict_video(predictor, reader, IoUTracker(half_life_s=0.5)):
          for face in faces:
              print(frame.index, face.track_id, face.prediction.label, face.smoothed_label)

Frames are read `batch_frames` at a time; every face of those frames is cropped exactly as for
images (`Predictor`'s detector, margin and preprocessing) and the crops go through the jitted
model together (`Predictor.predict_crops`, fixed-size padded batches: one compilation). The
tracker then runs frame by frame, in order, so track ids and smoothing do not depend on the
batching.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from grefel_jax.inference import faces as faces_lib
from grefel_jax.inference import report
from grefel_jax.inference.results import FacePrediction, ImagePrediction, fill_face, unfilled_face
from grefel_jax.inference.tracking import IoUTracker
from grefel_jax.inference.video import Frame, VideoReader


class Detector(Protocol):
    """Anything with `detect((H, W, 3) uint8 RGB) -> list[FaceBox]` (FaceDetector, or boxes
    known in advance in tests)."""

    def detect(self, image: np.ndarray) -> list[faces_lib.FaceBox]: ...


@dataclasses.dataclass(frozen=True)
class VideoSettings:
    """How a video is read, batched, tracked and smoothed (`python -m grefel_jax.predict`'s
    video flags).

    Attributes:
      half_life: EMA half-life of each track's probabilities, seconds (0: no smoothing).
      every: keep one frame in `every`.
      max_frames: stop each source after this many kept frames (None: all).
      batch_frames: frames whose faces are classified together.
      iou_threshold / max_missed: tracker settings (`tracking.IoUTracker`).
    """

    half_life: float = 0.5
    every: int = 1
    max_frames: int | None = None
    batch_frames: int = 8
    iou_threshold: float = 0.3
    max_missed: int = 5

    def problems(self) -> list[str]:
        """What is out of range, one line each naming the flag (empty: all fine)."""
        rules = (
            ("half_life", self.half_life, self.half_life >= 0, ">= 0 (0: no smoothing)"),
            ("every", self.every, self.every >= 1, ">= 1"),
            (
                "max_frames",
                self.max_frames,
                self.max_frames is None or self.max_frames >= 1,
                ">= 0 (0: all)",
            ),
            ("batch_frames", self.batch_frames, self.batch_frames >= 1, ">= 1"),
            ("iou_threshold", self.iou_threshold, 0 < self.iou_threshold <= 1, "in (0, 1]"),
            ("max_missed", self.max_missed, self.max_missed >= 0, ">= 0"),
        )
        return [f"--{name}={value} must be {rule}" for name, value, ok, rule in rules if not ok]

    def tracker(self) -> IoUTracker:
        """A fresh tracker for one source."""
        return IoUTracker(self.iou_threshold, self.max_missed, self.half_life)


@dataclasses.dataclass
class VideoFace:
    """One face in one frame.

    Attributes:
      track_id: the face's track (the same id across frames for the same face).
      prediction: this frame's own FacePrediction (box, crop, class, probabilities, ...).
      smoothed_probs / smoothed_corrected_probs: (C,) the track's EMA of the distributions,
        this frame included.
      smoothed_index / smoothed_label / smoothed_probability: argmax of smoothed_probs, and
        smoothed_corrected_* of smoothed_corrected_probs.
    """

    track_id: int
    prediction: FacePrediction
    smoothed_probs: np.ndarray
    smoothed_corrected_probs: np.ndarray
    smoothed_index: int
    smoothed_label: str
    smoothed_probability: float
    smoothed_corrected_index: int
    smoothed_corrected_label: str
    smoothed_corrected_probability: float


def predict_video(
    predictor: Any,
    reader: VideoReader,
    tracker: IoUTracker,
    *,
    batch_frames: int = 8,
    detector: Detector | None = None,
) -> Iterator[tuple[Frame, list[VideoFace]]]:
    """Predicts, tracks and smooths every face of every kept frame, in order.

    Args:
      predictor: a `Predictor` (its detect flag, detector, margin and class names are used).
      reader: the frames.
      tracker: keeps track ids and smoothed probabilities (its state carries over calls).
      batch_frames: frames read and classified together.
      detector: overrides `predictor.detector`.

    Yields:
      `(frame, faces)` per kept frame (every frame, faces empty where there is none); faces
      surest first, as the detector orders them, without the detections of tracks that
      never looked like a face (`tracking.IoUTracker`).
    """
    detector = detector or predictor.detector
    names = predictor.class_names
    for frames in reader.batches(batch_frames):
        per_frame: list[list[FacePrediction]] = []
        crops = []
        for frame in frames:
            if predictor.detect:
                boxes = detector.detect(frame.image)
                regions = [
                    faces_lib.crop_box(b, frame.image.shape, predictor.margin) for b in boxes
                ]
            else:
                box = faces_lib.whole_image_box(frame.image)
                boxes, regions = [box], [(0, 0, box.width, box.height)]
            faces = [unfilled_face(b, r) for b, r in zip(boxes, regions)]
            per_frame.append(faces)
            frame_crops = [faces_lib.crop(frame.image, r) for r in regions]
            if predictor.align and frame_crops:  # `predict --align`, as for images
                source = f"frame {frame.index}"
                frame_crops = predictor.align_crops(frame.image, faces, frame_crops, source)
            crops += frame_crops
        outputs = predictor.predict_crops(crops)
        row = 0
        for frame, faces in zip(frames, per_frame):
            for face in faces:
                fill_face(face, outputs, row, names)
                row += 1
            matches = tracker.update(
                frame.time_s,
                [f.box for f in faces],
                np.stack([f.probs for f in faces]) if faces else np.zeros((0, len(names))),
                np.stack([f.corrected_probs for f in faces])
                if faces
                else np.zeros((0, len(names))),
                image_shape=frame.image.shape,
            )
            # Detections whose track never looked like a face (track_id None) are left out.
            yield (
                frame,
                [
                    _video_face(f, m, names)
                    for f, m in zip(faces, matches)
                    if m.track_id is not None
                ],
            )


def _video_face(face: FacePrediction, match, names: Sequence[str]) -> VideoFace:
    index = int(np.argmax(match.probs))
    corrected = int(np.argmax(match.corrected_probs))
    return VideoFace(
        track_id=match.track_id,
        prediction=face,
        smoothed_probs=match.probs,
        smoothed_corrected_probs=match.corrected_probs,
        smoothed_index=index,
        smoothed_label=names[index],
        smoothed_probability=float(match.probs[index]),
        smoothed_corrected_index=corrected,
        smoothed_corrected_label=names[corrected],
        smoothed_corrected_probability=float(match.corrected_probs[corrected]),
    )


# --------------------------------------------------------------------------------------------
# Reports: JSON records, CSV rows, annotated frames.
# --------------------------------------------------------------------------------------------


def face_record(face: VideoFace, class_names: Sequence[str]) -> dict[str, Any]:
    """JSON-ready dict: the image report's face record plus track id and smoothed fields."""
    record = {"track_id": face.track_id, **report.face_record(face.prediction, class_names)}
    record.update(
        smoothed_class=face.smoothed_label,
        smoothed_probability=face.smoothed_probability,
        smoothed_probabilities={n: float(p) for n, p in zip(class_names, face.smoothed_probs)},
        smoothed_corrected_class=face.smoothed_corrected_label,
        smoothed_corrected_probability=face.smoothed_corrected_probability,
    )
    return record


def frame_record(source: str, frame: Frame, faces: Sequence[VideoFace], class_names) -> dict:
    """JSON-ready dict of one frame."""
    return {
        "video": source,
        "frame": frame.index,
        "time_s": round(frame.time_s, 6),
        "faces": [face_record(f, class_names) for f in faces],
    }


def csv_header(class_names: Sequence[str]) -> list[str]:
    """Columns of the video CSV: one row per (frame, face)."""
    return [
        "video",
        "frame",
        "time_s",
        "track_id",
        *report.FACE_COLUMNS,
        "smoothed_class",
        "smoothed_probability",
        "smoothed_corrected_class",
        "smoothed_corrected_probability",
        *(f"p_{name}" for name in class_names),
        *(f"smoothed_p_{name}" for name in class_names),
    ]


def csv_rows(source: str, frame: Frame, faces: Sequence[VideoFace]) -> list[list[Any]]:
    """The CSV rows of one frame (none for a frame without faces)."""
    rows = []
    for face in faces:
        p = face.prediction
        rows.append(
            [
                source,
                frame.index,
                f"{frame.time_s:.4f}",
                face.track_id,
                *report.face_cells(p),
                face.smoothed_label,
                f"{face.smoothed_probability:.6f}",
                face.smoothed_corrected_label,
                f"{face.smoothed_corrected_probability:.6f}",
                *(f"{v:.6f}" for v in p.probs),
                *(f"{v:.6f}" for v in face.smoothed_probs),
            ]
        )
    return rows


def console_line(source: str, frame: Frame, face: VideoFace) -> str:
    """The console line of one face in one frame (when no report goes to stdout)."""
    p = face.prediction
    return (
        f"{source} frame {frame.index} t={frame.time_s:.2f}s track {face.track_id} box "
        f"{','.join(map(str, p.box.as_tuple()))} {p.label} {p.probability:.3f} smoothed "
        f"{face.smoothed_label} {face.smoothed_probability:.3f}"
    )


def annotate_frame(image: np.ndarray, faces: Sequence[VideoFace]) -> np.ndarray:
    """A copy of `image (H, W, 3) uint8 RGB` with each face's box and `#id label prob`
    (the smoothed class)."""
    result = ImagePrediction("frame", faces=[f.prediction for f in faces])
    texts = [f"#{f.track_id} {f.smoothed_label} {f.smoothed_probability:.2f}" for f in faces]
    return report.annotate(image, result, texts=texts)
