"""Grain input pipelines over prepared TFDS ArrayRecord datasets.

The order of the training data is global: position `i` of the stream (i = 0, 1, 2, ...) is
record `perm_e[i mod N]` of a split of N records, where `perm_e` is a seeded permutation of
epoch `e = i // N` (or, with the inverse-frequency sampler, a seeded class-balanced draw).
Global batch `t` is positions `t*B .. t*B + B - 1`; process `p` of `P` reads the `p`-th
contiguous slice of `B / P` of them. So

* every record is read exactly once per epoch, by exactly one process;
* the global batch at step t is the same whatever the number of processes or devices, and
  so is every augmentation draw, which is seeded by (seed, position);
* the stream position is a function of the step: a resumed run rebuilds the iterator at its
  step (`start_step`) and needs no saved iterator state, on any topology.

Per record: decode, label noise (a function of the record index, so every host and every
resumed run agree), augmentation, ImageNet normalization. Batches are prepared ahead by
grain's read thread (and worker processes if `num_workers > 0`) while the jitted step runs.

Evaluation reads the split in record order, padded to a multiple of the global batch with
masked copies of record 0, so every example counts exactly once (`mask` is False on padding).

Yielded batches are dicts of numpy arrays holding this process's share of the global batch:
  image (b, S, S, 3) float32, label (b,) int32 (possibly noisy), clean_label (b,) int32,
  record_key (b,) int32 (the record's index in its split; -1 on padding), and for evaluation
  mask (b,) bool.
"""

from __future__ import annotations

import threading

import grain
import jax
import numpy as np

from grefel_jax.data import augment, noise, pixel_cache, source
from grefel_jax.data.errors import DatasetNotPreparedError  # noqa: F401  (public re-export)
from grefel_jax.data.source import (  # noqa: F401  (DatasetInfo, class_weights: re-exports)
    DatasetInfo,
    TrainingSet,
    class_weights,
    dataset_info,
)
from grefel_jax.preprocess import preprocess_eval_image

# Length of the (endless) training stream as a grain source: far more steps than any run.
_STREAM_STEPS = 10**9


def _ensure_absl_flags_parsed() -> None:
    """Grain worker processes read absl flags; outside absl.app.run they are unparsed."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def per_host_batch(global_batch_size: int) -> int:
    """This process's share `b = B / P` of a global batch; raises if it does not divide."""
    processes = jax.process_count()
    if global_batch_size % processes:
        raise ValueError(
            f"Global batch size {global_batch_size} is not divisible by the {processes} JAX "
            "processes."
        )
    return global_batch_size // processes


def stream_seed(seed: int, shuffle_seed: int) -> int:
    """The seed of the training order and augmentation: run seed mixed with the data seed."""
    return (int(seed) * 1_000_003 + int(shuffle_seed)) % (1 << 31)


class TrainOrder:
    """Which record stands at each position of the training stream (see the module doc).

    Args:
      num_records: N, the size of the split.
      seed: from `stream_seed`.
      labels: (N,) labels of the split, only for `sampler='inverse_frequency'`: then
        position i draws a class uniformly and a record of that class uniformly, both from a
        hash of (seed, i), instead of walking a permutation.
      sampler: 'none' or 'inverse_frequency'.
      keep: optional sorted (M,) record indices to draw from instead of all N (the records
        training reads: a long-tailed subset, less dropped records and a held-out fold,
        `source.train_record_indices`); positions then walk permutations of M.
    """

    def __init__(self, num_records: int, seed: int, labels=None, sampler: str = "none", keep=None):
        if sampler not in ("none", "inverse_frequency"):
            raise ValueError(
                f"config.data.sampler={sampler!r} must be 'none' or 'inverse_frequency'."
            )
        self._keep = None if keep is None else np.asarray(keep, np.int64)
        if self._keep is not None:
            num_records = len(self._keep)
        if num_records < 1:
            raise ValueError("The training split is empty.")
        self.num_records = int(num_records)
        self.seed = int(seed)
        self.sampler = sampler
        self._by_class = None
        if sampler == "inverse_frequency":
            labels = np.asarray(labels)
            candidates = np.arange(len(labels)) if self._keep is None else self._keep
            self._by_class = [
                candidates[labels[candidates] == c] for c in np.unique(labels[candidates])
            ]
        self._permutations: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self):  # picklable for worker processes (the lock is not)
        state = dict(self.__dict__)
        state["_lock"] = None
        state["_permutations"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            perm = self._permutations.get(epoch)
            if perm is None:
                perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
                # Two epochs are enough: a batch straddles at most one epoch boundary.
                self._permutations = {e: p for e, p in self._permutations.items() if e == epoch - 1}
                self._permutations[epoch] = perm
            return perm

    def record(self, position: int) -> int:
        """The record index at stream position `position`."""
        if self._by_class is not None:
            u_class, u_member = noise.uniforms(self.seed ^ 0x5A5A5A5A, int(position))
            members = self._by_class[int(u_class * len(self._by_class))]
            return int(members[int(u_member * len(members))])
        epoch, offset = divmod(int(position), self.num_records)
        index = int(self._permutation(epoch)[offset])
        return index if self._keep is None else int(self._keep[index])


class _HostTrainSource:
    """Random-access source of this process's stream: item k -> the example at its position.

    Item k of process p is position `(k // b) * B + p * b + k % b` (b = B / P).
    """

    def __init__(self, base, order: TrainOrder, global_batch: int, host_batch: int, process: int):
        self._base = base
        self._order = order
        self._global_batch = global_batch
        self._host_batch = host_batch
        self._process = process

    def __repr__(self) -> str:
        return (
            f"_HostTrainSource({self._base!r}, seed={self._order.seed}, "
            f"batch={self._global_batch}, process={self._process})"
        )

    def __len__(self) -> int:
        return _STREAM_STEPS * self._host_batch

    def position(self, k: int) -> int:
        step, j = divmod(int(k), self._host_batch)
        return step * self._global_batch + self._process * self._host_batch + j

    def __getitem__(self, k: int):
        position = self.position(k)
        index = self._order.record(position)
        example = dict(self._base[index])
        example["record_key"] = index
        example["position"] = position
        return example


class _TrainMap(grain.transforms.Map):
    """Example -> {image (S,S,3) f32, label i32 (noisy), clean_label i32, record_key i32}.

    The augmentation draws come from a generator seeded by (seed, stream position), so they
    do not depend on how the stream is split over processes or workers.
    """

    def __init__(self, image_size: int, aug, label_noise, seed: int):
        self._image_size = image_size
        self._aug = aug
        self._noise = label_noise
        self._seed = seed

    def map(self, example):
        clean = int(example["label"])
        rng = np.random.default_rng([self._seed, 1, int(example["position"])])
        return {
            "image": augment.augment_train_image(
                example["image"], self._image_size, self._aug, rng
            ),
            "label": np.int32(self._noise(example["record_key"], clean)),
            "clean_label": np.int32(clean),
            "record_key": np.int32(example["record_key"]),
        }


class _HostEvalSource:
    """This process's share of a split padded to a multiple of the global batch.

    Item k is padded position `(k // b) * B + p * b + k % b`; positions past the split are
    masked copies of record 0.
    """

    def __init__(self, base, padded: int, global_batch: int, host_batch: int, process: int):
        self._base = base
        self._n = len(base)
        self._padded = padded
        self._global_batch = global_batch
        self._host_batch = host_batch
        self._process = process

    def __repr__(self) -> str:
        return f"_HostEvalSource({self._base!r}, padded={self._padded}, process={self._process})"

    def __len__(self) -> int:
        return self._padded // self._global_batch * self._host_batch

    def __getitem__(self, k: int):
        step, j = divmod(int(k), self._host_batch)
        index = step * self._global_batch + self._process * self._host_batch + j
        real = index < self._n
        example = dict(self._base[index if real else 0])
        example["record_key"] = index if real else -1
        example["mask"] = real
        return example


class _EvalMap(grain.transforms.Map):
    """Example -> {image (S,S,3) f32, label, clean_label, record_key, mask bool}."""

    def __init__(self, image_size: int):
        self._image_size = image_size

    def map(self, example):
        label = np.int32(example["label"])
        return {
            "image": preprocess_eval_image(example["image"], self._image_size),
            "label": label,
            "clean_label": label,
            "record_key": np.int32(example["record_key"]),
            "mask": np.bool_(example["mask"]),
        }


def frozen_aug(aug_config):
    """A plain, picklable copy of `config.data.augment` (ConfigDicts may hold locks)."""
    import types

    return types.SimpleNamespace(**{key: aug_config[key] for key in aug_config.keys()})


def iterate(dataset: grain.MapDataset, data_config):
    """Batches of `dataset` prepared ahead: grain's read thread(s), optionally processes.

    One read thread computes whole batches ahead of the loop (`prefetch` of them); more
    threads fight over the GIL on small machines (4 threads were 3x slower than 1 on 2
    cores). `num_workers > 0` moves the work into processes.
    """
    options = grain.ReadOptions(
        num_threads=int(data_config.get("read_threads", 1)),
        prefetch_buffer_size=max(1, int(data_config.prefetch)),
    )
    stream = dataset.to_iter_dataset(options)
    workers = int(data_config.num_workers)
    if workers > 0:
        _ensure_absl_flags_parsed()
        stream = stream.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=workers, per_worker_buffer_size=max(1, int(data_config.prefetch))
            )
        )
    return iter(stream)


def train_records(
    data_config,
    *,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    image_size: int | None = None,
    training_set: TrainingSet | None = None,
) -> tuple[grain.MapDataset, int]:
    """This process's share of the training stream, from global batch `start_step`.

    Item k is the record at its stream position (module doc) with `record_key` and `position`
    added; map it and batch it by `per_host_batch(global_batch_size)`.

    Args:
      image_size: S, when the records feed `augment.augment_train_image` at that size: their
        images may then come already resized (`augment.train_resize_shape`, from the pixel
        cache), which changes nothing in the augmented result. None: images as stored (for
        maps that need the stored geometry, such as landmark points).
      training_set: the training split as the training setup opened it
        (`source.open_training_set`); None: opened here.

    Returns:
      `(records, stream_seed)`; the seed is for the per-position augmentation generators.
    """
    split = data_config.train_split
    resized = None
    shape = pixel_cache.image_shape(data_config) if image_size else None
    if shape is not None:
        resized = augment.train_resize_shape(*shape[:2], image_size, data_config.augment)
    base = pixel_cache.data_source(data_config, split, size=resized)
    sampler = data_config.get("sampler", "none")
    labels = source.split_labels(data_config, split) if sampler == "inverse_frequency" else None
    keep = (training_set or source.open_training_set(data_config)).indices
    the_seed = stream_seed(seed, data_config.shuffle_seed)
    order = TrainOrder(len(base), the_seed, labels, sampler, keep=keep)
    host_batch = per_host_batch(global_batch_size)
    records = _HostTrainSource(base, order, global_batch_size, host_batch, jax.process_index())
    return grain.MapDataset.source(records)[int(start_step) * host_batch :], the_seed


def training_labels(data_config, info: DatasetInfo | None = None):
    """The function `(record index, clean label) -> training label` of `config.data.label_noise`
    (seeded noise, or a label file checked against the training split's size); `info`: the
    dataset's metadata if already read."""
    info = info or dataset_info(data_config)
    return noise.from_config(
        data_config.label_noise,
        info.class_names,
        num_records=info.split_sizes.get(data_config.train_split),
    )


def make_train_iterator(
    data_config,
    *,
    image_size: int,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
    training_set: TrainingSet | None = None,
):
    """Endless, shuffled, augmented training batches for this process, from `start_step`.

    Args:
      data_config: `config.data` (see grefel_jax.data.config.get_data_config).
      image_size: S, the model's input side.
      global_batch_size: B over all processes; this process yields B / P examples per batch.
      seed: run seed; combined with `data_config.shuffle_seed` for the order and the
        augmentation.
      start_step: the first batch is global batch `start_step` of the stream (resume).
      training_set: the training split as the training setup opened it
        (`source.open_training_set`); None: opened here.

    Returns:
      iterator of dicts: image (b, S, S, 3) float32, label (b,) int32, clean_label (b,)
      int32, record_key (b,) int32.

    Raises:
      DatasetNotPreparedError: with the command that prepares the dataset.
    """
    training_set = training_set or source.open_training_set(data_config)
    records, the_seed = train_records(
        data_config,
        global_batch_size=global_batch_size,
        seed=seed,
        start_step=start_step,
        image_size=image_size,
        training_set=training_set,
    )
    label_noise = training_labels(data_config, training_set.info)
    dataset = records.map(
        _TrainMap(image_size, frozen_aug(data_config.augment), label_noise, the_seed)
    ).batch(per_host_batch(global_batch_size), drop_remainder=True)
    return iterate(dataset, data_config)


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
    """Batches per process for an evaluation pass over `num_examples` (last one padded)."""
    return -(-num_examples // global_batch_size)


def eval_records(
    data_config, split: str, *, global_batch_size: int, image_size: int | None = None
) -> grain.MapDataset:
    """This process's share of `split` in record order, padded to whole global batches.

    Item k is a record with `record_key` (-1 on padding) and `mask` (False on padding) added.
    With `image_size` S (for `preprocess_eval_image` at S), images may come already resized
    to S x S from the pixel cache, which changes nothing in the preprocessed result.
    """
    size = (image_size, image_size) if image_size else None
    base = pixel_cache.data_source(data_config, split, size=size)
    host_batch = per_host_batch(global_batch_size)
    padded = num_eval_batches(len(base), global_batch_size) * global_batch_size
    records = _HostEvalSource(base, padded, global_batch_size, host_batch, jax.process_index())
    return grain.MapDataset.source(records)


def make_eval_iterator(data_config, split: str, *, image_size: int, global_batch_size: int):
    """One pass over `split` in record order, padded so every example counts exactly once.

    Returns:
      iterator of dicts: image (b, S, S, 3) float32, label (b,) int32, clean_label (b,)
      int32, record_key (b,) int32 (-1 on padding), mask (b,) bool (False on padding).
      Every process yields `num_eval_batches(len(split), global_batch_size)` batches; global
      batch g holds records g*B .. g*B + B - 1.
    """
    dataset = (
        eval_records(data_config, split, global_batch_size=global_batch_size, image_size=image_size)
        .map(_EvalMap(image_size))
        .batch(per_host_batch(global_batch_size), drop_remainder=False)
    )
    return iterate(dataset, data_config)
