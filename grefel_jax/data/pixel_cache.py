"""A split's records decoded once into files beside the prepared dataset, read from memory.

Why: the input pipeline decodes, parses and resizes every image of every batch. On the demo
(96x96 PNGs fed at 64x64, batch 32) that host work took 16-18 ms per batch on one core of a
2-core machine, against a 55 ms jitted step that wants both cores, and the training loop ran
at 0.82-0.87 of the pure step rate (docs/performance.md, "Input pipeline"). Of those
milliseconds, reading and parsing the ArrayRecord example was about 4 and the resize about 3.

Datasets whose images all have one shape and that fit (`data.pixel_cache_mb`) are therefore
read once into:

* `grefel_pixels-<split>-<key>[-<H>x<W>].npy`: (N, H, W, C) uint8 pixels, read by memory map. With a
  size, each image is stored after `preprocess.resize` to (H, W), the deterministic first step
  of both the training augmentation and the evaluation preprocessing, which then find the
  image already at that size and leave it as it is (`resize` returns its input unchanged), so
  a cached and an uncached run see identical arrays;
* `grefel_features-<split>-<key>.npz`: every other feature stacked over the records (label,
  landmarks, file name, ...).

`<key>` is a hash of the split's ArrayRecord files (names, sizes, modification times), so a
re-prepared split is never served from the files of an earlier build.

Later item reads touch no ArrayRecord file. Files are written to a temporary name and renamed,
so concurrent processes (several hosts, or `local_cluster` processes, on one data_dir) never
read half a file. A data_dir that cannot be written falls back to decoding, with one warning.
`prepare` deletes the files of an earlier build.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from grefel_jax.data import source
from grefel_jax.preprocess import resize

# What `prepare` deletes when it builds a dataset again.
CACHE_GLOBS = ("grefel_pixels-*.npy", "grefel_features-*.npz")


def cache_path(data_config, split: str, size: tuple[int, int] | None = None) -> Path:
    """Where `split`'s pixel cache lives: the prepared dataset's folder; `size` (H, W) when the
    images are stored resized."""
    suffix = "" if size is None else f"-{int(size[0])}x{int(size[1])}"
    key = _build_key(data_config, split)
    return source.dataset_dir(data_config) / f"grefel_pixels-{split}-{key}{suffix}.npy"


def features_path(data_config, split: str) -> Path:
    """Where `split`'s non-image features are stored (one array per feature)."""
    key = _build_key(data_config, split)
    return source.dataset_dir(data_config) / f"grefel_features-{split}-{key}.npz"


def image_shape(data_config) -> tuple[int, ...] | None:
    """The fixed (H, W, C) of the dataset's `image` feature, or None when it varies."""
    shape = source.load_builder(data_config).info.features["image"].shape
    if any(d is None for d in shape):
        return None
    return tuple(int(d) for d in shape)


def _build_key(data_config, split: str) -> str:
    """10 hex digits hashing the names, sizes and modification times of the split's files."""
    files = source.load_builder(data_config).info.splits[split].filepaths
    stats = []
    for name in sorted(str(f) for f in files):
        st = os.stat(name)
        stats.append([Path(name).name, st.st_size, st.st_mtime_ns])
    return hashlib.sha1(json.dumps(stats).encode()).hexdigest()[:10]


class PixelCachedSource:
    """A data source served from the cache files: `len()` and `[i]` -> dict.

    Item i has `image` = a copy of row i of the pixel file, (H, W, C) uint8, and every other
    feature from the features file, with the types the TFDS source gives (Python int, float
    and bytes for scalar features; arrays otherwise). Picklable for grain worker processes:
    the memory map is reopened in each process instead of being copied into the pickle.
    """

    def __init__(self, pixels_file: Path, features_file: Path):
        self._pixels_file = Path(pixels_file)
        self._features_file = Path(features_file)
        with np.load(self._features_file) as stored:
            self._features = {k: stored[k] for k in stored.files}
        self._length = len(next(iter(self._features.values())))
        self._pixels = None

    def __repr__(self) -> str:
        return f"PixelCachedSource({self._pixels_file})"

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> dict:
        if self._pixels is None:
            self._pixels = np.load(self._pixels_file, mmap_mode="r")
        example = {}
        for key, values in self._features.items():
            example[key] = values[i].item() if values.ndim == 1 else values[i]
        example["image"] = np.array(self._pixels[i])
        return example

    def __getstate__(self):
        return {"pixels": self._pixels_file, "features": self._features_file}

    def __setstate__(self, state):
        self.__init__(state["pixels"], state["features"])


def _save_atomically(path: Path, write) -> None:
    """Calls `write(temporary path)`, then renames the file to `path`."""
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _build_features(undecoded, path: Path) -> None:
    """Stacks every non-image feature of `undecoded` into `path` (npz)."""
    columns: dict[str, list] = {}
    for i in range(len(undecoded)):
        for key, value in undecoded[i].items():
            if key != "image":
                columns.setdefault(key, []).append(value)
    arrays = {key: np.asarray(values) for key, values in columns.items()}
    if not arrays or any(a.dtype == object for a in arrays.values()):
        raise ValueError("no feature besides the image, or one whose values differ in shape")
    _save_atomically(path, lambda tmp: np.savez(tmp, **arrays))


def _build_pixels(decoded, path: Path, shape: tuple[int, ...], size) -> None:
    """Decodes (and resizes to `size`) every image of `decoded` into `path`."""

    def write(tmp):
        pixels = np.lib.format.open_memmap(
            tmp, mode="w+", dtype=np.uint8, shape=(len(decoded),) + shape
        )
        for i in range(len(decoded)):
            image = decoded[i]["image"]
            pixels[i] = image if size is None else resize(image, *size)
        pixels.flush()
        del pixels

    _save_atomically(path, write)


def _valid_pixels(path: Path, expected: tuple[int, ...]) -> bool:
    try:
        cached = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return cached.dtype == np.uint8 and cached.shape == expected


def _valid_features(path: Path, num_records: int) -> bool:
    try:
        with np.load(path) as stored:
            return all(len(stored[k]) == num_records for k in stored.files)
    except (OSError, ValueError, KeyError):
        return False


def data_source(data_config, split: str, *, size: tuple[int, int] | None = None):
    """`source.data_source(data_config, split)`, served from the cache when it applies.

    Args:
      data_config: `config.data`; `pixel_cache_mb` (> 0) is the most MiB a pixel file may take.
      split: a plain split name (split expressions such as `train[:10%]` are not cached).
      size: (H, W) to store the images resized to (see the module docstring); None stores
        them as decoded. A resized file that does not fit falls back to the decoded size.

    Returns:
      a `PixelCachedSource`, or the TFDS source (decoding every read) when the images vary in
      shape, the split does not fit, the split is an expression or the folder is read-only.
    """
    decoded = source.data_source(data_config, split)
    limit_mb = float(data_config.get("pixel_cache_mb", 0) or 0)
    if limit_mb < 0:
        raise ValueError(f"config.data.pixel_cache_mb={limit_mb:g}: expected >= 0 (0 = no cache).")
    stored = image_shape(data_config) if limit_mb > 0 else None
    if stored is None or source.is_split_expression(split):
        return decoded

    def fits(shape):
        return len(decoded) * int(np.prod(shape)) <= limit_mb * 2**20

    shape = stored
    if size is not None:
        size = (int(size[0]), int(size[1]))
        # Stored as decoded instead when the images are grayscale (made RGB before any resize),
        # already at `size`, or when the resized file would not fit.
        if len(stored) == 3 and stored[2] == 3 and stored[:2] != size and fits(size + (3,)):
            shape = size + (3,)
        else:
            size = None
    if not fits(shape):
        return decoded
    try:
        pixels_file = cache_path(data_config, split, size)
        features_file = features_path(data_config, split)
        if not _valid_features(features_file, len(decoded)):
            _build_features(
                source.data_source(data_config, split, decode_image=False), features_file
            )
        if not _valid_pixels(pixels_file, (len(decoded),) + shape):
            _build_pixels(decoded, pixels_file, shape, size)
    except (OSError, ValueError) as e:
        logging.warning("No pixel cache for %s (%s): decoding every image instead.", split, e)
        return decoded
    return PixelCachedSource(pixels_file, features_file)
