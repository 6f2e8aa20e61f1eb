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
