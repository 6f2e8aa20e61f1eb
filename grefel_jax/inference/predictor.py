"""`Predictor`: checkpoint -> per-face expression predictions for image files or arrays.

  predictor = Predictor.from_checkpoint("runs/demo")
  for result in predictor.predict(["me.jpg", "group.png"]):
      for face in result.faces:
          print(result.source, face.box, face.label, face.probability)

The path from pixels to model input is the evaluation pipeline's: decode to upright uint8 RGB
(`inference.images`), crop the face (`inference.faces`), then
`grefel_jax.preprocess.preprocess_eval_image` (resize + ImageNet normalization), the very
function the evaluation pipeline maps over its records.

With `align=True` (and a landmark network, `inference.landmark_points.LandmarkModel`) the
square crop is replaced by the face warped onto the five-point template of the training data
(`inference.align`): points are predicted on the square crop, fitted to the template by a
similarity, and the image is warped. Faces whose points are implausible, or where a face
detector (`verifier`) sees no face where the points put one, keep the square crop, with a
warning that says why.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from grefel_jax import settings
from grefel_jax.inference import align as align_lib
from grefel_jax.inference import faces as faces_lib
from grefel_jax.inference import images as images_lib
from grefel_jax.inference.class_names import resolve_class_names
from grefel_jax.inference.results import (  # noqa: F401  (re-exported: the public API)
    OUTPUT_KEYS,
    FacePrediction,
    ImagePrediction,
    fill_face,
    unfilled_face,
)
from grefel_jax.models import GReFEL, ModelConfig, names
from grefel_jax.preprocess import preprocess_eval_image

ImageInput = str | os.PathLike | np.ndarray


@functools.partial(jax.jit, static_argnames=("model",))
def forward(variables: Mapping[str, Any], images: jax.Array, model: GReFEL) -> dict:
    """(B, S, S, 3) float32 -> the prediction outputs of `OUTPUT_KEYS` present for the head.

    Module-level and keyed on the (hashable) model, so every Predictor of the same
    architecture and batch size shares one compilation.
    """
    outputs = model.apply(variables, images, train=False)
    return {k: outputs[k] for k in OUTPUT_KEYS if k in outputs}


_forward = forward  # The name tests and older callers use.


class Predictor:
    """Face expression predictions from a GReFEL / POSTER++ model.

    Args (all but the first three are also attributes):
      variables: `{'params', 'batch_stats'}` of the whole model (numpy or jax arrays).
      model_config: the architecture.
      class_names: C names in the model's label order.
      detect: run the face detector (False: every image is already a face crop and goes to
        the preprocessing whole, exactly as in the evaluation pipeline).
      detector: anything with `detect(image) -> [FaceBox]` (default: `faces.make_detector()`,
        the SSD CNN; `faces.FaceDetector()` is the Haar cascade).
      margin: context around a detected box, as a fraction of its side.
      batch_size: faces per forward pass. Batches are padded to this size so one compilation
        serves every call, except for heads with ARBEx batch attention
        (`model.head.attention='batch'`), where padding would change the corrected outputs
        of the real faces: there the last batch runs at its own size, and the corrected
        outputs depend on which faces share a batch (as in the official ARBEx code).
      compute_dtype: dtype of the backbone computation (the head is always float32).
      metadata: what the checkpoint recorded (kept as `self.metadata`).
      align: warp each face onto `template` with points from `landmarks` (see the module doc).
      landmarks: the landmark network (required with align=True): anything with `layout`
        (a PointLayout) and `predict_points(crops) -> (K, N, 2)` crop pixels.
      template: an `inference.align.TEMPLATES` name, a (5, 2) unit-coordinate array, or
        'auto': 'synthetic_faces' for a model trained on synthetic_faces, else 'arcface'.
      warn: called with one line per face that falls back to the square crop (default:
        `warnings.warn` with `align.AlignmentWarning`).
      verifier: the face detector that checks each aligned face (`align.not_a_face_there`;
        default: `faces.make_detector()`, the SSD). Used only with align=True.

    The model runs on the default device (one accelerator, or the first CPU device).
    """

    def __init__(
        self,
        variables: Mapping[str, Any],
        model_config: ModelConfig,
        class_names: Sequence[str],
        *,
        detect: bool = True,
        detector: Any = None,
        margin: float = 0.2,
        batch_size: int = 32,
        compute_dtype: Any = jnp.float32,
        metadata: Mapping[str, Any] | None = None,
        align: bool = False,
        landmarks: Any = None,
        template: str | np.ndarray = "auto",
        warn: Callable[[str], None] | None = None,
        verifier: Any = None,
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
        self.detector = detector or faces_lib.make_detector()
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
        if align and landmarks is None:
            raise ValueError("align=True needs a landmark network (--landmarks WORKDIR).")
        self.align = bool(align)
        self.landmarks = landmarks
        self.template = _resolve_template(template, self.metadata.get("dataset"))
        self._warn = warn or (lambda m: warnings.warn(m, align_lib.AlignmentWarning, 3))
        self.verifier = (verifier or faces_lib.make_detector()) if self.align else None
        if detect:
            faces_lib.load_detector(self.detector)  # Fail now, not on the first image.
        if self.verifier is not None:
            faces_lib.load_detector(self.verifier)

    @property
    def model(self) -> GReFEL:
        """The Linen module `forward` applies (computing in the Predictor's compute_dtype)."""
        return self._model

    @property
    def variables(self) -> dict[str, Any]:
        """`{'params', 'batch_stats'}` of the whole model, on the default device."""
        return self._variables

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
            outputs = forward(self._variables, chunk, model=self._model)
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
            result.faces.append(unfilled_face(box, region))
            crops = [image]
        else:
            crops = []
            for box in self.detector.detect(image):
                region = faces_lib.crop_box(box, image.shape, self.margin)
                # Placeholders until the batch runs; `_finish` fills in the numbers.
                result.faces.append(unfilled_face(box, region))
                crops.append(faces_lib.crop(image, region))
        if self.align and crops:
            crops = self.align_crops(image, result.faces, crops, result.source)
        return result, crops

    def align_crops(
        self,
        image: np.ndarray,
        faces: Sequence[FacePrediction],
        crops: Sequence[np.ndarray],
        source: str,
    ) -> list[np.ndarray]:
        """The aligned crop of each face (or its square crop, with a warning); sets
        `face.aligned`.

        Args:
          image: (H, W, 3) uint8 RGB, the whole image.
          faces: K placeholders (`unfilled_face`) with their box and crop_box.
          crops: the K square crops `image[crop_box]`.
          source: names the image in warnings.

        Returns:
          K crops: (S, S, 3) aligned ones, the square crop where the points are implausible.
        """
        points = self.landmarks.predict_points(list(crops))  # (K, N, 2) crop pixels
        aligned = []
        for index, (face, crop, face_points) in enumerate(zip(faces, crops, points)):
            warped, problem = align_lib.align_face(
                image,
                face_points,
                face.crop_box[:2],
                face.box.as_tuple(),
                self.landmarks.layout,
                self.template,
                self.image_size,
                self.verifier,
            )
            face.aligned = warped is not None
            if warped is None:
                self._warn(f"{source}: face {index}: {problem}; using the square crop.")
                warped = crop
            aligned.append(warped)
        return aligned

    def _finish(
        self, pending: list[tuple[ImagePrediction, list[np.ndarray]]]
    ) -> Iterator[ImagePrediction]:
        crops = [crop for _, image_crops in pending for crop in image_crops]
        outputs = self.predict_crops(crops)
        row = 0
        for result, _ in pending:
            for face in result.faces:
                fill_face(face, outputs, row, self.class_names)
                row += 1
            yield result


def _resolve_template(template: str | np.ndarray, dataset: str | None) -> np.ndarray:
    """(5, 2) unit template from a name, an array or 'auto' (by the training dataset)."""
    if isinstance(template, str):
        if template == "auto":
            synthetic = str(dataset or "").startswith("synthetic_faces")
            template = "synthetic_faces" if synthetic else "arcface"
        return align_lib.template_for(template)
    template = np.asarray(template, np.float64)
    if template.shape != (5, 2):
        raise ValueError(f"an alignment template is (5, 2) unit coordinates, got {template.shape}.")
    return template


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
