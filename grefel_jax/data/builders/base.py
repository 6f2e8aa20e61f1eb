"""What every grefel_jax TFDS builder shares: features, manual-dir checks, image loading.

Builders write ArrayRecord (random access for grain) and need no TensorFlow: images are
handed to `tfds.features.Image` as encoded bytes (TFDS only needs TensorFlow to encode numpy
arrays itself), and examples are read back with `as_data_source`.
"""

from __future__ import annotations

import inspect
import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from grefel_jax import preprocess
from grefel_jax.data import errors

VERSION = tfds.core.Version("1.0.0")
FILE_FORMAT = "array_record"
# How many missing paths a ManualDataMissingError lists before summarising the rest.
_MAX_LISTED = 20


def encode_png(rgb: np.ndarray) -> bytes:
    """(H, W, 3) or (H, W) uint8 -> PNG bytes of the RGB image (grey is replicated)."""
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(
        buffer, format="PNG", compress_level=1
    )
    return buffer.getvalue()


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes (used for crops of JPEG sources, to stay compact)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(
        buffer, format="JPEG", quality=quality
    )
    return buffer.getvalue()


class CorruptCounter:
    """Counts (and names) the images skipped as corrupt during one build."""

    def __init__(self):
        self.files: list[str] = []

    def __len__(self) -> int:
        return len(self.files)


def decode_image_file(path: os.PathLike | str) -> tuple[bytes, Image.Image]:
    """Reads and fully decodes an image file; raises CorruptImageError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
        image = Image.open(io.BytesIO(data))
        image.load()  # PIL decodes lazily: force it so a truncated file fails here
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad files
        raise errors.CorruptImageError(
            f"Cannot decode image {path}: {exc}. Re-extract it from the official archive, or "
            "rebuild with --skip_corrupt to skip such files and count them."
        ) from exc
    return data, image


def load_rgb_image(
    path: os.PathLike | str,
    *,
    skip_corrupt: bool,
    corrupt: CorruptCounter,
    crop_box: tuple[int, int, int, int] | None = None,
) -> bytes | None:
    """Encoded RGB image bytes for the `image` feature, or None if skipped as corrupt.

    The pixels are `grefel_jax.preprocess.pil_to_rgb` of the upright image: the conversion
    prediction applies to a user's file (EXIF orientation, alpha over white, 16-bit, palette,
    CMYK, grayscale), so a file gives the same model input in training and in prediction.
    JPEG files that are RGB and upright already are stored byte for byte (no re-encoding
    loss); other files are stored as PNG (or JPEG for crops of JPEG sources).

    Args:
      path: the image file.
      skip_corrupt: if True, undecodable files return None and are added to `corrupt`;
        otherwise they raise CorruptImageError naming the file.
      corrupt: the build's counter of skipped files.
      crop_box: optional (left, top, right, bottom) crop in pixels of the upright image
        (clipped to the image).
    """
    decoded = _decode_rgb(path, skip_corrupt=skip_corrupt, corrupt=corrupt)
    if decoded is None:
        return None
    data, image, upright, rgb = decoded
    if crop_box is not None:
        left, top, right, bottom = crop_box
        left, top = max(0, int(left)), max(0, int(top))
        right, bottom = min(rgb.shape[1], int(right)), min(rgb.shape[0], int(bottom))
        if right - left < 2 or bottom - top < 2:
            raise errors.CorruptImageError(f"{path}: empty face box {crop_box}.")
        crop = rgb[top:bottom, left:right]
        return encode_jpeg(crop) if image.format == "JPEG" else encode_png(crop)
    if image.format == "JPEG" and image.mode == "RGB" and upright is image:
        return data
    return encode_png(rgb)


def _decode_rgb(path, *, skip_corrupt: bool, corrupt: CorruptCounter):
    """`(file bytes, PIL image, upright PIL image, (H, W, 3) uint8 RGB)`, or None if skipped."""
    try:
        data, image = decode_image_file(path)
        upright = preprocess.exif_upright(image)
        rgb = preprocess.pil_to_rgb(upright)
    except (errors.CorruptImageError, preprocess.ImageReadError) as exc:
        if not skip_corrupt:
            if isinstance(exc, errors.CorruptImageError):
                raise
            raise errors.CorruptImageError(f"Cannot convert image {path}: {exc}") from exc
        corrupt.files.append(str(path))
        return None
    return data, image, upright, rgb


def load_rgb_array(
    path: os.PathLike | str, *, skip_corrupt: bool, corrupt: CorruptCounter
) -> tuple[np.ndarray, str | None] | None:
    """`((H, W, 3) uint8 RGB of the upright image, PIL format name)`, or None if skipped.

    The same decoding as `load_rgb_image`, for builders that transform the pixels (the
    aligned image folder) before encoding them.
    """
    decoded = _decode_rgb(path, skip_corrupt=skip_corrupt, corrupt=corrupt)
    if decoded is None:
        return None
    _, image, _, rgb = decoded
    return rgb, image.format


def read_text_lines(path: Path) -> list[str]:
    """The lines of a text file of a release: UTF-8 with or without a BOM, LF or CRLF, each
    line stripped of surrounding blanks (blank lines are kept, so line numbers hold)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise errors.ManualDataFormatError(f"{path}: not UTF-8 text ({e.reason}).") from e
    return [line.strip() for line in text.splitlines()]


def read_csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """`[(line number, cells)]` of a CSV file of a release, blank rows dropped.

    Tolerates what spreadsheet tools add: a UTF-8 BOM, CRLF line ends, blanks around cells.
    """
    import csv

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return [
                (number, [cell.strip() for cell in row])
                for number, row in enumerate(csv.reader(f), start=1)
                if any(cell.strip() for cell in row)
            ]
    except UnicodeDecodeError as e:
        raise errors.ManualDataFormatError(f"{path}: not UTF-8 text ({e.reason}).") from e
    except csv.Error as e:
        raise errors.ManualDataFormatError(f"{path}: not a readable CSV file ({e}).") from e


def has_suffix(path: Path, suffixes: Iterable[str]) -> bool:
    """Case-insensitive suffix test (`.JPG` is a JPEG too)."""
    return path.suffix.lower() in {s.lower() for s in suffixes}


def unique_keys(examples, where: str):
    """Passes `(key, example)` pairs through, failing on a repeated key with its name.

    TFDS detects repeats only after writing, and its error path can end in an unrelated
    TensorFlow import error; here the message names the split and the key.
    """
    seen = set()
    for key, example in examples:
        if key in seen:
            raise errors.ManualDataFormatError(
                f"{where}: two examples have the key {key!r} (a file listed twice?)."
            )
        seen.add(key)
        yield key, example


def missing_paths(root: Path, relative: Iterable[str]) -> list[str]:
    """The entries of `relative` that do not exist under `root`."""
    return [rel for rel in relative if not (root / rel).exists()]


def raise_if_missing(
    dataset: str, root: Path | None, missing: Sequence[str], instructions: str
) -> None:
    """Raises ManualDataMissingError listing `missing` (and the download instructions)."""
    if not missing:
        return
    listed = "\n".join(f"  - {m}" for m in missing[:_MAX_LISTED])
    more = f"\n  ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
    raise errors.ManualDataMissingError(
        f"{dataset}: the manual directory {root} is missing {len(missing)} required "
        f"file(s)/folder(s):\n{listed}{more}\n\nHow to obtain them:\n{instructions}"
    )


def manual_root(dataset: str, manual_dir, instructions: str) -> Path:
    """The manual directory as a Path; fails with the instructions if it does not exist."""
    if manual_dir is None:
        raise errors.ManualDataMissingError(
            f"{dataset} needs manually downloaded files: pass --manual_dir DIR.\n\n{instructions}"
        )
    root = Path(os.fspath(manual_dir)).expanduser()
    if not root.is_dir():
        raise errors.ManualDataMissingError(
            f"{dataset}: manual directory {root} does not exist.\n\n{instructions}"
        )
    return root


def dl_manual_dir(dl_manager) -> Path | None:
    """The manual dir configured in a TFDS download manager, without TFDS's own checks."""
    path = getattr(dl_manager, "_manual_dir", None)
    return None if path is None else Path(os.fspath(path))


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """GeneratorBasedBuilder with a plain `code_path`.

    TFDS's own `code_path` goes through `importlib_resources` (not installed with TFDS on
    Python >= 3.9) for packages imported from a source tree; `inspect.getfile` is enough here.
    """

    # Split sizes of the complete official release, printed by `prepare` beside the built
    # ones (None: unknown). Builders whose sizes depend on the config override the method.
    OFFICIAL_SIZES: dict[str, int] | None = None

    @classmethod
    def official_sizes(cls, config: str | None = None) -> dict[str, int] | None:
        """`{split: num_examples}` of the official release for `config`, or None if unknown."""
        del config
        return dict(cls.OFFICIAL_SIZES) if cls.OFFICIAL_SIZES is not None else None

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        try:
            return epath.Path(inspect.getfile(cls))
        except (TypeError, OSError):
            return None


class ManualBuilder(Builder, skip_registration=True):
    """Base of the builders that read an official release from a manual directory.

    Subclasses implement `check_manual_dir(root) -> dict` (fast, before any work: every
    missing file is listed at once) and `_generate_split(plan, split)` from its result.

    Attributes set on construction:
      skip_corrupt: skip undecodable images (counted in `self.corrupt`) instead of failing.
    """

    VERSION = VERSION

    def __init__(self, *, skip_corrupt: bool = False, **kwargs):
        self.skip_corrupt = skip_corrupt
        self.corrupt = CorruptCounter()
        super().__init__(**kwargs)

    @classmethod
    def check_manual_dir(cls, manual_dir, config: str | None = None) -> dict:
        """Validates the manual dir; returns what `_split_generators` needs (a 'plan')."""
        raise NotImplementedError

    def _split_generators(self, dl_manager):
        plan = self.check_manual_dir(
            dl_manual_dir(dl_manager), self.builder_config.name if self.builder_config else None
        )
        return {
            split: unique_keys(self._generate_examples(plan, split), f"{self.name} {split}")
            for split in plan["splits"]
        }

    def _image(self, path, crop_box=None) -> bytes | None:
        return load_rgb_image(
            path, skip_corrupt=self.skip_corrupt, corrupt=self.corrupt, crop_box=crop_box
        )
