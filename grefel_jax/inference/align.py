"""Face alignment for prediction (issue 10): five points -> similarity warp onto a template.

The expression models are trained on *aligned* crops (RAF-DB's 100x100 faces, the synthetic
faces drawn upright in a fixed frame). A detector's square crop of a webcam frame is not
aligned (roll, scale, offset), which is one cause of collapsed webcam predictions (POSTER_V2
issues #13 / #21). Alignment here is the standard one:

1. five points of the face: the two eye centres, the nose tip, the two mouth corners
   (subject's right first, i.e. image-left first on an unmirrored face), from any point
   layout (`data.landmark_layouts.PointLayout.five_points`);
2. `similarity_from_points`: the least-squares rotation + uniform scale + translation onto
   the template's five points (Umeyama 1991, no reflection);
3. `warp_to_template`: `cv2.warpAffine` of the image by that matrix into an S x S crop.

Two checks before a face is called aligned (else the caller keeps the square crop and says
why, with a warning):

- `implausibility`: the point geometry cannot be a face in the detected box;
- `not_a_face_there`: the image, warped by the fitted similarity, is given to a face
  detector, which must find a face where the template puts it. The landmark network is a
  regressor: on a crop of a cheek, a neck or a shirt it still answers an average face's
  points, whose geometry passes the first check (issue 29: a false detector box was
  reported `"aligned": true`); only looking at the pixels tells the two apart.

Coordinates: pixel (x, y) with pixel centres at integers, as in the datasets and OpenCV.
Templates are stored in *unit* coordinates `u = (x + 0.5) / S` (0 and 1 are the crop's outer
edges) so that one template serves every crop size; `template_pixels` converts.

This module is numpy + OpenCV only (no jax), like `faces`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# The five template points, unit coordinates, order: right eye, left eye, nose tip, right
# mouth corner, left mouth corner (subject's right = image left).
#
# ARCFACE: insightface's `arcface_dst` (insightface/python-package/insightface/utils/
# face_align.py), the 5-point template of the 112x112 ArcFace crops, in pixels:
#   (38.2946, 51.6963) (73.5318, 51.5014) (56.0252, 71.7366) (41.5493, 92.3655)
#   (70.7299, 92.2041), divided here as (x + 0.5) / 112.
# It is the de-facto template for 5-point aligned face crops. RAF-DB's aligned 100x100 crops
# were made by its authors with a similarity transform on five annotated points, but they did
# not publish their target positions, so this template is our stand-in for RAF-DB / AffectNet
# models (docs/landmarks.md: "Alignment for prediction").
_ARCFACE_112_PIXELS = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ]
)
ARCFACE = ((_ARCFACE_112_PIXELS + 0.5) / 112.0).astype(np.float64)

# SYNTHETIC_FACES: where `data.synthetic_faces.render_face` puts the five points of an
# average neutral face (no roll, no yaw, no offset), from the renderer's parameter ranges:
# pixel = S * (0.5 + 0.395 * (p - (0, 0.12))) with the mean scale 0.395 (uniform 0.36..0.43)
# and the canonical points at the means of `face_geometry.Identity`: eyes (+-0.38, -0.16)
# (eye_x 0.32..0.44, eye_y -0.22..-0.10), nose tip (0, 0.20) (eye_y + nose_len 0.30..0.42),
# mouth corners (+-0.295, 0.56) (mouth_w 0.25..0.34, mouth_y 0.50..0.62).
# tests/test_align.py checks it against the mean points of rendered faces.
_SYNTHETIC_CANONICAL = np.array(
    [[-0.38, -0.16], [0.38, -0.16], [0.0, 0.20], [-0.295, 0.56], [0.295, 0.56]]
)
SYNTHETIC_FACES = 0.5 + 0.395 * (_SYNTHETIC_CANONICAL - np.array([0.0, 0.12]))


class AlignmentWarning(UserWarning):
    """A face kept its square crop because its landmarks were implausible."""


TEMPLATES = {"arcface": ARCFACE, "synthetic_faces": SYNTHETIC_FACES}

# Plausibility limits (see `implausibility`). A Haar box is about 2.3 eye distances wide on
# real faces and the synthetic ones (an SSD box on the astronaut photo ~2.3 too: 92 px, eyes
# ~40 px apart); the limits leave a factor ~2 either way.
MIN_EYE_DISTANCE_TO_BOX = 0.2
MAX_EYE_DISTANCE_TO_BOX = 0.9
MAX_ROLL_DEGREES = 60.0
# RMS of the fit's residual over the template's eye distance: an average face vs ArcFace
# leaves ~0.05, a random or collapsed point set ~0.3 and more.
MAX_RELATIVE_RESIDUAL = 0.2
# `not_a_face_there`: the face is warped into a VERIFY_SIZE square with the template in its
# central VERIFY_FACE_FRACTION (context around it, as a detector expects), and a detected box
# must contain the five template points with its centre within one template eye distance
# of their centroid.
VERIFY_SIZE = 224
VERIFY_FACE_FRACTION = 0.5


def template_for(name: str) -> np.ndarray:
    """The (5, 2) unit-coordinate template called `name` ('arcface', 'synthetic_faces')."""
    if name not in TEMPLATES:
        raise ValueError(
            f"unknown alignment template {name!r}: expected one of {sorted(TEMPLATES)}."
        )
    return TEMPLATES[name]


def template_pixels(template: np.ndarray, size: int) -> np.ndarray:
    """(5, 2) unit template -> pixel coordinates (centres at integers) of an S x S crop."""
    return np.asarray(template, np.float64) * size - 0.5


def similarity_from_points(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform with dst ~= A @ [x, y, 1].

    Args:
      src: (N, 2) points in the input image, N >= 2.
      dst: (N, 2) corresponding template points.
    Returns:
      (2, 3) float64 affine matrix [s R | t].
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two (N, 2) arrays with N >= 2, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.T @ s0 / len(src)
    u, sig, vt = np.linalg.svd(cov)
    # Forbid a reflection: a mirrored face is not a similarity of the template.
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt)) or 1.0])
    rot = u @ sign @ vt
    var = np.mean(np.sum(s0 * s0, 1))
    scale = np.trace(np.diag(sig) @ sign) / max(var, 1e-12)
    t = mu_d - scale * rot @ mu_s
    return np.concatenate([scale * rot, t[:, None]], 1)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """`matrix (2, 3)` applied to `points (N, 2)` -> (N, 2)."""
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def implausibility(points: np.ndarray, template: np.ndarray, box: tuple[int, ...]) -> str | None:
    """Why five points cannot be the face in `box`, or None when they can.

    Args:
      points: (5, 2) image pixels, `template` order (right eye, left eye, nose, mouth corners).
      template: (5, 2) unit coordinates.
      box: the detected face `(x, y, width, height)`.

    Checks: all finite; the eye centres inside the box (grown by half its side); the eye
    distance between MIN_ and MAX_EYE_DISTANCE_TO_BOX of the box width; the roll (angle of
    the eye line) within MAX_ROLL_DEGREES; the fit's RMS residual within
    MAX_RELATIVE_RESIDUAL template eye distances (catches collapsed, scrambled or mirrored
    points: the fit forbids reflections).
    """
    points = np.asarray(points, np.float64)
    if points.shape != (5, 2):
        return f"expected 5 points, got an array of shape {points.shape}"
    if not np.all(np.isfinite(points)):
        return "non-finite points"
    x, y, w, h = (float(v) for v in box[:4])
    eyes = points[:2]
    inside = (
        (eyes[:, 0] >= x - w / 2)
        & (eyes[:, 0] <= x + 1.5 * w)
        & (eyes[:, 1] >= y - h / 2)
        & (eyes[:, 1] <= y + 1.5 * h)
    )
    if not np.all(inside):
        return "eyes outside the face box"
    eye_vector = eyes[1] - eyes[0]
    ratio = float(np.hypot(*eye_vector)) / max(w, 1.0)
    if not MIN_EYE_DISTANCE_TO_BOX <= ratio <= MAX_EYE_DISTANCE_TO_BOX:
        lo, hi = MIN_EYE_DISTANCE_TO_BOX, MAX_EYE_DISTANCE_TO_BOX
        return f"eye distance {ratio:.2f} of the box width (expected {lo}..{hi})"
    roll = math.degrees(math.atan2(eye_vector[1], eye_vector[0]))
    if abs(roll) > MAX_ROLL_DEGREES:
        return f"roll {roll:.0f} degrees (limit {MAX_ROLL_DEGREES:.0f})"
    template = np.asarray(template, np.float64)
    matrix = similarity_from_points(points, template)
    residual = np.sqrt(np.mean(np.sum((apply_affine(matrix, points) - template) ** 2, 1)))
    relative = residual / float(np.hypot(*(template[1] - template[0])))
    if relative > MAX_RELATIVE_RESIDUAL:
        return (
            f"points do not fit the template (residual {relative:.2f} eye distances, "
            f"limit {MAX_RELATIVE_RESIDUAL})"
        )
    return None


def not_a_face_there(
    image: np.ndarray, points: np.ndarray, template: np.ndarray, detector
) -> str | None:
    """Why the face `points` describe is not seen by `detector`, or None when it is.

    Args:
      image: (H, W, 3) uint8 RGB.
      points: (5, 2) image pixels, template order.
      template: (5, 2) unit coordinates.
      detector: anything with `detect(image) -> [FaceBox]` (`inference.faces`).

    The image is warped as for alignment, but into a VERIFY_SIZE square with the template in
    its centre (so that the face has context around it), and the detector is run on it: one
    of its boxes must contain the five template points, centred within one eye distance of
    them.
    """
    inner = VERIFY_FACE_FRACTION
    canvas_template = (1.0 - inner) / 2.0 + inner * np.asarray(template, np.float64)
    canvas, _ = warp_to_template(image, points, canvas_template, VERIFY_SIZE)
    want = template_pixels(canvas_template, VERIFY_SIZE)
    eye_distance = float(np.hypot(*(want[1] - want[0])))
    centre = want.mean(axis=0)
    boxes = detector.detect(canvas)
    for box in boxes:
        x, y, w, h = box.as_tuple()
        inside = np.all((want >= (x, y)) & (want <= (x + w, y + h)))
        near = np.hypot(x + w / 2 - centre[0], y + h / 2 - centre[1]) <= eye_distance
        if inside and near:
            return None
    if not boxes:
        return "the face detector finds no face where the landmarks put one"
    return "the face detector finds a face, but not where the landmarks put one"


def warp_to_template(
    image: np.ndarray, points: np.ndarray, template: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The S x S crop in which `points` land (least squares) on `template`.

    Args:
      image: (H, W, 3) uint8 RGB.
      points: (5, 2) image pixels, template order.
      template: (5, 2) unit coordinates.
      size: S, the crop side.

    Returns:
      `(crop (S, S, 3) uint8, matrix (2, 3))`, matrix mapping image pixels to crop pixels.
      Outside the image the crop repeats the border pixels (as RAF-DB's aligned crops do
      rather than showing black corners).
    """
    matrix = similarity_from_points(points, template_pixels(template, size))
    crop = cv2.warpAffine(
        np.ascontiguousarray(image),
        matrix,
        (int(size), int(size)),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return crop, matrix


def align_face(
    image: np.ndarray,
    crop_points: np.ndarray,
    crop_corner: tuple[int, int],
    box: tuple[int, ...],
    layout,
    template: np.ndarray,
    size: int,
    verifier=None,
) -> tuple[np.ndarray | None, str | None]:
    """One face's aligned crop from the landmark network's points on its square crop.

    The step that `Predictor.align_crops` (prediction) and `prepare.align_folder` (prepare
    --align) share.

    Args:
      image: (H, W, 3) uint8 RGB, the whole image.
      crop_points: (N, 2) the network's points in pixels of the square crop.
      crop_corner: `(x0, y0)` of the square crop in the image (crops are unresized slices
        of the image, so crop pixel + corner = image pixel).
      box: the detected face `(x, y, width, height)` (for `implausibility`).
      layout: the points' `data.landmark_layouts.PointLayout` (its `five_points`).
      template: (5, 2) unit coordinates.
      size: S, the aligned crop's side.
      verifier: a face detector for `not_a_face_there` (None: that check is skipped).

    Returns:
      `(crop (S, S, 3) uint8, None)`, or `(None, reason)` when the points are implausible
      or the verifier sees no face where they put it (the caller keeps the square crop).
    """
    five = layout.five_points(np.asarray(crop_points, np.float64) + np.asarray(crop_corner))
    problem = implausibility(five, template, box)
    if problem is not None:
        problem = f"landmarks implausible ({problem})"
    elif verifier is not None:
        problem = not_a_face_there(image, five, template, verifier)
    if problem is not None:
        return None, problem
    warped, _ = warp_to_template(image, five, template, size)
    return warped, None


def align_best_face(
    image: np.ndarray, detector, landmarks, template: np.ndarray, size: int, margin: float
) -> tuple[np.ndarray, str, str | None]:
    """The surest detected face of `image`, aligned, or what prediction falls back to.

    Args:
      image: (H, W, 3) uint8 RGB.
      detector: anything with `detect(image) -> [FaceBox]` (`faces`); its surest box
        (`faces.rank_faces`) is aligned, and it checks the aligned face (`not_a_face_there`).
      landmarks: anything with `layout` and `predict_points(crops) -> (K, N, 2)` crop pixels
        (`inference.landmark_points.LandmarkModel`).
      template: (5, 2) unit coordinates.
      size: S, the aligned crop's side.
      margin: context of the square crop around the box, as a fraction of its side.

    Returns:
      `(crop, status, reason)`: status 'aligned' (crop (S, S, 3)), 'fallback_crop' (the
      square crop, unresized, as `predict --align` keeps it; reason says why) or 'no_face'
      (the whole image, as `predict --no-detect` feeds it).
    """
    from grefel_jax.inference import faces as faces_lib  # numpy + OpenCV too

    boxes = faces_lib.rank_faces(detector.detect(image))
    if not boxes:
        return image, "no_face", None
    box = boxes[0]  # surest first: a large false box does not win (issue 29)
    region = faces_lib.crop_box(box, image.shape, margin)
    square = faces_lib.crop(image, region)
    (points,) = landmarks.predict_points([square])
    warped, problem = align_face(
        image, points, region[:2], box.as_tuple(), landmarks.layout, template, size, detector
    )
    if warped is None:
        return square, "fallback_crop", problem
    return warped, "aligned", None
