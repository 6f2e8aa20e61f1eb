"""Offline preparation: build a dataset into ArrayRecord files once, before any training.

* `build`: `prepare(name, data_dir=..., config=...)`, the TFDS build and its summary;
* `align_folder`: `prepare --align`, a user's image folder stored as aligned face crops
  (the face detector and landmark network of `grefel_jax.inference`);
* `__main__`: the command line, `python -m grefel_jax.prepare --dataset NAME ...`.

The datasets themselves (TFDS builders, the synthetic renderer) are `grefel_jax.data`, which
also reads them back for training, evaluation and prediction.
"""

from grefel_jax.prepare.build import prepare

__all__ = ["prepare"]
