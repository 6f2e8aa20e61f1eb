"""Prediction on images and videos: robust loading, face detection, cropping and alignment,
the Predictor, tracking, reports.

`python -m grefel_jax.predict` (= `python -m grefel_jax.inference`: `__main__` parses the
flags, `command.run` does the work) is the command line; `Predictor.from_checkpoint(path)
.predict(images)` the Python API.

The names below are imported on first use (PEP 562), so that the light submodules (images,
faces, results, report: numpy, PIL and OpenCV only) can be used without importing jax and the
model, as prediction from an export folder (`grefel_jax.export.predict`) does.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "FaceBox": "faces",
    "FaceDetector": "faces",
    "SsdDetector": "faces",
    "make_detector": "faces",
    "crop": "faces",
    "crop_box": "faces",
    "ImageReadError": "images",
    "load_image": "images",
    "to_uint8_rgb": "images",
    "FacePrediction": "results",
    "ImagePrediction": "results",
    "Predictor": "predictor",
    "IoUTracker": "tracking",
    "VideoReader": "video",
    "VideoWriter": "video",
    "predict_video": "video_predict",
    "resolve_class_names": "class_names",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    globals()[name] = value  # Once imported, a plain attribute.
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
