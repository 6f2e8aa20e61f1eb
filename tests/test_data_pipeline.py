"""Grain pipeline: determinism, checkpointable state, eval padding, label noise, sampler."""

from __future__ import annotations

import collections
import pickle

import data_fixtures as fx
import jax
import numpy as np
import pytest

from grefel_jax import preprocess
from grefel_jax.data import augment, config, errors, noise, pipeline, pixel_cache, source
from grefel_jax.prepare import build as prepare


@pytest.fixture(scope="module")
def synthetic_config(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    prepare.prepare("synthetic_faces", config="tiny_64", data_dir=str(data_dir), verbose=False)
    c = config.get_data_config()
    c.data_dir = str(data_dir)
    c.builder_config = "tiny_64"
    return c


@pytest.fixture(scope="module")
def imbalanced_config(tmp_path_factory):
    """image_folder with 12 / 4 / 2 training images in three classes."""
    root = tmp_path_factory.mktemp("imbalanced")
    for c, (name, n) in enumerate((("a", 12), ("b", 4), ("c", 2))):
        for k in range(n):
            fx.write_image(root / "train" / name / f"{k}.png", 40 * c + k, size=(16, 16))
        fx.write_image(root / "test" / name / "0.png", 40 * c, size=(16, 16))
    data_dir = tmp_path_factory.mktemp("tfds_imb")
    prepare.prepare(
        "image_folder", config="imb", data_dir=str(data_dir), manual_dir=str(root), verbose=False
    )
    c = config.get_data_config()
    c.update({"name": "image_folder", "builder_config": "imb", "data_dir": str(data_dir)})
    return c


def _no_augment(c):
    c = c.copy_and_resolve_references()
    c.augment.resize_crop = False
    c.augment.hflip = False
    c.augment.random_erasing_p = 0.0
    return c


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_train_batches_shapes_and_determinism(synthetic_config):
    kw = dict(image_size=32, global_batch_size=16)
    a = _take(pipeline.make_train_iterator(synthetic_config, seed=1, **kw), 3)
    b = _take(pipeline.make_train_iterator(synthetic_config, seed=1, **kw), 3)
    c = _take(pipeline.make_train_iterator(synthetic_config, seed=2, **kw), 1)
    assert a[0]["image"].shape == (16, 32, 32, 3) and a[0]["image"].dtype == np.float32
    assert a[0]["label"].dtype == np.int32 and a[0]["clean_label"].dtype == np.int32
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    # Augmentation is on: images are not the plain eval preprocessing of any record.
    assert np.abs(a[0]["image"]).max() < 10


def test_train_stream_resumes_from_any_step(synthetic_config):
    """The stream is a function of the global step: starting at step 2 gives batches 2, 3 of
    a stream started at 0 (images, labels and record keys), across an epoch boundary too."""
    kw = dict(image_size=32, global_batch_size=8, seed=3)
    straight = _take(pipeline.make_train_iterator(synthetic_config, **kw), 20)
    for start in (2, 17):  # 140 train examples = 17.5 batches of 8: 17 is in epoch 2
        resumed = _take(pipeline.make_train_iterator(synthetic_config, start_step=start, **kw), 2)
        for x, y in zip(straight[start : start + 2], resumed):
            for key in ("image", "label", "record_key"):
                np.testing.assert_array_equal(x[key], y[key])
    # Every record once per epoch (17 full batches of epoch 1 cover 136 distinct records).
    keys = np.concatenate([b["record_key"] for b in straight[:17]])
    assert len(set(keys.tolist())) == 136


def test_eval_covers_every_example_once(synthetic_config):
    split = "validation"  # 35 examples: not a multiple of the batch
    src = source.data_source(synthetic_config, split)
    batches = list(
        pipeline.make_eval_iterator(synthetic_config, split, image_size=32, global_batch_size=16)
    )
    assert len(batches) == pipeline.num_eval_batches(35, 16) == 3
    assert all(b["image"].shape == (16, 32, 32, 3) for b in batches)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 35 and mask[:35].all() and not mask[35:].any()
    images = np.concatenate([b["image"] for b in batches])[mask]
    labels = np.concatenate([b["label"] for b in batches])[mask]
    for i in range(35):  # in record order, each exactly once, preprocessed the single way
        np.testing.assert_allclose(
            images[i], preprocess.preprocess_eval_image(src[i]["image"], 32), atol=1e-6
        )
        assert labels[i] == src[i]["label"]


def test_eval_padding_across_two_hosts(synthetic_config, monkeypatch):
    covered = []
    for host in (0, 1):
        monkeypatch.setattr(jax, "process_index", lambda host=host: host)
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        batches = list(
            pipeline.make_eval_iterator(
                _no_augment(synthetic_config), "validation", image_size=16, global_batch_size=16
            )
        )
        assert len(batches) == 3 and all(len(b["mask"]) == 8 for b in batches)
        covered.append(
            np.concatenate([b["image"] for b in batches])[
                np.concatenate([b["mask"] for b in batches])
            ]
        )
    all_images = np.concatenate(covered).reshape(35, -1)
    assert len(np.unique(all_images, axis=0)) == 35  # each example on exactly one host


def test_label_noise_rate_and_pairs():
    n = 20_000
    clean = np.arange(n) % 7
    for kind in ("symmetric", "pairs"):
        ln = noise.LabelNoise(
            7,
            0.3,
            kind,
            seed=5,
            partners=noise.pair_map(
                ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
            ),
        )
        noisy = ln.apply(np.arange(n), clean)
        assert abs((noisy != clean).mean() - 0.3) < 0.015
        np.testing.assert_array_equal(noisy, ln.apply(np.arange(n), clean))  # stable
        if kind == "pairs":  # surprise (0) only ever becomes fear (1)
            assert set(noisy[(clean == 0) & (noisy != 0)]) == {1}
        else:  # flips spread over all other classes
            assert len(set(noisy[(clean == 0) & (noisy != 0)])) == 6
    other_seed = noise.LabelNoise(7, 0.3, "symmetric", seed=6).apply(np.arange(n), clean)
    assert not np.array_equal(other_seed, noisy)


def test_label_noise_in_pipeline_is_fixed_per_example(synthetic_config):
    c = _no_augment(synthetic_config)
    c.label_noise.rate = 0.4
    c.label_noise.seed = 1
    it = pipeline.make_train_iterator(c, image_size=16, global_batch_size=20, seed=0)
    seen = collections.defaultdict(set)
    flips = total = 0
    for batch in _take(it, 14):  # 2 epochs of 140 examples, reshuffled
        for image, label, clean in zip(batch["image"], batch["label"], batch["clean_label"]):
            seen[image.tobytes()].add((int(label), int(clean)))
            flips += int(label != clean)
            total += 1
    assert len(seen) == 140 and all(len(v) == 1 for v in seen.values())
    assert abs(flips / total - 0.4) < 0.15  # 140 examples: loose binomial tolerance


def test_inverse_frequency_sampler_and_class_weights(imbalanced_config):
    weights = pipeline.class_weights(imbalanced_config)
    np.testing.assert_allclose(weights, [(18 / 3) / 12, (18 / 3) / 4, (18 / 3) / 2], rtol=1e-6)
    c = _no_augment(imbalanced_config)
    c.sampler = "inverse_frequency"
    labels = np.concatenate(
        [
            b["label"]
            for b in _take(
                pipeline.make_train_iterator(c, image_size=16, global_batch_size=50, seed=0), 12
            )
        ]
    )
    freq = np.bincount(labels, minlength=3) / len(labels)
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.06)
    c.sampler = "none"
    labels = np.concatenate(
        [
            b["label"]
            for b in _take(
                pipeline.make_train_iterator(c, image_size=16, global_batch_size=18, seed=0), 4
            )
        ]
    )
    np.testing.assert_array_equal(np.bincount(labels, minlength=3), [48, 16, 8])


def test_worker_processes(synthetic_config):
    c = synthetic_config.copy_and_resolve_references()
    c.num_workers = 1
    batches = _take(pipeline.make_train_iterator(c, image_size=32, global_batch_size=8, seed=0), 2)
    assert batches[1]["image"].shape == (8, 32, 32, 3)
    assert set(np.concatenate([b["label"] for b in batches])) <= set(range(7))


def test_pixel_cache_serves_the_decoded_records(synthetic_config, imbalanced_config):
    """The cache (data/pixel_cache.py) returns the decoder's own records, survives pickling
    (grain workers), stores resized images that the pipelines leave as they are, is keyed to
    the prepared files, and leaves the batches unchanged."""
    decoded = source.data_source(synthetic_config, "train")
    cached = pixel_cache.data_source(synthetic_config, "train")
    assert isinstance(cached, pixel_cache.PixelCachedSource)
    path = pixel_cache.cache_path(synthetic_config, "train")
    assert np.load(path, mmap_mode="r").shape == (len(decoded), 64, 64, 3)
    resized = pixel_cache.data_source(synthetic_config, "train", size=(40, 40))
    revived = pickle.loads(pickle.dumps(cached))
    for i in (0, 17, len(decoded) - 1):
        a, b, c = cached[i], decoded[i], revived[i]
        assert set(a) == set(b)
        for key in b:
            assert type(a[key]) is type(b[key]), key
            np.testing.assert_array_equal(a[key], b[key])
        assert a["image"].dtype == np.uint8
        np.testing.assert_array_equal(c["image"], b["image"])
        np.testing.assert_array_equal(resized[i]["image"], preprocess.resize(b["image"], 40, 40))
    assert len(cached) == len(decoded) == len(resized)
    # The same size as stored needs no second file.
    assert pixel_cache.data_source(synthetic_config, "train", size=(64, 64))._pixels_file == path

    off = synthetic_config.copy_and_resolve_references()
    off.pixel_cache_mb = 0
    assert not isinstance(pixel_cache.data_source(off, "train"), pixel_cache.PixelCachedSource)
    for crop in (False, True):  # plain resize to S, and resize-shorter-side + random crop
        on, no = synthetic_config.copy_and_resolve_references(), off.copy_and_resolve_references()
        for c in (on, no):
            c.augment.resize_crop = crop
            c.augment.rotation_degrees = 10.0
        kw = dict(image_size=32, global_batch_size=16, seed=3)
        with_cache = _take(pipeline.make_train_iterator(on, **kw), 2)
        without = _take(pipeline.make_train_iterator(no, **kw), 2)
        evals = [
            _take(pipeline.make_eval_iterator(c, "test", image_size=32, global_batch_size=16), 2)
            for c in (on, no)
        ]
        for x, y in zip(with_cache + evals[0], without + evals[1]):
            for key in x:
                np.testing.assert_array_equal(x[key], y[key])
    assert list(path.parent.glob("grefel_pixels-train-*-32x32.npy"))  # the resized file exists

    # Files of an earlier build are never served: the name carries a hash of the split's files.
    test_path = pixel_cache.cache_path(synthetic_config, "test")
    stale = test_path.with_name("grefel_pixels-test-0123456789.npy")
    np.save(stale, np.zeros((60, 64, 64, 3), np.uint8))
    expected = source.data_source(synthetic_config, "test")[5]["image"]
    np.testing.assert_array_equal(
        pixel_cache.data_source(synthetic_config, "test")[5]["image"], expected
    )
    # A wrong shape is rebuilt. (np.save rewrites the file in place, which would break a live
    # memory map of it; the cache itself only ever renames new files into place.)
    np.save(test_path, np.zeros((3, 64, 64, 3), np.uint8))
    np.testing.assert_array_equal(
        pixel_cache.data_source(synthetic_config, "test")[5]["image"], expected
    )
    # Images of varying size (image_folder), a limit below the split's size, a split
    # expression: no cache.
    assert not isinstance(
        pixel_cache.data_source(imbalanced_config, "train"), pixel_cache.PixelCachedSource
    )
    assert not isinstance(
        pixel_cache.data_source(synthetic_config, "train[:10]"), pixel_cache.PixelCachedSource
    )
    small = synthetic_config.copy_and_resolve_references()
    small.pixel_cache_mb = 1  # 140 x 64 x 64 x 3 bytes = 1.6 MiB
    assert not isinstance(pixel_cache.data_source(small, "train"), pixel_cache.PixelCachedSource)
    small.pixel_cache_mb = -1
    with pytest.raises(ValueError, match=r"^config\.data\.pixel_cache_mb=-1: expected >= 0"):
        pixel_cache.data_source(small, "train")


def test_dataset_info_and_not_prepared_error(synthetic_config, tmp_path):
    info = pipeline.dataset_info(synthetic_config)
    assert info.num_classes == 7 and info.split_sizes["train"] == 140 and info.has_landmarks
    missing = synthetic_config.copy_and_resolve_references()
    missing.data_dir = str(tmp_path)
    with pytest.raises(errors.DatasetNotPreparedError) as exc:
        pipeline.make_train_iterator(missing, image_size=32, global_batch_size=8, seed=0)
    assert (
        f"python -m grefel_jax.prepare --dataset synthetic_faces --config tiny_64 "
        f"--data_dir {tmp_path}" in str(exc.value)
    )
    manual = missing.copy_and_resolve_references()
    manual.name, manual.builder_config = "raf_db", None
    with pytest.raises(errors.DatasetNotPreparedError, match="list_patition_label.txt"):
        pipeline.dataset_info(manual)


def test_preprocess_eval_image_and_augment():
    grey = np.full((50, 40, 3), 128, np.uint8)
    out = preprocess.preprocess_eval_image(grey, 24)
    assert out.shape == (24, 24, 3) and out.dtype == np.float32
    np.testing.assert_allclose(
        out[0, 0], (128 / 255 - preprocess.IMAGENET_MEAN) / preprocess.IMAGENET_STD, rtol=1e-5
    )
    aug = config.get_data_config().augment
    aug.random_erasing_p = 1.0
    aug.rotation_degrees = 10.0
    aug.brightness = aug.contrast = aug.saturation = 0.2
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    a = augment.augment_train_image(image, 32, aug, np.random.default_rng(1))
    b = augment.augment_train_image(image, 32, aug, np.random.default_rng(1))
    assert a.shape == (32, 32, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert (a == 0).all(axis=-1).sum() >= 0.02 * 32 * 32 * 0.9  # an erased rectangle
