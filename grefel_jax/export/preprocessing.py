"""The runner's preprocessing, driven by `model.json['input']`: resize, normalize, batch.

The same arithmetic as `grefel_jax.preprocess.preprocess_eval_image` (PIL bilinear resize to
S x S, then `x * 1 / (255 std) - mean / std` in float32), but with the side, mean and std read
from the manifest instead of the model's config. Imports numpy and PIL only; decoding files
(EXIF, alpha, 16-bit) is `grefel_jax.preprocess.load_image`, which imports the same two.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

# The one resize the exporter writes (what preprocess_eval_image does).
RESIZE = "PIL bilinear"


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The model input an artifact expects.

    Attributes:
      image_size: S; inputs are (B, S, S, 3) float32 NHWC, RGB.
      mean / std: per-channel ImageNet-style normalization on the [0, 1] scale.
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @classmethod
    def from_manifest(cls, values: Mapping[str, Any]) -> InputSpec:
        """`model.json['input']` -> InputSpec; raises ValueError for an unknown layout."""
        for key, expected in (("layout", "NHWC"), ("dtype", "float32"), ("resize", RESIZE)):
            if values.get(key) != expected:
                raise ValueError(
                    f"input.{key}={values.get(key)!r}; this runner reads {expected!r}."
                )
        return cls(
            image_size=int(values["image_size"]),
            mean=tuple(float(x) for x in values["mean"]),
            std=tuple(float(x) for x in values["std"]),
        )

    def to_manifest(self) -> dict[str, Any]:
        """JSON-ready dict (the inverse of `from_manifest`)."""
        return {
            "layout": "NHWC",
            "dtype": "float32",
            "channels": "RGB",
            "image_size": self.image_size,
            "resize": RESIZE,
            "value_range": "uint8 pixels / 255",
            "mean": list(self.mean),
            "std": list(self.std),
        }


def preprocess(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """(H, W, 3) uint8 RGB face crop -> (S, S, 3) float32 model input."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise TypeError(f"expected (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}.")
    size = spec.image_size
    if image.shape[:2] != (size, size):
        image = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))
    std = np.asarray(spec.std, np.float32)
    scale = (1.0 / (255.0 * std)).astype(np.float32)
    offset = (-np.asarray(spec.mean, np.float32) / std).astype(np.float32)
    out = image.astype(np.float32)
    out *= scale
    out += offset
    return out


def preprocess_batch(images: Sequence[np.ndarray], spec: InputSpec) -> np.ndarray:
    """N uint8 RGB crops of any sizes -> (N, S, S, 3) float32."""
    size = spec.image_size
    if not images:
        return np.zeros((0, size, size, 3), np.float32)
    return np.stack([preprocess(image, spec) for image in images])
