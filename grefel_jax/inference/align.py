"""Similarity transform estimation for face alignment (issue 10, first piece).

`similarity_from_points` solves the least-squares similarity (rotation, uniform scale,
translation) mapping source points onto template points (Umeyama 1991, without reflection).
"""

from __future__ import annotations

import numpy as np


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
