"""Reading images for prediction: any file PIL opens becomes `(H, W, 3) uint8` RGB.

Webcam and phone pictures differ from training data in ways that silently change
predictions: EXIF orientation (a portrait photo stored sideways), BGR channel order (OpenCV),
16-bit depth, alpha channels, grayscale. The conversion is `grefel_jax.preprocess`, the same
one the dataset builders use; this module adds the command line's file discovery.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from grefel_jax.preprocess import (  # noqa: F401  (the readers live with the preprocessing)
    ImageReadError,
    decode_image_bytes,
    load_image,
    pil_to_rgb,
    to_uint8_rgb,
)

# Suffixes picked up when a directory is given (lower case). Files named explicitly are always
# attempted, whatever their suffix, so that an unreadable file is reported rather than skipped.
IMAGE_SUFFIXES = (
    ".bmp",
    ".gif",
    ".jpeg",
    ".jpg",
    ".pbm",
    ".pgm",
    ".png",
    ".ppm",
    ".tif",
    ".tiff",
    ".webp",
)


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> Iterator[tuple[str, str | None]]:
    """Files named on the command line, with directories expanded (recursively, sorted).

    Yields:
      `(path, problem)`: `problem` is None for a file to read, or a message for an input that
      yields nothing (a missing path, a directory without images), so callers can report it
      in order with the rest.
    """
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                suffixes = ", ".join(IMAGE_SUFFIXES)
                yield str(path), f"{path}: directory holds no image files ({suffixes})."
            for file in files:
                yield str(file), None
        elif path.exists():
            yield str(path), None
        else:
            yield str(path), f"{path}: no such file or directory."
