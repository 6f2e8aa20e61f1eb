"""`Predictor`: checkpoint -> per-face expression predictions for image files or arrays.

  predictor = Predictor.from_checkpoint("runs/demo")
  for result in predictor.predict(["me.jpg", "group.png"]):
      for face in result.faces:
          print(result.source, face.box, face.label, face.probability)

The path from pixels to model input is the evaluation pipeline's: decode to upright uint8 RGB
(`inference.images`), crop the face (`inference.faces`), then
`grefel_jax.preprocess.preprocess_eval_image` (resize + ImageNet normalization), the very
function the evaluation pipeline maps over its records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from grefel_jax import settings
from grefel_jax.inference import faces as faces_lib
from grefel_jax.inference import images as images_lib
from grefel_jax.inference.class_names import resolve_class_names
from grefel_jax.models import GReFEL, ModelConfig, names
from grefel_jax.preprocess import preprocess_eval_image

# Model outputs prediction reads; the grefel head adds the last two.
_OUTPUT_KEYS = (
    "probs",
    "corrected_probs",
    "confidence",
    "anchor_confidence",
    "attention_confidence",
)

ImageInput = str | os.PathLike | np.ndarray


@dataclasses.dataclass
class FacePrediction:
    """The prediction for one face.

    Attributes:
      box: the detected face (the whole image with `detect=False`), upright-image pixels.
      crop_box: `(x0, y0, x1, y1)` of the region fed to the model: a square around a detected
        face, the whole image with `detect=False`.
      class_index / label / probability: argmax of the primary distribution p.
      probs: (C,) float32, p.
      corrected_index / corrected_label / corrected_probability / corrected_probs: the same
        for the reliability-balanced distribution (equal to the primary for the poster head).
      confidence: 1 - H(p) / ln C, the normalized-entropy confidence of p in [0, 1].
      anchor_confidence / attention_confidence: the same for the anchor and attention
        corrections (grefel head only, else None).
    """

    box: faces_lib.FaceBox
    crop_box: tuple[int, int, int, int]
    class_index: int
    label: str
    probability: float
    probs: np.ndarray
    corrected_index: int
    corrected_label: str
    corrected_probability: float
    corrected_probs: np.ndarray
    confidence: float
    anchor_confidence: float | None = None
    attention_confidence: float | None = None


@dataclasses.dataclass
class ImagePrediction:
    """All faces of one input image, or why there are none.

    Attributes:
      source: the file path, or `images[i]` for an array input.
      faces: one FacePrediction per face, largest face first; empty when no face was found or
        the image could not be read.
      error: None, or the message of an image that could not be read or predicted.
      image_shape: `(H, W)` of the upright image (None when unreadable).
      image: the decoded `(H, W, 3) uint8` image when `keep_images=True`, else None.
    """

    source: str
    faces: list[FacePrediction] = dataclasses.field(default_factory=list)
    error: str | None = None
    image_shape: tuple[int, int] | None = None
    image: np.ndarray | None = dataclasses.field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """The image was read and predicted (it may still have no face)."""
        return self.error is None

    @property
    def no_face(self) -> bool:
        """Read fine, but the detector found no face."""
        return self.error is None and not self.faces


@functools.partial(jax.jit, static_argnames=("model",))
def _forward(variables: Mapping[str, Any], images: jax.Array, model: GReFEL) -> dict:
    """(B, S, S, 3) float32 -> the prediction outputs of `_OUTPUT_KEYS` present for the head.

    Module-level and keyed on the (hashable) model, so every Predictor of the same
    architecture and batch size shares one compilation.
    """
    outputs = model.apply(variables, images, train=False)
    return {k: outputs[k] for k in _OUTPUT_KEYS if k in outputs}


class Predictor:
    """Face expression predictions from a GReFEL / POSTER++ model.

    Args (all but the first three are also attributes):
      variables: `{'params', 'batch_stats'}` of the whole model (numpy or jax arrays).
      model_config: the architecture.
      class_names: C names in the model's label order.
      detect: run the face detector (False: every image is already a face crop and goes to
        the preprocessing whole, exactly as in the evaluation pipeline).
      detector: the FaceDetector (default: `FaceDetector()`).
      margin: context around a detected box, as a fraction of its side.
      batch_size: faces per forward pass. Batches are padded to this size so one compilation
        serves every call, except for heads with ARBEx batch attention
        (`model.head.attention='batch'`), where padding would change the corrected outputs
        of the real faces: there the last batch runs at its own size, and the corrected
        outputs depend on which faces share a batch (as in the official ARBEx code).
      compute_dtype: dtype of the backbone computation (the head is always float32).
      metadata: what the checkpoint recorded (kept as `self.metadata`).

    The model runs on the default device (one accelerator, or the first CPU device).
    """

    def __init__(
        self,
        variables: Mapping[str, Any],
        model_config: ModelConfig,
        class_names: Sequence[str],
        *,
        detect: bool = True,
        detector: faces_lib.FaceDetector | None = None,
        margin: float = 0.2,
        batch_size: int = 32,
        compute_dtype: Any = jnp.float32,
        metadata: Mapping[str, Any] | None = None,
    ):
        num_classes = model_config.head.num_classes
        if len(class_names) != num_classes:
            raise ValueError(
                f"{len(class_names)} class names {list(class_names)} for a model with "
                f"{num_classes} classes."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1.")
        if margin < 0:
            raise ValueError(f"margin={margin} must be >= 0.")
        missing = [m for m in names.REQUIRED_FOR_PREDICTION if m not in variables["params"]]
        if missing:
            raise ValueError(
                f"The checkpoint lacks modules {missing}: a partial (backbone-only) checkpoint "
                "cannot predict; fine-tune it first (config.init_from)."
            )
        self.model_config = model_config
        self.class_names = tuple(class_names)
        self.detect = detect
        self.detector = detector or faces_lib.FaceDetector()
        self.margin = float(margin)
        self.batch_size = int(batch_size)
        self.metadata = dict(metadata or {})
        self.image_size = model_config.backbone.image_size
        self._model = settings.make_model(model_config, compute_dtype)
        head = model_config.head
        self._pad_batches = not head.batch_dependent
        # On device once, not once per batch.
        self._variables = jax.device_put(
            {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
        )
        if detect:
            self.detector._classifier()  # Fail now, not on the first image.

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        class_names: Sequence[str] | None = None,
        dataset: str | None = None,
        **kwargs,
    ) -> Predictor:
        """Loads a training workdir, a step directory or an inference checkpoint.

        Args:
          path: anything `grefel_jax.checkpoints.load_inference_checkpoint` reads (converted
            POSTER++ / ARBEx checkpoints included).
          class_names: the C class names, overriding what the checkpoint says.
          dataset: a dataset key of `grefel_jax.data.classes` ('raf_db', 'affectnet/8') whose
            class names to use, overriding the checkpoint.
          **kwargs: the other Predictor arguments (detect, margin, batch_size, ...).
        """
        from grefel_jax.checkpoints import load_inference_checkpoint

        # orbax and tfds log routine notes through absl (read-only manager, dataset info).
        with _quiet_absl_logging():
            # Absolute: orbax cannot read a checkpoint given by a relative path.
            variables, model_config, metadata = load_inference_checkpoint(os.path.abspath(path))
            names = resolve_class_names(
                metadata,
                model_config.head.num_classes,
                checkpoint=str(path),
                class_names=class_names,
                dataset=dataset,
            )
        return cls(variables, model_config, names, metadata=metadata, **kwargs)

    # ----------------------------------------------------------------------------------------
    # Model on preprocessed faces.
    # ----------------------------------------------------------------------------------------

    def predict_preprocessed(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Model outputs for preprocessed faces, in fixed-size jitted batches.

        Args:
          batch: (N, S, S, 3) float32, each face from `preprocess_eval_image`.

        Returns:
          dict of host numpy arrays over the N faces: `probs (N, C)`, `corrected_probs (N, C)`,
          `confidence (N,)` and, for the grefel head, `anchor_confidence (N,)`,
          `attention_confidence (N,)`.
        """
        batch = np.asarray(batch, np.float32)
        size = self.image_size
        if batch.ndim != 4 or batch.shape[1:] != (size, size, 3):
            raise ValueError(
                f"predict_preprocessed: expected (N, {size}, {size}, 3), got {batch.shape}."
            )
        chunks = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start : start + self.batch_size]
            real = len(chunk)
            if self._pad_batches and real < self.batch_size:
                pad = np.zeros((self.batch_size - real, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            outputs = _forward(self._variables, chunk, model=self._model)
            chunks.append({k: np.asarray(v)[:real] for k, v in outputs.items()})
        if not chunks:
            return {}
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}

    def predict_crops(self, crops: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        """Model outputs for face crops (any size, uint8 RGB): preprocess + predict."""
        if not crops:
            return {}
        batch = np.stack([preprocess_eval_image(c, self.image_size) for c in crops])
        return self.predict_preprocessed(batch)

    # ----------------------------------------------------------------------------------------
    # Images -> faces -> predictions.
    # ----------------------------------------------------------------------------------------

    def predict(
        self, images: ImageInput | Iterable[ImageInput], *, keep_images: bool = False
    ) -> list[ImagePrediction]:
        """Predicts every face of every image.

        Args:
          images: one or several file paths and/or arrays (anything `to_uint8_rgb` takes:
            grayscale, RGB, RGBA, uint8/uint16/float; arrays must be RGB order, not BGR).
          keep_images: keep the decoded image on each result (for drawing).

        Returns:
          One ImagePrediction per input, in order. Unreadable inputs carry `error`; images
          without a face have empty `faces`. Nothing is raised for bad images.
        """
        return list(self.predict_iter(images, keep_images=keep_images))

    def predict_iter(
        self, images: ImageInput | Iterable[ImageInput], *, keep_images: bool = False
    ) -> Iterator[ImagePrediction]:
        """`predict` as a generator: holds only about `batch_size` images in memory."""
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            images = [images]
        pending: list[tuple[ImagePrediction, list[np.ndarray]]] = []
        pending_faces = 0
        for index, item in enumerate(images):
            result, crops = self._load_and_crop(index, item, keep_images)
            pending.append((result, crops))
            pending_faces += len(crops)
            if pending_faces >= self.batch_size:
                yield from self._finish(pending)
                pending, pending_faces = [], 0
        yield from self._finish(pending)

    def _load_and_crop(
        self, index: int, item: ImageInput, keep_image: bool
    ) -> tuple[ImagePrediction, list[np.ndarray]]:
        if isinstance(item, np.ndarray):
            source = f"images[{index}]"
        else:
            source = os.fspath(item)
        try:
            if isinstance(item, np.ndarray):
                image = images_lib.to_uint8_rgb(item, name=source)
            else:
                image = images_lib.load_image(item)
        except images_lib.ImageReadError as e:
            return ImagePrediction(source, error=str(e)), []
        result = ImagePrediction(source, image_shape=(int(image.shape[0]), int(image.shape[1])))
        if keep_image:
            result.image = image
        if not self.detect:
            # Exactly what the evaluation pipeline feeds: the whole image, however shaped.
            box = faces_lib.whole_image_box(image)
            region = (0, 0, box.width, box.height)
            result.faces.append(_unfilled_face(box, region))
            return result, [image]
        crops = []
        for box in self.detector.detect(image):
            region = faces_lib.crop_box(box, image.shape, self.margin)
            # Placeholders until the batch runs; `_finish` fills in the numbers.
            result.faces.append(_unfilled_face(box, region))
            crops.append(faces_lib.crop(image, region))
        return result, crops

    def _finish(
        self, pending: list[tuple[ImagePrediction, list[np.ndarray]]]
    ) -> Iterator[ImagePrediction]:
        crops = [crop for _, image_crops in pending for crop in image_crops]
        outputs = self.predict_crops(crops)
        row = 0
        for result, _ in pending:
            for face in result.faces:
                self._fill(face, outputs, row)
                row += 1
            yield result

    def _fill(self, face: FacePrediction, outputs: Mapping[str, np.ndarray], row: int) -> None:
        probs = outputs["probs"][row].astype(np.float32)
        corrected = outputs["corrected_probs"][row].astype(np.float32)
        face.class_index = int(np.argmax(probs))
        face.label = self.class_names[face.class_index]
        face.probability = float(probs[face.class_index])
        face.probs = probs
        face.corrected_index = int(np.argmax(corrected))
        face.corrected_label = self.class_names[face.corrected_index]
        face.corrected_probability = float(corrected[face.corrected_index])
        face.corrected_probs = corrected
        face.confidence = float(outputs["confidence"][row])
        if "anchor_confidence" in outputs:
            face.anchor_confidence = float(outputs["anchor_confidence"][row])
            face.attention_confidence = float(outputs["attention_confidence"][row])


@contextlib.contextmanager
def _quiet_absl_logging():
    """Raises absl's threshold to ERROR inside the block (orbax logs through absl)."""
    from absl import logging as absl_logging

    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(previous)


def _unfilled_face(box: faces_lib.FaceBox, region: tuple[int, ...]) -> FacePrediction:
    empty = np.zeros((0,), np.float32)
    return FacePrediction(box, tuple(region), -1, "", 0.0, empty, -1, "", 0.0, empty, 0.0)
