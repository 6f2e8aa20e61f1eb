"""Landmark batches: the training stream and evaluation passes of `grefel_jax.data.pipeline`,
with the `landmarks` feature moved along with the pixels.

Same record order, same per-position augmentation draws and same preprocessing as the
classification pipeline; only the per-record map differs. Points leave here in crop units
(`augment.pixels_to_unit`: (0, 0) and (1, 1) are the outer corners of the model's input),
NaN where the dataset has no point.

Batches are dicts of numpy arrays (this process's share):
  image (b, S, S, 3) float32, points (b, N, 2) float32, record_key (b,) int32, and for
  evaluation mask (b,) bool (False on padding).
"""

from __future__ import annotations

import grain
import numpy as np

from grefel_jax.data import augment, pipeline, source
from grefel_jax.data.landmark_layouts import PointLayout
from grefel_jax.preprocess import preprocess_eval_image


def check_landmark_dataset(data_config, layout: PointLayout) -> None:
    """Raises ValueError (one line) unless the prepared dataset stores `layout`'s points."""
    features = source.load_builder(data_config).info.features
    name = f"{data_config.name}/{data_config.builder_config}"
    if "landmarks" not in features:
        raise ValueError(f"{name} has no `landmarks` feature; landmark pretraining needs one.")
    shape = tuple(features["landmarks"].shape)
    if shape != (layout.num_points, 2):
        raise ValueError(
            f"{name} stores landmarks of shape {shape}; its layout expects "
            f"({layout.num_points}, 2)."
        )


class _TrainMap(grain.transforms.Map):
    """Record -> {image, points, record_key}; draws seeded by (seed, position) as in training."""

    def __init__(self, image_size: int, aug, seed: int, flip_permutation):
        self._size = image_size
        self._aug = aug
        self._seed = seed
        self._flip = tuple(flip_permutation)

    def map(self, example):
        rng = np.random.default_rng([self._seed, 1, int(example["position"])])
        image, points = augment.augment_train_example(
            example["image"], example["landmarks"], self._size, self._aug, rng, self._flip
        )
        return {
            "image": image,
            "points": augment.pixels_to_unit(points, self._size, self._size),
            "record_key": np.int32(example["record_key"]),
        }


class _EvalMap(grain.transforms.Map):
    """Record -> {image, points, record_key, mask}: the evaluation resize, no augmentation."""

    def __init__(self, image_size: int):
        self._size = image_size

    def map(self, example):
        image = example["image"]
        h, w = image.shape[:2]
        return {
            "image": preprocess_eval_image(image, self._size),
            # Crop units do not change under a resize of the whole image.
            "points": augment.pixels_to_unit(example["landmarks"], w, h),
            "record_key": np.int32(example["record_key"]),
            "mask": np.bool_(example["mask"]),
        }


def make_train_iterator(
    data_config,
    layout: PointLayout,
    *,
    image_size: int,
    global_batch_size: int,
    seed: int,
    start_step: int = 0,
):
    """Endless augmented landmark batches for this process, from global batch `start_step`."""
    records, stream_seed = pipeline.train_records(
        data_config, global_batch_size=global_batch_size, seed=seed, start_step=start_step
    )
    aug = pipeline.frozen_aug(data_config.augment)
    dataset = records.map(_TrainMap(image_size, aug, stream_seed, layout.flip_permutation)).batch(
        pipeline.per_host_batch(global_batch_size), drop_remainder=True
    )
    return pipeline.iterate(dataset, data_config)


def make_eval_iterator(data_config, split: str, *, image_size: int, global_batch_size: int):
    """One pass over `split` in record order, padded to whole global batches (`mask`)."""
    dataset = (
        pipeline.eval_records(data_config, split, global_batch_size=global_batch_size)
        .map(_EvalMap(image_size))
        .batch(pipeline.per_host_batch(global_batch_size), drop_remainder=False)
    )
    return pipeline.iterate(dataset, data_config)
