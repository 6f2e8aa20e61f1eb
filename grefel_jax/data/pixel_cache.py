"""Decoded pixels of a split in one uint8 `.npy` beside the prepared dataset, read by memory map.

Why: the input pipeline decodes every image of every batch. A 96x96 PNG of the synthetic
faces takes about 0.4 ms to decode on one core, more than its augmentation (0.15 ms); on a
2-core machine the read thread's decoding takes CPU from the jitted step, and the demo loop
ran below the pure step rate (docs/performance.md, "Input pipeline"). Datasets whose images
all have one shape and that are small enough (`data.pixel_cache_mb`) are decoded once into
`grefel_pixels-<split>.npy` (N, H, W, C) uint8 in the prepared folder; later runs read a
record's other features undecoded and its pixels from the memory map. The pixels are the
decoder's own output, so a cached and an uncached run see identical arrays.

The file is written to a temporary name and renamed, so concurrent processes (several hosts
or `local_cluster` processes on one data_dir) never read a half-written cache. A data_dir
that cannot be written falls back to decoding, with one warning. `prepare` deletes the files
of an earlier build.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from grefel_jax.data import source

CACHE_GLOB = "grefel_pixels-*.npy"


def cache_path(data_config, split: str) -> Path:
    """Where `split`'s pixel cache lives (the prepared dataset's folder)."""
    return source.dataset_dir(data_config) / f"grefel_pixels-{split}.npy"


def image_shape(data_config) -> tuple[int, ...] | None:
    """The fixed (H, W, C) of the dataset's `image` feature, or None when it varies."""
    shape = source.load_builder(data_config).info.features["image"].shape
    if any(d is None for d in shape):
        return None
    return tuple(int(d) for d in shape)


class PixelCachedSource:
    """A data source whose `image` comes from the pixel cache: `len()` and `[i]` -> dict.

    Item i is `raw[i]` (every feature undecoded) with `image` replaced by a copy of row i of
    the cache, (H, W, C) uint8. Picklable for grain worker processes: the memory map is
    reopened in each process instead of being copied into the pickle.
    """

    def __init__(self, raw, path: Path):
        self._raw = raw
        self._path = Path(path)
        self._pixels = None

    def __repr__(self) -> str:
        return f"PixelCachedSource({self._raw!r}, {self._path})"

    def __len__(self) -> int:
        return len(self._raw)

    def __getitem__(self, i: int) -> dict:
        if self._pixels is None:
            self._pixels = np.load(self._path, mmap_mode="r")
        example = dict(self._raw[i])
        example["image"] = np.array(self._pixels[i])
        return example

    def __getstate__(self):
        return {"raw": self._raw, "path": self._path}

    def __setstate__(self, state):
        self.__init__(state["raw"], state["path"])


def _build(decoded, path: Path, shape: tuple[int, ...]) -> None:
    """Decodes every record of `decoded` into `path` (via a temporary file, then a rename)."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    try:
        pixels = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(decoded),) + shape
        )
        for i in range(len(decoded)):
            pixels[i] = decoded[i]["image"]
        pixels.flush()
        del pixels
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _valid(path: Path, expected: tuple[int, ...]) -> bool:
    try:
        cached = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return cached.dtype == np.uint8 and cached.shape == expected


def data_source(data_config, split: str):
    """`source.data_source(data_config, split)`, served from the pixel cache when it applies.

    The cache is used (and built on first use) when `data_config.pixel_cache_mb` > 0, every
    image has the same shape, and N * H * W * C bytes fit in that many MiB.
    """
    decoded = source.data_source(data_config, split)
    limit_mb = float(data_config.get("pixel_cache_mb", 0) or 0)
    if limit_mb < 0:
        raise ValueError(f"config.data.pixel_cache_mb={limit_mb:g}: expected >= 0 (0 = no cache).")
    shape = image_shape(data_config) if limit_mb > 0 else None
    if shape is None or len(decoded) * int(np.prod(shape)) > limit_mb * 2**20:
        return decoded
    path = cache_path(data_config, split)
    expected = (len(decoded),) + shape
    if not _valid(path, expected):
        try:
            _build(decoded, path, shape)
        except OSError as e:
            logging.warning("No pixel cache for %s (%s): decoding every image instead.", split, e)
            return decoded
    return PixelCachedSource(source.data_source(data_config, split, decode_image=False), path)
