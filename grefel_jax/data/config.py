"""Defaults of the `config.data` section; training configs call this and override fields."""

from __future__ import annotations

import ml_collections


def get_data_config() -> ml_collections.ConfigDict:
    """The `config.data` defaults (the embedded synthetic_faces demo data).

    The model's input size is *not* here: `config.model.image_size` decides it and is passed to
    the pipeline functions.
    """
    c = ml_collections.ConfigDict()
    c.name = "synthetic_faces"  # a dataset of grefel_jax.data.builders.DATASETS
    # TFDS builder config: '96' / 'demo_96' / '64' / '224' for synthetic_faces, '7' / '8' for
    # affectnet, the user's name for image_folder, None for datasets without configs.
    c.builder_config = "96"
    c.data_dir = "~/tensorflow_datasets"
    c.manual_dir = ml_collections.config_dict.placeholder(str)  # only for error messages
    c.train_split = "train"
    c.eval_split = "test"
    c.skip_corrupt = False

    # Augmentation (training only). Defaults follow the ARBEx official transform: resize the
    # shorter side to int(1.1 * S), random crop S, horizontal flip (docs/training.md §4a), plus
    # RAF-DB's POSTER++ random erasing (§4b). Rotation and colour jitter are off by default.
    c.augment = ml_collections.ConfigDict()
    c.augment.resize_crop = True
    c.augment.resize_ratio = 1.1
    c.augment.hflip = True
    c.augment.rotation_degrees = 0.0
    c.augment.brightness = 0.0
    c.augment.contrast = 0.0
    c.augment.saturation = 0.0
    c.augment.random_erasing_p = 0.5
    c.augment.random_erasing_scale = (0.02, 0.1)
    c.augment.random_erasing_ratio = (0.3, 3.3)

    # Label noise on the training labels (robustness experiments); rate 0 = clean.
    c.label_noise = ml_collections.ConfigDict()
    c.label_noise.rate = 0.0
    c.label_noise.kind = "symmetric"  # 'symmetric' | 'pairs'
    # For 'pairs': (from_class_name, to_class_name) flips; empty = the dataset's default
    # confusable pairs (grefel_jax.data.noise.default_pairs).
    c.label_noise.pairs = ()
    c.label_noise.seed = 0
    # A file of given training labels instead (one per training record, in record order: a
    # class index or class name per line, or an .npy of ints), e.g. a published noisy-label
    # file; it replaces the clean labels and `rate`/`kind` are then ignored.
    c.label_noise.file = ""

    # Class imbalance (robustness experiments): train on a long-tailed subset of the training
    # split, class c keeping n_max * ratio ** (-c / (C - 1)) records; ratio 1 = the whole split.
    c.imbalance = ml_collections.ConfigDict()
    c.imbalance.ratio = 1.0
    c.imbalance.profile = "exponential"
    c.imbalance.seed = 0

    # Out-of-fold training (grefel_jax.data.folds): with num = K >= 2, train on the training
    # records outside fold `holdout` of a seeded K-fold split stratified by the given label;
    # `python -m grefel_jax.study.label_issues --folds K` trains one run per holdout and
    # scores each record with the run that did not see it. num 0 = every record.
    c.folds = ml_collections.ConfigDict()
    c.folds.num = 0
    c.folds.holdout = 0
    c.folds.seed = 0

    c.sampler = "none"  # 'none' | 'inverse_frequency'
    c.shuffle_seed = 0
    c.num_workers = 0  # grain worker processes (0 = in the main process)
    c.prefetch = 2  # batches prepared ahead of the step (per worker)
    c.read_threads = 1  # threads preparing batches (more fight over the GIL on small hosts)
    # Read a split once into a uint8 pixel file (plus a file of its other features) beside the
    # prepared data when its images all have one shape and fit in this many MiB (0 = always
    # read and decode the ArrayRecord files); data/pixel_cache.py.
    c.pixel_cache_mb = 2048
    return c
