"""Grain input pipelines over prepared TFDS ArrayRecord datasets.

Training: seeded global shuffle, infinite repeat, per-host sharding (`ShardByJaxProcess`),
decode, label noise, augmentation, ImageNet normalization, batching with drop-remainder,
worker processes and prefetch. The iterator's `get_state`/`set_state` (grain's) is what orbax
saves beside the model.

Evaluation: the split is padded to a multiple of the global batch with masked copies of
record 0, so that every host runs the same number of full batches and every example counts
exactly once (`mask` is False on padding).

Yielded batches are dicts of numpy arrays holding this host's share of the global batch:
  image (b, S, S, 3) float32, label (b,) int32 (possibly noisy), clean_label (b,) int32,
  and for evaluation mask (b,) bool.
"""

from __future__ import annotations

import grain
import jax
import numpy as np

from grefel_jax.data import augment, noise, source
from grefel_jax.data.augment import preprocess_eval_image  # noqa: F401  (public re-export)
from grefel_jax.data.errors import DatasetNotPreparedError  # noqa: F401  (public re-export)
from grefel_jax.data.source import DatasetInfo, class_weights, dataset_info  # noqa: F401

# The inverse-frequency sampler draws from a virtual index space this many times the split,
# so that each virtual epoch is a fresh class-balanced draw.
_RESAMPLED_EPOCHS = 1000


def _ensure_absl_flags_parsed() -> None:
    """Grain worker processes read absl flags; outside absl.app.run they are unparsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _per_host_batch(global_batch_size: int) -> int:
    processes = jax.process_count()
    if global_batch_size % processes:
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the {processes} JAX "
            "processes."
        )
    return global_batch_size // processes


class _IndexedSource:
    """Adds `record_key` (the record's index in its split) to every example."""

    def __init__(self, base):
        self._base = base

    def __repr__(self) -> str:  # grain validates restored state against repr(source)
        return f"_IndexedSource({self._base!r})"

    def __len__(self) -> int:
        return len(self._base)

    def __getitem__(self, index: int):
        example = dict(self._base[int(index)])
        example["record_key"] = int(index)
        return example


class _ResampledSource:
    """Virtual source of `len(weights) * epochs` draws; draw k is record `draw(k)`.

    Draw k picks a class uniformly, then a record of that class uniformly, both from a hash of
    (seed, k): inverse-frequency sampling that is deterministic, random-access and so
    shuffled, sharded and checkpointed by grain like any source.
    """

    def __init__(self, base, labels: np.ndarray, seed: int, epochs: int = _RESAMPLED_EPOCHS):
        self._base = base
        self._seed = int(seed)
        self._length = len(labels) * epochs
        present = np.unique(labels)
        self._by_class = [np.flatnonzero(labels == c).astype(np.int64) for c in present]

    def __repr__(self) -> str:
        return f"_ResampledSource({self._base!r}, seed={self._seed}, length={self._length})"

    def __len__(self) -> int:
        return self._length

    def record_index(self, k: int) -> int:
        u_class, u_member = noise._uniforms(self._seed ^ 0x5A5A5A5A, int(k))
        members = self._by_class[int(u_class * len(self._by_class))]
        return int(members[int(u_member * len(members))])

    def __getitem__(self, k: int):
        index = self.record_index(k)
        example = dict(self._base[index])
        example["record_key"] = index
        return example


class _PaddedSource:
    """Pads a source to `length` with masked copies of record 0; adds `mask`."""

    def __init__(self, base, length: int):
        self._base = base
        self._n = len(base)
        self._length = length

    def __repr__(self) -> str:
        return f"_PaddedSource({self._base!r}, length={self._length})"

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int):
        index = int(index)
        real = index < self._n
        example = dict(self._base[index if real else 0])
        example["record_key"] = index if real else -1
        example["mask"] = real
        return example


class _TrainMap(grain.transforms.RandomMap):
    """Example -> {image (S,S,3) f32, label i32 (noisy), clean_label i32}."""

    def __init__(self, image_size: int, aug, label_noise: noise.LabelNoise):
        self._image_size = image_size
        self._aug = aug
        self._noise = label_noise

    def random_map(self, example, rng: np.random.Generator):
        clean = int(example["label"])
        return {
            "image": augment.augment_train_image(
                example["image"], self._image_size, self._aug, rng
            ),
            "label": np.int32(self._noise(example["record_key"], clean)),
            "clean_label": np.int32(clean),
        }


class _EvalMap(grain.transforms.Map):
    """Example -> {image (S,S,3) f32, label, clean_label, mask bool}."""

    def __init__(self, image_size: int):
        self._image_size = image_size

    def map(self, example):
        label = np.int32(example["label"])
        return {
            "image": preprocess_eval_image(example["image"], self._image_size),
            "label": label,
            "clean_label": label,
            "mask": np.bool_(example["mask"]),
        }


def _read_options(data_config) -> grain.ReadOptions:
    return grain.ReadOptions(num_threads=int(data_config.get("read_threads", 4)))


def _frozen_aug(aug_config):
    """A plain, picklable copy of `config.data.augment` (ConfigDicts may hold locks)."""
    import types

    return types.SimpleNamespace(**{key: aug_config[key] for key in aug_config.keys()})


def make_train_iterator(data_config, *, image_size: int, global_batch_size: int, seed: int):
    """Infinite, shuffled, augmented training batches for this host.

    Args:
      data_config: `config.data` (see grefel_jax.data.config.get_data_config).
      image_size: S, the model's input side.
      global_batch_size: batch over all hosts; this host yields global // process_count.
      seed: run seed; combined with `data_config.shuffle_seed` for shuffling and augmentation.

    Returns:
      grain DataLoader iterator (supports get_state/set_state) of dicts:
        image (b, S, S, 3) float32, label (b,) int32, clean_label (b,) int32.

    Raises:
      DatasetNotPreparedError: with the command that prepares the dataset.
    """
    info = dataset_info(data_config)
    split = data_config.train_split
    base = source.data_source(data_config, split)
    label_noise = noise.from_config(data_config.label_noise, info.class_names)
    sampler_kind = data_config.get("sampler", "none")
    sample_seed = (int(seed) * 1_000_003 + int(data_config.shuffle_seed)) % (1 << 31)
    if sampler_kind == "inverse_frequency":
        records = _ResampledSource(base, source.split_labels(data_config, split), sample_seed)
    elif sampler_kind == "none":
        records = _IndexedSource(base)
    else:
        raise ValueError(
            f"config.data.sampler={sampler_kind!r} must be 'none' or 'inverse_frequency'."
        )
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=len(records),
        shard_options=shard,
        shuffle=True,
        num_epochs=None,
        seed=sample_seed,
    )
    operations = [
        _TrainMap(image_size, _frozen_aug(data_config.augment), label_noise),
        grain.transforms.Batch(_per_host_batch(global_batch_size), drop_remainder=True),
    ]
    workers = int(data_config.num_workers)
    if workers > 0:
        _ensure_absl_flags_parsed()
    loader = grain.DataLoader(
        data_source=records,
        sampler=sampler,
        operations=operations,
        worker_count=workers,
        worker_buffer_size=int(data_config.prefetch),
        shard_options=shard,
        read_options=_read_options(data_config),
    )
    return iter(loader)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    """Batches per host for an evaluation pass over `num_examples` (last one padded)."""
    return -(-num_examples // global_batch_size)


def make_eval_iterator(data_config, split: str, *, image_size: int, global_batch_size: int):
    """One pass over `split` in order, padded so every example counts exactly once.

    Returns:
      iterator of dicts: image (b, S, S, 3) float32, label (b,) int32, clean_label (b,) int32,
      mask (b,) bool (False on padding). Every host yields
      `num_eval_batches(len(split), global_batch_size)` full batches.
    """
    base = source.data_source(data_config, split)
    padded = num_eval_batches(len(base), global_batch_size) * global_batch_size
    records = _PaddedSource(base, padded)
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    sampler = grain.samplers.IndexSampler(
        num_records=padded, shard_options=shard, shuffle=False, num_epochs=1
    )
    workers = int(data_config.num_workers)
    if workers > 0:
        _ensure_absl_flags_parsed()
    loader = grain.DataLoader(
        data_source=records,
        sampler=sampler,
        operations=[
            _EvalMap(image_size),
            grain.transforms.Batch(_per_host_batch(global_batch_size), drop_remainder=False),
        ],
        worker_count=workers,
        worker_buffer_size=int(data_config.prefetch),
        shard_options=shard,
        read_options=_read_options(data_config),
    )
    return iter(loader)
