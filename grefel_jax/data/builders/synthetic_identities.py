"""`synthetic_identities`: procedurally drawn faces labelled by IDENTITY (no download).

The data of face-identity pretraining (`python -m grefel_jax.pretrain identity`): each
identity is `synthetic_faces.sample_identity((seed, IDENTITY_STREAM, identity))` (face shape,
skin, hair, eye, brow, nose and mouth geometry), drawn many times under independent pose,
lighting, background, noise and expression. The label is the identity; nothing about the
expression is stored, and no image is chosen by its expression: each image's expression class
is a uniform draw of the image's own generator, made only to give the renderer something to
draw, so the backbone learns faces, not expressions (docs/pretraining.md).

Splits hold disjoint identities, numbered in one label space: `train` identities
0 .. I-1 (the margin loss's classes), then `validation` identities, then `test` identities
(both held out: face verification on them, never trained on). Every example is a pure
function of (config seed, identity, image index), so a rebuild gives identical files.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds

from grefel_jax.data import synthetic_faces as render
from grefel_jax.data.builders import base

# Keeps identity seeds apart from the expression datasets' per-image seeds
# (`(seed, split_id, index)` with split_id 0-2 in synthetic_faces).
IDENTITY_STREAM = 1_000
IMAGE_STREAM = 1_001
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class SyntheticIdentitiesConfig(tfds.core.BuilderConfig):
    """Image side, and identities x images per identity of each split."""

    image_size: int = 96
    train_identities: int = 1_000
    train_images: int = 16
    validation_identities: int = 100
    validation_images: int = 10
    test_identities: int = 200
    test_images: int = 10
    seed: int = 0

    def identities(self) -> dict[str, tuple[int, int, int]]:
        """split -> (first identity label, number of identities, images per identity)."""
        counts = {
            "train": (self.train_identities, self.train_images),
            "validation": (self.validation_identities, self.validation_images),
            "test": (self.test_identities, self.test_images),
        }
        out, first = {}, 0
        for split in SPLITS:
            n, m = counts[split]
            out[split] = (first, n, m)
            first += n
        return out

    @property
    def num_identities(self) -> int:
        return self.train_identities + self.validation_identities + self.test_identities


CONFIGS = (
    SyntheticIdentitiesConfig(
        name="96",
        description="96x96: 1,000 train identities x 16 images; held out 100 x 10 "
        "(validation) and 200 x 10 (test).",
    ),
    SyntheticIdentitiesConfig(
        name="tiny_64",
        description="64x64, 12 train identities x 4 images, 20 + 20 held out x 3 (the least "
        "that 10 verification folds take): for tests.",
        image_size=64,
        train_identities=12,
        train_images=4,
        validation_identities=20,
        validation_images=3,
        test_identities=20,
        test_images=3,
    ),
)


class SyntheticIdentities(base.Builder):
    """Drawn faces labelled by identity; splits hold disjoint identities."""

    name = "synthetic_identities"
    VERSION = base.VERSION
    BUILDER_CONFIGS = list(CONFIGS)

    def __init__(self, *, num_workers: int | None = None, **kwargs):
        """num_workers: generator processes (None: all cores; 0 or 1: in this process)."""
        self.num_workers = os.cpu_count() if num_workers is None else num_workers
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        size = cfg.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=identity_names(cfg.num_identities)),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/ (grefel_jax: grefel_jax/data/synthetic_faces.py)",
        )

    def _split_generators(self, dl_manager):
        return {
            split: self._generate_examples(split, *spec)
            for split, spec in self.builder_config.identities().items()
            if spec[1] > 0
        }

    def _generate_examples(self, split: str, first: int, identities: int, images: int):
        cfg = self.builder_config
        jobs = [
            (cfg.seed, first + i, j, cfg.image_size)
            for i in range(identities)
            for j in range(images)
        ]
        workers = min(self.num_workers or 1, _MAX_WORKERS)
        if workers <= 1 or len(jobs) < _MIN_PARALLEL:
            yield from map(_make_example, jobs)
            return
        # As synthetic_faces: independent faces rendered in 'spawn' worker processes, in order.
        context = multiprocessing.get_context("spawn")
        with context.Pool(workers) as pool:
            yield from pool.imap(_make_example, jobs, chunksize=64)


_MAX_WORKERS = 16
_MIN_PARALLEL = 1000


def identity_names(num_identities: int) -> list[str]:
    """Class names of the identity labels: `id00000`, `id00001`, ..."""
    return [f"id{i:05d}" for i in range(num_identities)]


def render_identity_image(seed: int, identity: int, image: int, size: int) -> np.ndarray:
    """Image `image` of identity `identity`: (size, size, 3) uint8.

    The identity comes from its own seed; expression, pose, lighting, background and noise
    from the image's seed. The expression class is a uniform draw of the image's generator
    (module doc): it is neither returned nor stored.
    """
    image_seed = (seed, IMAGE_STREAM, identity, image)
    expression = int(np.random.default_rng(image_seed + (0,)).integers(len(render.CLASS_NAMES)))
    face = render.render_face(
        image_seed,
        expression,
        size,
        identity=render.sample_identity((seed, IDENTITY_STREAM, identity)),
    )
    return face["image"]


def _make_example(job):
    """(seed, identity, image, size) -> (key, example); module-level for the pool."""
    seed, identity, image, size = job
    file_name = f"id{identity:05d}/{image:03d}.png"
    return file_name, {
        "image": base.encode_png(render_identity_image(seed, identity, image, size)),
        "label": identity,
        "file_name": file_name,
    }
