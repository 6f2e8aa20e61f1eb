"""`prepare()`: builds one dataset into ArrayRecord files and summarises its split sizes and
class counts (the command line is `grefel_jax.prepare.__main__`).

The manual directory is checked before any work: every missing file of the official release is
listed at once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ml_collections

from grefel_jax.data import builders, errors, pixel_cache, source
from grefel_jax.prepare import align_folder


def _make_builder(name, config, data_dir, skip_corrupt, manual_dir=None, aligner=None):
    cls = builders.get_builder_class(name)
    kwargs = {"data_dir": data_dir, "file_format": "array_record"}
    if name == "image_folder":
        kwargs["config"] = cls.make_config(config or "default")
        kwargs["manual_dir"] = manual_dir
        kwargs["aligner"] = aligner
    elif name == "identity_folder":
        kwargs["config"] = cls.make_config(config or "default")
        kwargs["manual_dir"] = manual_dir
    elif config is not None:
        kwargs["config"] = config
    if name not in builders.GENERATED:
        kwargs["skip_corrupt"] = skip_corrupt
    return cls(**kwargs)


def prepare(
    name: str,
    *,
    data_dir: str,
    config: str | None = None,
    manual_dir: str | None = None,
    skip_corrupt: bool = False,
    overwrite: bool = False,
    verbose: bool = True,
    align: align_folder.FolderAligner | None = None,
) -> dict:
    """Builds `name` (/`config`) into `data_dir`; returns a summary.

    Args:
      align: image_folder only: store aligned faces (`align_folder.from_flags` makes one
        from the command line's flags) under the config `<config>_aligned`.

    Returns:
      dict with `dir` (the prepared folder), `splits` {split: size}, `class_names`,
      `class_counts` {split: (C,) int array}, `corrupt_skipped` (list of files), and with
      `align` the content of its `alignment.json` as `alignment`.

    Raises:
      ManualDataMissingError: the manual dir lacks files of the official release (listed).
      CorruptImageError: an image cannot be decoded (unless skip_corrupt).
    """
    import tensorflow_datasets as tfds  # heavy import kept out of module import time

    data_dir = os.path.expanduser(data_dir)
    cls = builders.get_builder_class(name)
    user_named = name in ("image_folder", "identity_folder")  # the config is the user's name
    if user_named and config is None:
        config = "default"
    config = source.resolve_config_name(name, config) if not user_named else config
    if align is not None and name != "image_folder":
        raise align_folder.AlignOptionError(f"--align prepares image_folder, not {name}.")
    if name == "image_folder":
        align_folder.check_config_name(config, align is not None)
        if align is not None:
            config = align_folder.aligned_config_name(config)
    if name not in builders.GENERATED:
        # Fail before any work, listing everything that is missing.
        cls.check_manual_dir(manual_dir, config)
    if align is not None:
        align_folder.check_existing(_existing_dir(name, config, data_dir), align, overwrite)
    builder = _make_builder(name, config, data_dir, skip_corrupt, manual_dir, align)
    download_config = tfds.download.DownloadConfig(
        manual_dir=os.path.expanduser(manual_dir) if manual_dir else None,
        download_mode=(
            tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
            if overwrite
            else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
        ),
    )
    start = time.time()
    try:
        builder.download_and_prepare(download_config=download_config)
    except errors.DataError:
        raise
    except Exception as e:
        raise errors.BuildError(_build_failure(name, e)) from e
    seconds = time.time() - start

    data_config = ml_collections.ConfigDict(
        {"name": name, "builder_config": config, "data_dir": data_dir}
    )
    directory = source.dataset_dir(data_config)
    for pattern in ("grefel_labels-*.npy", *pixel_cache.CACHE_GLOBS):
        for stale in Path(directory).glob(pattern):
            stale.unlink()  # label and pixel caches of an earlier build
    info = source.dataset_info(data_config)
    counts = {split: source.class_counts(data_config, split) for split in info.split_sizes}
    corrupt = list(builder.corrupt.files) if hasattr(builder, "corrupt") else []
    summary = {
        "dir": str(directory),
        "splits": info.split_sizes,
        "class_names": info.class_names,
        "class_counts": counts,
        "corrupt_skipped": corrupt,
        # Aff-Wild2 frames that have a label but no image in cropped_aligned (no face found).
        "missing_frames": int(getattr(builder, "missing_frames", 0)),
        "seconds": seconds,
        "official_sizes": cls.official_sizes(config),
    }
    if align is not None:
        if align.counts:  # generated now (a reused preparation keeps its own record)
            align_folder.write_record(directory, align)
        record_path = Path(directory) / align_folder.ALIGNMENT_FILE
        summary["alignment"] = (
            json.loads(record_path.read_text()) if record_path.is_file() else None
        )
    if verbose:
        print(format_summary(info, summary))
    return summary


def _existing_dir(name: str, config: str, data_dir: str) -> Path | None:
    """The folder of an earlier preparation of `name`/`config`, or None."""
    data_config = ml_collections.ConfigDict(
        {"name": name, "builder_config": config, "data_dir": data_dir}
    )
    try:
        return source.dataset_dir(data_config)
    except errors.DatasetNotPreparedError:
        return None


def _build_failure(name: str, error: BaseException) -> str:
    """The message of a failed TFDS build, naming its real cause.

    TFDS formats some of its errors (e.g. DuplicatedKeysError) through TensorFlow; without
    TensorFlow installed that ends in `No module named 'tensorflow'`, with the real error as
    the exception's context. Walk the chain to the first error that is not that import.
    """
    chain, seen = [], set()
    current = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    real = [e for e in chain if not (isinstance(e, ImportError) and "tensorflow" in str(e).lower())]
    cause = real[0] if real else error
    if isinstance(cause, errors.DataError):
        return str(cause)
    return f"building {name} failed: {type(cause).__name__}: {cause}"


# More classes than this (identity datasets) are summarised per split, not listed.
_MAX_CLASS_ROWS = 50


def format_summary(info, summary: dict) -> str:
    """Human-readable table of split sizes and per-class counts."""
    lines = [f"Prepared {info.full_name} in {summary['dir']} ({summary['seconds']:.1f} s)"]
    splits = list(summary["splits"])
    if len(info.class_names) > _MAX_CLASS_ROWS:  # identities: one line per split
        for s in splits:
            present = summary["class_counts"][s][summary["class_counts"][s] > 0]
            lines.append(
                f"  {s}: {summary['splits'][s]:,} images of {len(present):,} classes "
                f"({int(present.min()) if len(present) else 0}-"
                f"{int(present.max()) if len(present) else 0} per class)"
            )
    else:
        width = max(len(n) for n in info.class_names)
        lines.append(" " * (width + 2) + "".join(f"{s:>12}" for s in splits))
        for c, class_name in enumerate(info.class_names):
            row = "".join(f"{int(summary['class_counts'][s][c]):>12}" for s in splits)
            lines.append(f"  {class_name:<{width}}{row}")
        total = "".join(f"{summary['splits'][s]:>12}" for s in splits)
        lines.append(f"  {'total':<{width}}{total}")
    official = summary.get("official_sizes")
    if official:
        expected = ", ".join(f"{k} {v:,}" for k, v in official.items())
        match = all(summary["splits"].get(k) == v for k, v in official.items())
        lines.append(
            f"Official release sizes: {expected}"
            + (" (match)." if match else " -- these differ: is the release complete?")
        )
    if summary.get("missing_frames"):
        lines.append(f"Skipped {summary['missing_frames']} labelled frame(s) without an image.")
    if summary.get("alignment"):
        counts = summary["alignment"]["counts"]
        lines.append(
            align_folder.summary_line(counts) + f" Details: {align_folder.ALIGNMENT_FILE}."
        )
    if summary["corrupt_skipped"]:
        lines.append(f"Skipped {len(summary['corrupt_skipped'])} corrupt image(s):")
        lines.extend(f"  {f}" for f in summary["corrupt_skipped"][:20])
    return "\n".join(lines)
