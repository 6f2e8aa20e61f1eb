"""`synthetic_faces`: procedurally drawn faces, 7 RAF-DB classes, generated (no download).

Configs name the image side and the split sizes: `demo_96` (small, for the 5-minute CPU demo),
`64`, `96`, `224` (larger defaults), and `tiny_64` for tests. Every example is a pure function
of (config seed, split, index), so a rebuild gives identical files.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds

from grefel_jax.data import synthetic_faces as render
from grefel_jax.data.builders import base

_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass
class SyntheticFacesConfig(tfds.core.BuilderConfig):
    """Image side and split sizes of one synthetic_faces variant."""

    image_size: int = 96
    num_train: int = 20_000
    num_validation: int = 2_000
    num_test: int = 3_500
    seed: int = 0
    # Difficulty (grefel_jax.data.synthetic_faces.Difficulty): the lowest expression
    # intensity, and the blend towards the confusable partner class.
    intensity_min: float = render.DEFAULT_DIFFICULTY.intensity_range[0]
    max_blend: float = render.DEFAULT_DIFFICULTY.max_blend


def _config(name, size, train, validation, test, description, **difficulty):
    return SyntheticFacesConfig(
        name=name,
        description=description,
        image_size=size,
        num_train=train,
        num_validation=validation,
        num_test=test,
        **difficulty,
    )


CONFIGS = (
    _config("96", 96, 20_000, 2_000, 3_500, "96x96, 20k train / 2k validation / 3.5k test."),
    _config(
        "demo_96",
        96,
        8_400,
        700,
        1_400,
        "96x96, small, stronger expressions (intensity >= 0.7): for the few-minute CPU demo.",
        intensity_min=0.7,
    ),
    _config("64", 64, 20_000, 2_000, 3_500, "64x64, 20k / 2k / 3.5k."),
    _config("224", 224, 20_000, 2_000, 3_500, "224x224 (the paper's input), 20k / 2k / 3.5k."),
    _config("tiny_64", 64, 140, 35, 70, "64x64, a few images per class: for tests."),
)


class SyntheticFaces(base.Builder):
    """Drawn faces: identity, pose, lighting, background and expression AUs vary."""

    name = "synthetic_faces"
    VERSION = base.VERSION
    BUILDER_CONFIGS = list(CONFIGS)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=list(render.CLASS_NAMES)),
                    "file_name": tfds.features.Text(),
                    "landmarks": tfds.features.Tensor(
                        shape=(render.NUM_LANDMARKS, 2), dtype=np.float32
                    ),
                    "action_units": tfds.features.Tensor(
                        shape=(render.NUM_ACTION_UNITS,), dtype=np.float32
                    ),
                    "intensity": tfds.features.Scalar(dtype=np.float32),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/ (grefel_jax: grefel_jax/data/synthetic_faces.py)",
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        sizes = {"train": cfg.num_train, "validation": cfg.num_validation, "test": cfg.num_test}
        return {split: self._generate_examples(split, n) for split, n in sizes.items() if n > 0}

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        """num_workers: generator processes (None: all cores; 0 or 1: in this process)."""
        self.num_workers = os.cpu_count() if num_workers is None else num_workers
        super().__init__(**kwargs)

    def _generate_examples(self, split: str, num_examples: int):
        cfg = self.builder_config
        difficulty = render.Difficulty(
            intensity_range=(cfg.intensity_min, 1.0), max_blend=cfg.max_blend
        )
        jobs = [
            (cfg.seed, split, index, cfg.image_size, difficulty) for index in range(num_examples)
        ]
        workers = min(self.num_workers or 1, _MAX_WORKERS)
        if workers <= 1 or num_examples < _MIN_PARALLEL:
            yield from map(_make_example, jobs)
            return
        # Faces are independent: render and PNG-encode them in worker processes ('spawn':
        # forking a process that may hold threads is unsafe). Order is kept by imap.
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            yield from pool.imap(_make_example, jobs, chunksize=64)


_MAX_WORKERS = 16
_MIN_PARALLEL = 1000


def _make_example(job):
    """(seed, split, index, size, difficulty) -> (key, example); module-level for the pool."""
    seed, split, index, size, difficulty = job
    label = render.label_for_index(index)
    face = render.render_face((seed, _SPLIT_IDS[split], index), label, size, difficulty)
    file_name = f"{split}_{index:06d}.png"
    return file_name, {
        "image": base.encode_png(face["image"]),
        "label": label,
        "file_name": file_name,
        "landmarks": face["landmarks"],
        "action_units": face["action_units"],
        "intensity": face["intensity"],
    }
