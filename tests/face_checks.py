"""Checks on rendered faces shared by the alignment tests."""

from __future__ import annotations

import cv2
import numpy as np


def dark_centroid(image: np.ndarray, centre: np.ndarray, radius: int) -> np.ndarray:
    """Centroid (x, y) of the pixels darker than 40 within `radius` of `centre`: the pupil.

    Args:
      image: (H, W, 3) uint8 RGB.
      centre: (2,) float (x, y) where the eye is expected.
      radius: search radius in pixels.
    """
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
    ys, xs = np.mgrid[: gray.shape[0], : gray.shape[1]]
    near = np.hypot(xs - centre[0], ys - centre[1]) <= radius
    weight = np.where(near, np.maximum(40.0 - gray, 0.0), 0.0)
    assert weight.sum() > 0, "no dark pupil pixels near the expected eye"
    return np.array([(weight * xs).sum(), (weight * ys).sum()]) / weight.sum()
