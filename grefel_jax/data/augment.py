"""Training augmentation on numpy arrays (runs in grain's read thread or worker processes).

Resizing and normalization are `grefel_jax.preprocess`'s, the ones evaluation and prediction
use, so the only difference between a training and an evaluation input is the augmentation.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from grefel_jax.preprocess import normalize, resize


def shorter_side_shape(h: int, w: int, size: int) -> tuple[int, int]:
    """(H', W') with the shorter side `size` and the aspect ratio of (h, w) (torchvision)."""
    if h <= w:
        return size, max(size, int(size * w / h))
    return max(size, int(size * h / w)), size


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes so that the shorter side is `size`, keeping the aspect ratio (torchvision)."""
    return resize(image, *shorter_side_shape(*image.shape[:2], size))


def train_resize_shape(h: int, w: int, image_size: int, aug) -> tuple[int, int]:
    """The (H', W') an (h, w) image has after the training augmentation's first step, the
    resize, which involves no random draw (`data.pixel_cache` stores images at this size)."""
    if aug.resize_crop:
        return shorter_side_shape(h, w, int(image_size * aug.resize_ratio))
    return image_size, image_size


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
    return augment_train_example(image, None, image_size, aug, rng)[0]


def augment_train_example(
    image: np.ndarray,
    points: np.ndarray | None,
    image_size: int,
    aug,
    rng: np.random.Generator,
    flip_permutation=None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """`augment_train_image` that moves landmark points with the pixels.

    Points are pixel (x, y) with pixel centres at integers (x = 0 is the middle of the first
    column), the convention of PIL's and OpenCV's resize; NaN (missing) points stay NaN. The
    random draws are exactly those of `augment_train_image`, so an image gets the same
    augmentation with or without points.

    Args:
      image: (H, W, 3) uint8.
      points: (N, 2) float32 pixel coordinates in `image`, or None.
      image_size: S.
      aug: `config.data.augment`.
      rng: per-example generator.
      flip_permutation: (N,) the layout's flip table (`data.landmark_layouts`); required with
        points when `aug.hflip` is on, because a flip turns a left eye into a right eye.

    Returns:
      `(image (S, S, 3) float32 normalized, points (N, 2) float32 pixel coordinates in the
      output, or None)`.
    """
    s = image_size
    if points is not None:
        points = np.asarray(points, np.float64).copy()
        if aug.hflip and flip_permutation is None:
            raise ValueError("augment_train_example: points with hflip need a flip_permutation.")
    h, w = image.shape[:2]
    if aug.resize_crop:
        image = resize_shorter_side(image, int(s * aug.resize_ratio))
        new_h, new_w = image.shape[:2]
        top, left = int(rng.integers(0, new_h - s + 1)), int(rng.integers(0, new_w - s + 1))
        image = image[top : top + s, left : left + s]
    else:
        new_h, new_w, top, left = s, s, 0, 0
        image = resize(image, s, s)
    if points is not None:
        # Resizing keeps pixel-centre positions in proportion: (x + 0.5) scales with the side.
        points[:, 0] = (points[:, 0] + 0.5) * (new_w / w) - 0.5 - left
        points[:, 1] = (points[:, 1] + 0.5) * (new_h / h) - 0.5 - top
    if aug.hflip and rng.uniform() < 0.5:
        image = image[:, ::-1]
        if points is not None:
            points = points[np.asarray(flip_permutation)]
            points[:, 0] = (s - 1) - points[:, 0]
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
        if points is not None:  # warpAffine sends source pixel p to matrix @ (p, 1)
            points = points @ matrix[:, :2].T + matrix[:, 2]
    if aug.brightness > 0 or aug.contrast > 0 or aug.saturation > 0:
        jittered = _color_jitter(
            image.astype(np.float32), rng, aug.brightness, aug.contrast, aug.saturation
        )
        image = jittered.astype(np.uint8)
    out = normalize(image)  # astype makes a contiguous copy of a flipped view
    if aug.random_erasing_p > 0 and rng.uniform() < aug.random_erasing_p:
        out = random_erasing(
            out, rng, tuple(aug.random_erasing_scale), tuple(aug.random_erasing_ratio)
        )
    return out, None if points is None else points.astype(np.float32)


def pixels_to_unit(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel (x, y) (centres at integers) -> crop units: (0, 0) and (1, 1) are the image's
    outer corners. `(..., 2)` -> `(..., 2)` float32; NaN stays NaN."""
    points = np.asarray(points, np.float32)
    return (points + 0.5) / np.array([width, height], np.float32)


def unit_to_pixels(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """Inverse of `pixels_to_unit`."""
    points = np.asarray(points, np.float32)
    return points * np.array([width, height], np.float32) - 0.5
