"""Opening a prepared dataset: where it lives, its metadata, random-access sources, labels.

Reading needs only the prepared files (`tfds.builder_from_directory`), never the builder
code or the manual files, so a dataset prepared on one machine can be read on any other.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from grefel_jax.data import builders, errors, folds, noise
from grefel_jax.data.builders import base

MANUAL_DATASETS_HINT = "the files named in the builder's MANUAL_DOWNLOAD_INSTRUCTIONS"


def _field(data_config, name, default=None):
    return data_config.get(name, default) if hasattr(data_config, "get") else default


def resolve_config_name(name: str, builder_config: str | None) -> str | None:
    """The builder config to use: the given one, or the builder's default (first) config."""
    if builder_config not in (None, ""):
        return str(builder_config)
    cls = builders.get_builder_class(name)
    configs = getattr(cls, "BUILDER_CONFIGS", None) or []
    return configs[0].name if configs else None


def prepare_command(name: str, config: str | None, data_dir: str, manual_dir=None) -> str:
    """The shell command that builds this dataset."""
    cmd = f"python -m grefel_jax.prepare --dataset {name}"
    align = ""
    if name == "image_folder" and config and config.endswith(builders.ALIGNED_SUFFIX):
        # `NAME_aligned` is what `--config NAME --align` writes.
        config = config[: -len(builders.ALIGNED_SUFFIX)]
        align = " --align --landmarks CKPT"
    if config:
        cmd += f" --config {config}"
    if name not in builders.GENERATED:
        cmd += f" --manual_dir {manual_dir or 'DIR'}"
    return cmd + f" --data_dir {data_dir}" + align


def dataset_dir(data_config) -> Path:
    """data_dir/name/[config/]version of a prepared dataset; raises if not prepared.

    Raises:
      DatasetNotPreparedError: with the exact command to run (and, for manual datasets, where
        the official files go).
    """
    name = data_config.name
    config = resolve_config_name(name, _field(data_config, "builder_config"))
    data_dir = os.path.expanduser(str(data_config.data_dir))
    root = Path(data_dir) / name
    if config:
        root = root / config
    version_dir = root / str(base.VERSION)
    if (version_dir / "dataset_info.json").exists():
        return version_dir
    full = f"{name}/{config}" if config else name
    command = prepare_command(name, config, data_dir, _field(data_config, "manual_dir"))
    msg = (
        f"Dataset {full!r} is not prepared in data_dir={data_dir} (no {version_dir}).\n"
        f"Build it with:\n  {command}"
    )
    if name not in builders.GENERATED:
        instructions = builders.get_builder_class(name).MANUAL_DOWNLOAD_INSTRUCTIONS
        msg += f"\nPut the official files in the manual directory first:\n{instructions}"
    raise errors.DatasetNotPreparedError(msg)


@functools.lru_cache(maxsize=16)
def _builder_at(path: str):
    return tfds.builder_from_directory(path)


def load_builder(data_config):
    """Read-only TFDS builder of the prepared dataset (metadata and data sources)."""
    return _builder_at(str(dataset_dir(data_config)))


def is_split_expression(split: str) -> bool:
    """True for a TFDS split expression (`train[:10%]`, `train+validation`), False for a name."""
    return any(ch in split for ch in "+[%:")


def data_source(data_config, split: str, *, decode_image: bool = True):
    """Random-access source of `split`: `len()` and `[i]` -> dict of numpy features.

    With `decode_image=False` the `image` feature is left as encoded bytes (for label scans
    and for decoding inside pipeline workers).
    """
    builder = load_builder(data_config)
    if not is_split_expression(split) and split not in builder.info.splits:
        raise KeyError(
            f"Split {split!r} not in {data_config.name}; available: {list(builder.info.splits)}."
        )
    decoders = None if decode_image else {"image": tfds.decode.SkipDecoding()}
    return builder.as_data_source(split, decoders=decoders)


def split_labels(data_config, split: str) -> np.ndarray:
    """(N,) int32 labels of `split` in record order, cached next to the prepared files."""
    directory = dataset_dir(data_config)
    cache = directory / f"grefel_labels-{split}.npy"
    if cache.exists():
        return np.load(cache)
    source = data_source(data_config, split, decode_image=False)
    labels = np.fromiter(
        (source[i]["label"] for i in range(len(source))), dtype=np.int32, count=len(source)
    )
    try:
        np.save(cache, labels)
    except OSError:  # a read-only data_dir is fine: the scan is just repeated next time
        pass
    return labels


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the model and the metrics need to know about a prepared dataset.

    Attributes:
      name: dataset name; config: builder config (or None).
      num_classes: C. class_names: C names in label order.
      split_sizes: examples per split.
      has_landmarks: whether examples carry a `landmarks` feature.
    """

    name: str
    config: str | None
    num_classes: int
    class_names: tuple[str, ...]
    split_sizes: dict[str, int]
    has_landmarks: bool

    @property
    def full_name(self) -> str:
        return f"{self.name}/{self.config}" if self.config else self.name


def dataset_info(data_config) -> DatasetInfo:
    """Metadata of the prepared dataset named by `data_config` (raises if not prepared)."""
    builder = load_builder(data_config)
    label = builder.info.features["label"]
    return DatasetInfo(
        name=data_config.name,
        config=resolve_config_name(data_config.name, _field(data_config, "builder_config")),
        num_classes=label.num_classes,
        class_names=tuple(label.names),
        split_sizes={k: int(v.num_examples) for k, v in builder.info.splits.items()},
        has_landmarks="landmarks" in builder.info.features,
    )


def train_record_indices(data_config) -> np.ndarray | None:
    """Sorted (M,) int64 indices of the training records that training reads; None = all.

    Three settings select a subset, each of what the one before kept:
    `config.data.imbalance.ratio > 1` (a long-tailed subset, grefel_jax.data.imbalance), a
    label file's -1 labels (records dropped by `label_issues --clean drop`), and
    `config.data.folds.num = K >= 2` (every fold but `holdout`: one model of out-of-fold
    scoring, grefel_jax.data.folds).
    """
    folds_config = _field(data_config, "folds")
    if folds_config is None or int(folds_config.num) == 0:
        return unfolded_record_indices(data_config)
    _, holdout, _ = folds.check(folds_config)
    records, assignment = fold_assignment(data_config)
    return records[assignment != holdout]


def unfolded_record_indices(data_config) -> np.ndarray | None:
    """Sorted (M,) int64 indices of the training records that training reads before
    `config.data.folds` (the imbalance subset less the records a label file drops); None = all."""
    split = _field(data_config, "train_split", "train")
    records = None
    settings = _field(data_config, "imbalance")
    if settings is not None and float(settings.ratio) != 1.0:
        from grefel_jax.data import imbalance

        labels = split_labels(data_config, split)
        records = imbalance.long_tail_indices(
            labels, float(settings.ratio), profile=str(settings.profile), seed=int(settings.seed)
        )
    noise_config = _field(data_config, "label_noise")
    if noise_config is not None and str(noise_config.get("file", "") or ""):
        info = dataset_info(data_config)
        given = noise.from_config(noise_config, info.class_names, info.split_sizes[split])
        if len(given.dropped):
            kept = np.setdiff1d(np.arange(info.split_sizes[split]), given.dropped)
            records = kept if records is None else np.intersect1d(records, kept)
    return records


def fold_assignment(data_config) -> tuple[np.ndarray, np.ndarray]:
    """The K-fold split of the training records of `config.data.folds` (K = num >= 2).

    Returns:
      `(records, folds)`: sorted (M,) int64 indices of the records split (those training
      reads without folds) and (M,) int32 the fold of each, stratified by its given label
      (after the label noise or label file), from `folds.seed`.
    """
    split = _field(data_config, "train_split", "train")
    records = unfolded_record_indices(data_config)
    info = dataset_info(data_config)
    if records is None:
        records = np.arange(info.split_sizes[split], dtype=np.int64)
    labels = split_labels(data_config, split)[records]
    noise_config = _field(data_config, "label_noise")
    if noise_config is not None:
        given = noise.from_config(noise_config, info.class_names, info.split_sizes[split])
        labels = given.apply(records, labels)
    folds_config = data_config.folds
    return records, folds.assign_folds(labels, int(folds_config.num), int(folds_config.seed))


@dataclasses.dataclass(frozen=True)
class TrainingSet:
    """The training split as training reads it, worked out once from `config.data`
    (`open_training_set`) and handed to the trainer and the training stream.

    Attributes:
      info: the dataset's metadata.
      split: the training split's name.
      indices: sorted (M,) int64 indices of the records training reads (the long-tailed
        subset of `config.data.imbalance`, less the records a label file drops and the
        held-out fold of `config.data.folds`: `train_record_indices`), or None for the
        whole split.
      data_config: the `config.data` it was opened from (None: a stand-in without files, as
        the benchmarks' random inputs; it has no class counts).
    """

    info: DatasetInfo
    split: str = "train"
    indices: np.ndarray | None = None
    data_config: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        """Records per training epoch: the split, or its long-tailed subset."""
        return self.info.split_sizes[self.split] if self.indices is None else len(self.indices)

    @functools.cached_property
    def class_counts(self) -> np.ndarray:
        """(C,) int64 records per class among those training reads (one label scan, cached
        beside the prepared files)."""
        if self.data_config is None:
            raise ValueError(f"{self.info.full_name}: no prepared files, no class counts.")
        labels = split_labels(self.data_config, self.split)
        if self.indices is not None:
            labels = labels[self.indices]
        return np.bincount(labels, minlength=self.info.num_classes)

    def class_weights(self) -> np.ndarray:
        """(C,) float32 inverse-frequency loss weights of the records training reads
        (`inverse_frequency_weights`)."""
        return inverse_frequency_weights(self.class_counts)


def open_training_set(data_config) -> TrainingSet:
    """The training split of `config.data`: metadata and the records read, each worked out
    once (raises DatasetNotPreparedError if the dataset is not prepared)."""
    return TrainingSet(
        info=dataset_info(data_config),
        split=_field(data_config, "train_split", "train"),
        indices=train_record_indices(data_config),
        data_config=data_config,
    )


def class_counts(data_config, split: str) -> np.ndarray:
    """(C,) int64 examples per class in `split` (the long-tailed subset for the train split)."""
    if split == _field(data_config, "train_split", "train"):
        return open_training_set(data_config).class_counts
    labels = split_labels(data_config, split)
    return np.bincount(labels, minlength=dataset_info(data_config).num_classes)


def inverse_frequency_weights(counts: np.ndarray) -> np.ndarray:
    """(C,) float32 loss weights w_c = (N / C) / N_c from (C,) class counts N_c (N = their sum).

    A class absent from the split gets weight 0 (it cannot appear as a target).
    """
    counts = np.asarray(counts).astype(np.float64)
    total, num_classes = counts.sum(), len(counts)
    weights = np.where(counts > 0, (total / num_classes) / np.maximum(counts, 1), 0.0)
    return weights.astype(np.float32)


def class_weights(data_config, split: str | None = None) -> np.ndarray:
    """(C,) float32 inverse-frequency loss weights of `split` (default: the training split,
    as training reads it)."""
    split = split or _field(data_config, "train_split", "train")
    return inverse_frequency_weights(class_counts(data_config, split))
