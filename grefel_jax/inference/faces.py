"""Face detection (OpenCV Haar cascade) and the square, margin-padded face crop.

The models are trained on face crops (RAF-DB's aligned 100x100 faces, AffectNet's face boxes),
so a whole webcam frame resized to the model input is far outside the training distribution:
that is the usual cause of "every prediction is neutral/happy". Prediction therefore detects
the face, crops a square around it with some context, and only then applies the evaluation
preprocessing (`grefel_jax.preprocess.preprocess_eval_image`).

Boxes are `(x, y, width, height)` in pixels of the upright image (after EXIF rotation).
"""

from __future__ import annotations

import dataclasses
import functools
import os

import cv2
import numpy as np

DEFAULT_CASCADE = "haarcascade_frontalface_default.xml"


@dataclasses.dataclass(frozen=True)
class FaceBox:
    """An axis-aligned box in pixels: top-left corner `(x, y)`, `width`, `height`.

    Attributes:
      score: the cascade's confidence (OpenCV level weight; larger = surer), None for boxes
        that were not detected (the whole image with `detect=False`).
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
