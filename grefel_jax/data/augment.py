"""Training augmentation on numpy arrays (runs in grain's read thread or worker processes).

Resizing and normalization are `grefel_jax.preprocess`'s, the ones evaluation and prediction
use, so the only difference between a training and an evaluation input is the augmentation.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from grefel_jax.preprocess import normalize, resize


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes so that the shorter side is `size`, keeping the aspect ratio (torchvision)."""
    h, w = image.shape[:2]
    if h <= w:
        new_h, new_w = size, max(size, int(size * w / h))
    else:
        new_h, new_w = max(size, int(size * h / w)), size
    return resize(image, new_h, new_w)


def _color_jitter(image: np.ndarray, rng, brightness, contrast, saturation) -> np.ndarray:
    """torchvision-style ColorJitter on float32 [0, 255] (fixed order: b, c, s)."""
    if brightness > 0:
        image = image * rng.uniform(max(0.0, 1 - brightness), 1 + brightness)
    if contrast > 0:
        grey_mean = (image @ np.array([0.299, 0.587, 0.114], np.float32)).mean()
        factor = rng.uniform(max(0.0, 1 - contrast), 1 + contrast)
        image = grey_mean + factor * (image - grey_mean)
    if saturation > 0:
        grey = (image @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        factor = rng.uniform(max(0.0, 1 - saturation), 1 + saturation)
        image = grey + factor * (image - grey)
    return np.clip(image, 0, 255)


def random_erasing(
    image: np.ndarray,
    rng: np.random.Generator,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    value: float = 0.0,
) -> np.ndarray:
    """torchvision RandomErasing (applied unconditionally; the caller draws p).

    Up to 10 attempts to place a rectangle of area fraction U(scale) and log-uniform aspect
    ratio; erased pixels get `value` (0 in the normalized space, as torchvision's default).
    """
    h, w = image.shape[:2]
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        erase_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        eh = int(round(math.sqrt(erase_area * aspect)))
        ew = int(round(math.sqrt(erase_area / aspect)))
        if eh < h and ew < w:
            top = int(rng.integers(0, h - eh + 1))
            left = int(rng.integers(0, w - ew + 1))
            image = image.copy()
            image[top : top + eh, left : left + ew] = value
            return image
    return image


def augment_train_image(image: np.ndarray, image_size: int, aug, rng: np.random.Generator):
    """Training augmentation: (H, W, 3) uint8 -> (S, S, 3) float32 normalized.

    Order (official ARBEx/POSTER++ transforms, plus optional extras): resize (shorter side to
    int(ratio * S)) + random crop S, or plain resize to S; horizontal flip; small rotation;
    colour jitter; ImageNet normalization; random erasing.

    Args:
      image: (H, W, 3) uint8.
      image_size: S.
      aug: `config.data.augment`.
      rng: per-example generator (grain seeds it from the shuffle seed and the position).
    """
    s = image_size
    if aug.resize_crop:
        image = resize_shorter_side(image, int(s * aug.resize_ratio))
        h, w = image.shape[:2]
        top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        image = image[top : top + s, left : left + s]
    else:
        image = resize(image, s, s)
    if aug.hflip and rng.uniform() < 0.5:
        image = image[:, ::-1]
    if aug.rotation_degrees > 0:
        angle = rng.uniform(-aug.rotation_degrees, aug.rotation_degrees)
        matrix = cv2.getRotationMatrix2D((s / 2 - 0.5, s / 2 - 0.5), angle, 1.0)
        image = cv2.warpAffine(
            np.ascontiguousarray(image),
            matrix,
            (s, s),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
    if aug.brightness > 0 or aug.contrast > 0 or aug.saturation > 0:
        jittered = _color_jitter(
            image.astype(np.float32), rng, aug.brightness, aug.contrast, aug.saturation
        )
        image = jittered.astype(np.uint8)
    out = normalize(np.ascontiguousarray(image))
    if aug.random_erasing_p > 0 and rng.uniform() < aug.random_erasing_p:
        out = random_erasing(
            out, rng, tuple(aug.random_erasing_scale), tuple(aug.random_erasing_ratio)
        )
    return out
