"""Face alignment for prediction (issue 10): the warp geometry on a rendered face with its
true points, the plausibility fallback, and the Predictor / CLI path with a landmark net."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from grefel_jax.data import synthetic_faces
from grefel_jax.inference import align
from grefel_jax.landmarks import points as points_lib

LAYOUT = points_lib.SYNTHETIC_FACES
RENDER = 256  # big enough that a pupil is ~5 px wide: it can be found in the warped image
CROP = 160


def _rotate(image: np.ndarray, points: np.ndarray, degrees: float):
    """The image rotated by `degrees` about its centre (cv2), and its points moved along."""
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    rotated = cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)
    return rotated, align.apply_affine(matrix, points)


def _dark_centroid(image: np.ndarray, centre: np.ndarray, radius: int) -> np.ndarray:
    """Centroid (x, y) of the pixels darker than 40 within `radius` of `centre`: the pupil."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    ys, xs = np.mgrid[: gray.shape[0], : gray.shape[1]]
    near = np.hypot(xs - centre[0], ys - centre[1]) <= radius
    weight = np.where(near, np.maximum(40.0 - gray, 0.0), 0.0)
    assert weight.sum() > 0, "no dark pupil pixels near the expected eye"
    return np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()


@pytest.fixture(scope="module")
def face():
    """A light-skinned neutral face (seed chosen so lid lines are not pupil-dark)."""
    sample = synthetic_faces.render_face(3, synthetic_faces.CLASS_NAMES.index("neutral"), RENDER)
    return sample["image"], sample["landmarks"]


def test_a_face_rotated_by_20_degrees_lands_its_eyes_on_the_template(face):
    image, points = face
    five = LAYOUT.five_points(points)
    # The template this face fits exactly: its own five points after the best alignment onto
    # the synthetic template. A face rotated by 20 degrees must come back to it.
    base = align.template_pixels(align.SYNTHETIC_FACES, CROP)
    own = align.apply_affine(align.similarity_from_points(five, base), five)
    template = (own + 0.5) / CROP
    rotated, rotated_points = _rotate(image, points, 20.0)
    rotated_five = LAYOUT.five_points(rotated_points)
    eye_line = rotated_five[1] - rotated_five[0]
    assert abs(math.degrees(math.atan2(eye_line[1], eye_line[0]))) > 15  # it is rotated
    box = (40, 40, RENDER - 80, RENDER - 80)
    assert align.implausibility(rotated_five, template, box) is None

    crop, matrix = align.warp_to_template(rotated, rotated_five, template, CROP)
    assert crop.shape == (CROP, CROP, 3) and crop.dtype == np.uint8
    want = align.template_pixels(template, CROP)
    # The points, moved by the matrix: at the template to well under a pixel.
    landed = align.apply_affine(matrix, rotated_five)
    np.testing.assert_allclose(landed, want, atol=1e-6)
    # The pixels: the dark pupils of the warped image sit on the template eyes within 1 px
    # (this checks that warpAffine and the points use the same pixel convention).
    for eye in (0, 1):
        found = _dark_centroid(crop, want[eye], radius=4)
        assert np.hypot(*(found - want[eye])) < 1.0, (eye, found, want[eye])


def test_the_synthetic_template_is_the_renderers_mean_face():
    """SYNTHETIC_FACES is derived from the renderer's parameter ranges: check it against the
    mean five points of rendered neutral faces (roll +-10 degrees averages out)."""
    neutral = synthetic_faces.CLASS_NAMES.index("neutral")
    units = []
    for seed in range(60):
        sample = synthetic_faces.render_face(seed, neutral, 64, supersample=1)
        units.append((LAYOUT.five_points(sample["landmarks"]) + 0.5) / 64)
    np.testing.assert_allclose(np.mean(units, 0), align.SYNTHETIC_FACES, atol=0.02)


def _flip_about_the_eyes(points: np.ndarray) -> np.ndarray:
    """Nose and mouth mirrored above the eye line: a reflection of a face."""
    flipped = points.copy()
    flipped[:, 1] = 2 * points[:2, 1].mean() - points[:, 1]
    return flipped


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda p: np.full_like(p, 100.0), "eye distance"),  # collapsed (untrained net)
        (lambda p: p[[1, 0, 2, 4, 3]], "roll"),  # eyes swapped: upside down
        (_flip_about_the_eyes, "do not fit"),  # mirrored: no similarity maps it
        (lambda p: p + 500.0, "outside the face box"),
        (lambda p: np.where(np.arange(5)[:, None] == 2, np.nan, p), "non-finite"),
    ],
)
def test_implausible_points_are_rejected_with_a_reason(face, damage, reason):
    _, points = face
    five = LAYOUT.five_points(points)
    box = (40, 40, RENDER - 80, RENDER - 80)
    assert align.implausibility(five, align.SYNTHETIC_FACES, box) is None
    problem = align.implausibility(damage(five), align.SYNTHETIC_FACES, box)
    assert problem is not None and reason in problem, problem
