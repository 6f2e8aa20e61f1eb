"""The sample faces that `make demo` predicts on."""

from __future__ import annotations

import numpy as np
import PIL.Image

from grefel_jax.data import synthetic_faces
from grefel_jax.data.samples import write_samples


def test_write_samples_names_the_true_class(tmp_path):
    paths = write_samples(tmp_path, per_class=2, image_size=64)
    assert len(paths) == 2 * len(synthetic_faces.CLASS_NAMES)
    assert sorted(p.name for p in paths) == sorted(
        f"{name}_{i}.png" for name in synthetic_faces.CLASS_NAMES for i in range(2)
    )
    images = [np.asarray(PIL.Image.open(p)) for p in paths]
    assert all(image.shape == (64, 64, 3) and image.dtype == np.uint8 for image in images)
    # Two faces of the same class are different people, not copies.
    assert not np.array_equal(images[0], images[1])
