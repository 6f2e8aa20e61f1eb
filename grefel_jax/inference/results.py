"""What a prediction is: `FacePrediction` / `ImagePrediction` and how model outputs fill them.

Kept apart from the Predictor (and free of jax and model code: numpy only) so that prediction
from an export folder (`grefel_jax.export.predict`) builds exactly the same results, hence the
same JSON and CSV, from an artifact's outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from grefel_jax.inference import faces as faces_lib

# Model outputs prediction reads; the grefel head adds the last two.
OUTPUT_KEYS = (
    "probs",
    "corrected_probs",
    "confidence",
    "anchor_confidence",
    "attention_confidence",
)


@dataclasses.dataclass
class FacePrediction:
    """The prediction for one face.

    Attributes:
      box: the detected face (the whole image with `detect=False`), upright-image pixels.
      crop_box: `(x0, y0, x1, y1)` of the region fed to the model: a square around a detected
        face, the whole image with `detect=False`.
      class_index / label / probability: argmax of the primary distribution p.
      probs: (C,) float32, p.
      corrected_index / corrected_label / corrected_probability / corrected_probs: the same
        for the reliability-balanced distribution (equal to the primary for the poster head).
      confidence: 1 - H(p) / ln C, the normalized-entropy confidence of p in [0, 1].
      anchor_confidence / attention_confidence: the same for the anchor and attention
        corrections (grefel head only, else None).
      aligned: None when alignment was not asked for; True when the face was warped onto
        the alignment template, False when it fell back to the square crop.
    """

    box: faces_lib.FaceBox
    crop_box: tuple[int, int, int, int]
    class_index: int
    label: str
    probability: float
    probs: np.ndarray
    corrected_index: int
    corrected_label: str
    corrected_probability: float
    corrected_probs: np.ndarray
    confidence: float
    anchor_confidence: float | None = None
    attention_confidence: float | None = None
    aligned: bool | None = None


@dataclasses.dataclass
class ImagePrediction:
    """All faces of one input image, or why there are none.

    Attributes:
      source: the file path, or `images[i]` for an array input.
      faces: one FacePrediction per face, surest face first; empty when no face was found or
        the image could not be read.
      error: None, or the message of an image that could not be read or predicted.
      image_shape: `(H, W)` of the upright image (None when unreadable).
      image: the decoded `(H, W, 3) uint8` image when `keep_images=True`, else None.
    """

    source: str
    faces: list[FacePrediction] = dataclasses.field(default_factory=list)
    error: str | None = None
    image_shape: tuple[int, int] | None = None
    image: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """The image was read and predicted (it may still have no face)."""
        return self.error is None

    @property
    def no_face(self) -> bool:
        """Read fine, but the detector found no face."""
        return self.error is None and not self.faces


def unfilled_face(box: faces_lib.FaceBox, region: Sequence[int]) -> FacePrediction:
    """A FacePrediction placeholder for `box` until its batch has run (see `fill_face`)."""
    empty = np.zeros((0,), np.float32)
    return FacePrediction(box, tuple(region), -1, "", 0.0, empty, -1, "", 0.0, empty, 0.0)


def fill_face(
    face: FacePrediction,
    outputs: Mapping[str, np.ndarray],
    row: int,
    class_names: Sequence[str],
) -> None:
    """Writes row `row` of the model outputs into `face`.

    Args:
      face: the placeholder to fill (in place).
      outputs: `OUTPUT_KEYS` arrays over N faces: `probs (N, C)`, `corrected_probs (N, C)`,
        `confidence (N,)` and, for the grefel head, `anchor_confidence (N,)` and
        `attention_confidence (N,)`.
      row: which of the N faces this is.
      class_names: the C names.
    """
    probs = np.asarray(outputs["probs"][row]).astype(np.float32)
    corrected = np.asarray(outputs["corrected_probs"][row]).astype(np.float32)
    face.class_index = int(np.argmax(probs))
    face.label = class_names[face.class_index]
    face.probability = float(probs[face.class_index])
    face.probs = probs
    face.corrected_index = int(np.argmax(corrected))
    face.corrected_label = class_names[face.corrected_index]
    face.corrected_probability = float(corrected[face.corrected_index])
    face.corrected_probs = corrected
    face.confidence = float(outputs["confidence"][row])
    if "anchor_confidence" in outputs:
        face.anchor_confidence = float(outputs["anchor_confidence"][row])
        face.attention_confidence = float(outputs["attention_confidence"][row])
