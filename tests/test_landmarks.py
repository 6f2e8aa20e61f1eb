"""Landmark losses, NME and the alignment similarity on hand-made cases (issue 10)."""

import numpy as np

from grefel_jax.inference.align import similarity_from_points
from grefel_jax.landmarks import losses


def test_nme_hand_made():
    target = np.array([[[0.3, 0.4], [0.7, 0.4], [0.5, 0.8]]], np.float32)
    pred = target + np.array([[[0.03, 0.04], [0.0, 0.0], [0.0, 0.0]]], np.float32)
    # Distances 0.05, 0, 0 -> mean 1/60; inter-ocular 0.4 -> NME 1/24.
    out = losses.nme(pred, target, target[:, 0], target[:, 1])
    np.testing.assert_allclose(np.asarray(out), [1 / 24], rtol=1e-5)


def test_nme_ignores_missing_points():
    target = np.array([[[0.3, 0.4], [0.7, 0.4], [np.nan, np.nan]]], np.float32)
    pred = np.array([[[0.3, 0.5], [0.7, 0.4], [9.0, 9.0]]], np.float32)
    out = losses.nme(pred, target, target[:, 0], target[:, 1])
    np.testing.assert_allclose(np.asarray(out), [0.05 / 0.4], rtol=1e-5)


def test_wing_and_smooth_l1_hand_made():
    target = np.zeros((1, 2, 2), np.float32)
    pred = np.array([[[0.01, 0.0], [0.5, 0.0]]], np.float32)
    w, eps = 0.1, 0.02
    c = w - w * np.log1p(w / eps)
    want = (w * np.log1p(0.01 / eps) + 0.0 + (0.5 - c) + 0.0) / 4
    np.testing.assert_allclose(float(losses.wing_loss(pred, target, w, eps)), want, rtol=1e-5)
    beta = 0.02
    want = (0.5 * 0.01**2 / beta + (0.5 - 0.5 * beta)) / 4
    np.testing.assert_allclose(float(losses.smooth_l1_loss(pred, target, beta)), want, rtol=1e-5)


def test_similarity_recovers_20_degree_rotation():
    rng = np.random.default_rng(0)
    dst = rng.uniform(20, 80, (5, 2))
    a = np.deg2rad(20)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * 1.3
    src = dst @ rot.T + np.array([5.0, -7.0])
    m = similarity_from_points(src, dst)
    back = src @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(back, dst, atol=1e-6)


class _FixedDraws:
    """A stand-in generator: every uniform draw is `u`, every integer draw the lowest value."""

    def __init__(self, u: float):
        self.u = u

    def uniform(self, low=0.0, high=1.0):
        return low + self.u * (high - low)

    def integers(self, low, high=None):
        return low if high is not None else 0


def _aug(**overrides):
    from grefel_jax.data.config import get_data_config

    aug = get_data_config().augment
    aug.resize_crop = False
    aug.random_erasing_p = 0.0
    aug.update(overrides)
    return aug


def test_flip_permutations_are_mirror_pairs():
    from grefel_jax.data import face_geometry as g
    from grefel_jax.data import landmark_layouts as points

    names = g.LANDMARK_NAMES
    perm = points.SYNTHETIC_FACES.flip_permutation
    assert names[perm[names.index("eye_l_outer")]] == "eye_r_outer"
    assert names[perm[names.index("jaw_0")]] == "jaw_8"
    assert names[perm[names.index("nose_tip")]] == "nose_tip"
    ibug = points.IBUG_68.flip_permutation
    assert (ibug[36], ibug[45], ibug[39], ibug[42], ibug[0], ibug[8]) == (45, 36, 42, 39, 16, 8)
    assert (ibug[48], ibug[57], ibug[62], ibug[65]) == (54, 57, 62, 67)


def test_flip_moves_the_left_eye_to_the_mirrored_right_eye_index():
    from grefel_jax.data import augment
    from grefel_jax.data import face_geometry as g
    from grefel_jax.data import landmark_layouts as points

    s = 32
    layout = points.SYNTHETIC_FACES
    pts = np.full((g.NUM_LANDMARKS, 2), 16.0, np.float32)
    left_eye, right_eye = (
        g.LANDMARK_NAMES.index("eye_l_outer"),
        g.LANDMARK_NAMES.index("eye_r_outer"),
    )
    pts[left_eye] = (24.0, 10.0)  # image right (x > centre): the subject's left eye
    pts[right_eye] = (5.0, 11.0)
    image = np.zeros((s, s, 3), np.uint8)
    image[10, 24] = 255
    flip = _FixedDraws(0.0)  # uniform() < 0.5: flip
    out, moved = augment.augment_train_example(image, pts, s, _aug(), flip, layout.flip_permutation)
    np.testing.assert_allclose(moved[right_eye], (s - 1 - 24.0, 10.0))
    np.testing.assert_allclose(moved[left_eye], (s - 1 - 5.0, 11.0))
    # The bright pixel went where the point says.
    assert np.unravel_index(np.argmax(out[..., 0]), (s, s)) == (10, s - 1 - 24)
    _, twice = augment.augment_train_example(image, moved, s, _aug(), flip, layout.flip_permutation)
    np.testing.assert_allclose(twice, pts)
    # A missing point (NaN, as AffectNet stores them) stays missing, at its new index.
    pts[right_eye] = np.nan
    _, missing = augment.augment_train_example(image, pts, s, _aug(), flip, layout.flip_permutation)
    assert np.isnan(missing[left_eye]).all() and np.isfinite(np.delete(missing, left_eye, 0)).all()
    # No flip drawn: points only pass through the (identity) resize.
    _, same = augment.augment_train_example(
        image, pts, s, _aug(), _FixedDraws(0.9), layout.flip_permutation
    )
    np.testing.assert_allclose(same, pts, atol=1e-5)


def test_crop_resize_flip_rotation_move_points_with_the_pixels():
    """Gaussian blobs drawn at three points are found, after a resize + crop, flip and 12
    degree rotation, at the transformed points (intensity centroids within 0.3 px)."""
    from grefel_jax.data import augment
    from grefel_jax.preprocess import IMAGENET_MEAN, IMAGENET_STD

    h, w, s = 90, 80, 64
    pts = np.array([[25.3, 30.0], [55.0, 41.6], [40.0, 62.2]], np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blobs = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.5**2)) for x, y in pts)
    image = np.repeat((blobs * 250).clip(0, 255).astype(np.uint8)[..., None], 3, axis=-1)
    aug = _aug(resize_crop=True, resize_ratio=1.1, rotation_degrees=12.0)
    out, moved = augment.augment_train_example(image, pts, s, aug, _FixedDraws(0.1), (1, 0, 2))
    grey = out[..., 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    oy, ox = np.mgrid[0:s, 0:s].astype(np.float32)
    for x, y in moved:
        near = ((ox - x) ** 2 + (oy - y) ** 2 < 6.0**2) * grey
        centroid = np.array([(near * ox).sum(), (near * oy).sum()]) / near.sum()
        np.testing.assert_allclose(centroid, (x, y), atol=0.3)
    # Point 0 (x = 25, left half) was mirrored to the right half and took index 1.
    assert moved[1, 0] > s / 2 > moved[0, 0]
