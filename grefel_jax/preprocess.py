"""THE path from an image to the model's input, shared by data preparation, the input
pipeline, evaluation and prediction (so training and prediction see the same pixels).

1. Decode to upright 8-bit RGB (`load_image`, `decode_image_bytes`, `pil_to_rgb`,
   `to_uint8_rgb`): EXIF orientation applied, alpha composited over white, 16-bit and float
   images mapped to 8 bits, grayscale, palette and CMYK converted by one set of rules.
2. Resize to S x S with PIL bilinear (antialiased when shrinking), as torchvision's `Resize`
   on PIL images in the official code, so converted checkpoints see the same pixels.
3. ImageNet mean/std normalization.

`preprocess_eval_image` is steps 2-3 for evaluation and prediction; the training
augmentation (`data/augment.py`) uses the same resize and normalization. Only numpy and PIL
are imported here (no grain, no TFDS), so prediction stays light.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# (x / 255 - mean) / std = x * scale + offset, computed once.
_NORM_SCALE = (1.0 / (255.0 * IMAGENET_STD)).astype(np.float32)
_NORM_OFFSET = (-IMAGENET_MEAN / IMAGENET_STD).astype(np.float32)
_EXIF_ORIENTATION = 0x0112

# Transparent pixels are composited over white: what an image viewer shows, and closer to
# the bright backgrounds of face datasets than black.
_BACKGROUND = 255.0


class ImageReadError(ValueError):
    """An image file that cannot be read or an array that is not an image; names the source."""


def decode_image_bytes(data: bytes, name: str = "image") -> np.ndarray:
    """Encoded image bytes (any format PIL reads) -> upright (H, W, 3) uint8 RGB.

    The same rules as `load_image`; raises ImageReadError naming `name`.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return pil_to_rgb(exif_upright(image))
    except ImageReadError as e:
        raise ImageReadError(f"{name}: {e}") from e
    except Image.UnidentifiedImageError as e:
        raise ImageReadError(f"{name}: not an image file PIL can read.") from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        # OSError covers truncated files and unsupported codecs; SyntaxError broken headers.
        raise ImageReadError(f"{name}: cannot decode ({type(e).__name__}: {e}).") from e


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Reads an image file as upright 8-bit RGB.

    Applies the EXIF orientation tag (so boxes refer to the image as displayed), composites
    alpha over white, maps 16-bit and float images to 8 bits and replicates grayscale.
    Multi-frame files (GIF, TIFF) give their first frame.

    Args:
      path: the file.

    Returns:
      (H, W, 3) uint8 RGB.

    Raises:
      ImageReadError: naming the file and why (missing, not an image, truncated, ...).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as e:
        raise ImageReadError(f"{path}: no such file.") from e
    except IsADirectoryError as e:
        raise ImageReadError(f"{path}: is a directory.") from e
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read ({e.strerror or e}).") from e
    return decode_image_bytes(data, str(path))


def exif_upright(image: Image.Image) -> Image.Image:
    """The image rotated/flipped as its EXIF orientation says; the same object without one."""
    try:
        if image.getexif().get(_EXIF_ORIENTATION, 1) in (None, 1):
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001  A malformed EXIF block must not lose the picture.
        return image


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """PIL image of any mode -> (H, W, 3) uint8 RGB (see `to_uint8_rgb` for the rules)."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # PIL opens 16-bit grayscale PNG/TIFF as 'I;16*' or 'I' (32-bit int holding 0..65535).
        array = np.asarray(image).astype(np.int64)
        return to_uint8_rgb(np.clip(array, 0, 65535).astype(np.uint16))
    if mode == "F":
        return to_uint8_rgb(np.asarray(image, dtype=np.float32))
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return to_uint8_rgb(np.asarray(image.convert("RGBA")))
    if mode != "RGB":
        # L, 1, P, CMYK, YCbCr, LAB, HSV: PIL's own conversions to RGB.
        image = image.convert("RGB")
    return to_uint8_rgb(np.asarray(image))


def to_uint8_rgb(array: np.ndarray, name: str = "image") -> np.ndarray:
    """Converts an image array to (H, W, 3) uint8 RGB.

    Rules (the channel order is taken to be RGB(A): convert OpenCV BGR arrays first):
      * dtype: uint8 as is; uint16 scaled by 255/65535; bool to {0, 255}; other integer types
        must lie in [0, 255]; float in [0, 1] is scaled by 255, float with a larger maximum is
        read as [0, 255] and clipped.
      * shape: (H, W) and (H, W, 1) grayscale are replicated; (H, W, 2) gray + alpha and
        (H, W, 4) RGBA are composited over white; (H, W, 3) is kept.

    Args:
      array: the image.
      name: what to call it in error messages (a file name or `images[3]`).

    Returns:
      (H, W, 3) uint8, C-contiguous.

    Raises:
      ImageReadError: an empty image, a shape that is not an image, or out-of-range integers.
    """
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4):
        raise ImageReadError(
            f"{name}: shape {array.shape} is not an image; expected (H, W), (H, W, 1), "
            "(H, W, 3) or (H, W, 4)."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageReadError(f"{name}: empty image of shape {array.shape}.")
    if array.dtype == np.uint8 and array.shape[-1] == 3:
        return np.ascontiguousarray(array)  # Already what the pipeline decodes.
    values = _to_unit_range(array, name)  # float32 in [0, 255]
    channels = values.shape[-1]
    if channels in (2, 4):
        alpha = values[..., -1:] / 255.0
        values = values[..., :-1] * alpha + _BACKGROUND * (1.0 - alpha)
    if values.shape[-1] == 1:
        values = np.repeat(values, 3, axis=-1)
    return np.ascontiguousarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _to_unit_range(array: np.ndarray, name: str) -> np.ndarray:
    """Any supported dtype -> float32 on the 8-bit scale [0, 255]."""
    if array.dtype == np.uint8:
        return array.astype(np.float32)
    if array.dtype == np.bool_:
        return array.astype(np.float32) * 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) * np.float32(255.0 / 65535.0)
    if np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ImageReadError(
                f"{name}: {array.dtype} values in [{low}, {high}]; integer images other than "
                "uint16 must lie in [0, 255]."
            )
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        values = array.astype(np.float32)
        if not np.all(np.isfinite(values)):
            raise ImageReadError(f"{name}: float image with NaN or infinite values.")
        scale = 255.0 if float(values.max(initial=0.0)) <= 1.0 else 1.0
        return np.clip(values * np.float32(scale), 0.0, 255.0)
    raise ImageReadError(f"{name}: unsupported dtype {array.dtype}.")


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (height, width, 3) uint8, PIL bilinear (antialiased when shrinking)."""
    if image.shape[0] == height and image.shape[1] == width:
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def normalize(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> float32 with ImageNet mean/std: (x / 255 - mean) / std."""
    out = image.astype(np.float32)
    out *= _NORM_SCALE
    out += _NORM_OFFSET
    return out


def preprocess_eval_image(image: np.ndarray, image_size: int) -> np.ndarray:
    """THE evaluation/prediction preprocessing: resize to S x S, ImageNet-normalize.

    Args:
      image: (H, W, 3) uint8 RGB face crop (grayscale (H, W) or (H, W, 1) is replicated).
      image_size: S, the model's input side.

    Returns:
      (S, S, 3) float32.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"preprocess_eval_image expects uint8 RGB, got {image.dtype}.")
    return normalize(resize(to_uint8_rgb(image), image_size, image_size))
