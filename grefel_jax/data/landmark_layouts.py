"""Landmark point layouts: how many points, which swap under a horizontal flip, where the eyes are.

Two layouts, one per dataset that stores a `landmarks` feature:

* `synthetic_faces`: the 35 points of `grefel_jax.data.face_geometry.LANDMARK_NAMES` (its
  flip table and eye points are defined there, next to the names);
* `affectnet`: the 68 points of the iBUG / 300-W annotation (below): jaw 0-16, brows 17-26,
  nose 27-35, eyes 36-47, mouth 48-67, numbered from the subject's right (image left).

The flip table of a layout reads: point k of the flipped face is the mirror image of point
`flip_permutation[k]` of the original. The eye centres (mean of each eye's points) normalise
the NME.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from grefel_jax.data import face_geometry


@dataclasses.dataclass(frozen=True)
class PointLayout:
    """One annotation scheme.

    Attributes:
      num_points: N.
      flip_permutation: (N,) indices, see the module doc.
      right_eye, left_eye: indices of the points whose mean is each eye centre (subject's
        right / left).
      nose_tip: index of the nose tip.
      mouth_corners: indices of the (subject's right, left) mouth corners.
    """

    num_points: int
    flip_permutation: tuple[int, ...]
    right_eye: tuple[int, ...]
    left_eye: tuple[int, ...]
    nose_tip: int
    mouth_corners: tuple[int, int]

    def __post_init__(self):
        if sorted(self.flip_permutation) != list(range(self.num_points)):
            raise ValueError("flip_permutation must be a permutation of range(num_points).")
        perm = np.asarray(self.flip_permutation)
        if not np.array_equal(perm[perm], np.arange(self.num_points)):
            raise ValueError("flip_permutation must be its own inverse (a flip twice is none).")

    def eye_centres(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`points (..., N, 2)` -> (right, left) eye centres, each `(..., 2)`."""
        points = np.asarray(points)
        right = points[..., list(self.right_eye), :].mean(axis=-2)
        left = points[..., list(self.left_eye), :].mean(axis=-2)
        return right, left

    def five_points(self, points: np.ndarray) -> np.ndarray:
        """`points (..., N, 2)` -> `(..., 5, 2)`: right eye centre, left eye centre, nose tip,
        right and left mouth corners (the order of `inference.align`'s templates)."""
        points = np.asarray(points)
        right, left = self.eye_centres(points)
        rest = points[..., [self.nose_tip, *self.mouth_corners], :]
        return np.concatenate([right[..., None, :], left[..., None, :], rest], axis=-2)


def _ibug68_flip() -> tuple[int, ...]:
    """The 68-point flip table from the mirror pairs of the iBUG scheme."""
    pairs = [(i, 16 - i) for i in range(8)]  # jaw
    pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
    pairs += [(31, 35), (32, 34)]  # nostrils (27-30 and 33 on the midline)
    pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
    pairs += [(48, 54), (49, 53), (50, 52), (59, 55), (58, 56)]  # outer lip (51, 57 midline)
    pairs += [(60, 64), (61, 63), (67, 65)]  # inner lip (62, 66 midline)
    perm = list(range(68))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return tuple(perm)


SYNTHETIC_FACES = PointLayout(
    num_points=face_geometry.NUM_LANDMARKS,
    flip_permutation=face_geometry.LANDMARK_FLIP_PERMUTATION,
    right_eye=face_geometry.EYE_CENTRE_POINTS[0],
    left_eye=face_geometry.EYE_CENTRE_POINTS[1],
    nose_tip=face_geometry.LANDMARK_NAMES.index("nose_tip"),
    mouth_corners=(
        face_geometry.LANDMARK_NAMES.index("mouth_corner_r"),
        face_geometry.LANDMARK_NAMES.index("mouth_corner_l"),
    ),
)
IBUG_68 = PointLayout(
    num_points=68,
    flip_permutation=_ibug68_flip(),
    right_eye=tuple(range(36, 42)),
    left_eye=tuple(range(42, 48)),
    nose_tip=30,
    mouth_corners=(48, 54),
)
LAYOUTS = {"synthetic_faces": SYNTHETIC_FACES, "affectnet": IBUG_68}


def layout_for_num_points(num_points: int) -> PointLayout:
    """The layout with `num_points` points (a landmark checkpoint records only its head's
    size); ValueError naming the known sizes."""
    for layout in LAYOUTS.values():
        if layout.num_points == num_points:
            return layout
    known = sorted(layout.num_points for layout in LAYOUTS.values())
    raise ValueError(f"no landmark layout has {num_points} points (known: {known}).")


def layout_for(dataset_name: str) -> PointLayout:
    """The point layout of a prepared dataset (`config.data.name`); ValueError if it has none."""
    if dataset_name not in LAYOUTS:
        raise ValueError(
            f"config.data.name={dataset_name!r} has no landmark layout; landmark pretraining "
            f"runs on {sorted(LAYOUTS)}."
        )
    return LAYOUTS[dataset_name]
