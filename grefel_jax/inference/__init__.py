"""Prediction on images: robust loading, face detection and cropping, the Predictor, reports.

`python -m grefel_jax.predict` is the command line; `Predictor.from_checkpoint(path)
.predict(images)` the Python API.
"""

from grefel_jax.inference.class_names import resolve_class_names
from grefel_jax.inference.faces import FaceBox, FaceDetector, crop, crop_box
from grefel_jax.inference.images import ImageReadError, load_image, to_uint8_rgb
from grefel_jax.inference.predictor import (
    FacePrediction,
    ImagePrediction,
    Predictor,
)

__all__ = [
    "FaceBox",
    "FaceDetector",
    "FacePrediction",
    "ImagePrediction",
    "ImageReadError",
    "Predictor",
    "crop",
    "crop_box",
    "load_image",
    "resolve_class_names",
    "to_uint8_rgb",
]
