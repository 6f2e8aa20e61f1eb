"""The landmark network at prediction time: face crops -> points in crop pixels (issue 10).

  landmarks = LandmarkModel.from_checkpoint("runs/landmarks")  # a pretraining workdir
  points = landmarks.predict_points([crop])                    # (1, N, 2) crop pixels

The network is `models.landmarks.LandmarkNet` (GReFEL's MobileFaceNet + the GDC head) as
`grefel_jax.landmarks.pretrain` saves it; its input is the crop through the evaluation
preprocessing at the checkpoint's image size, as in pretraining.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from grefel_jax.data import augment
from grefel_jax.data.landmark_layouts import PointLayout, layout_for_num_points
from grefel_jax.models import landmarks as landmark_model
from grefel_jax.models import names
from grefel_jax.models.config import BackboneConfig
from grefel_jax.preprocess import preprocess_eval_image


@functools.partial(jax.jit, static_argnames=("model",))
def _predict(variables, images, model):
    return landmark_model.predict(variables, images, model=model)


class LandmarkModel:
    """A LandmarkNet with its variables and point layout.

    Args:
      variables: `{'params', 'batch_stats'}` holding `face_landback` with its `output_layer`.
      backbone: the backbone sizes it was trained with (image_size, widths).
      batch_size: crops per forward pass (padded: one compilation).
    """

    def __init__(self, variables: Mapping[str, Any], backbone: BackboneConfig, batch_size: int = 8):
        trunk = variables["params"].get(names.LANDMARK_NET, {})
        head = trunk.get("output_layer")
        if head is None:
            raise ValueError(
                f"no {names.LANDMARK_NET}/output_layer (the landmark head): not a landmark "
                "pretraining workdir (python -m grefel_jax.landmarks.pretrain)."
            )
        num_points = int(np.shape(head["linear"]["kernel"])[-1]) // 2
        self.layout: PointLayout = layout_for_num_points(num_points)
        self.image_size = backbone.image_size
        self.batch_size = int(batch_size)
        self._model = landmark_model.LandmarkNet(backbone, num_points)
        self._variables = jax.device_put(
            {
                "params": {names.LANDMARK_NET: trunk},
                "batch_stats": {
                    names.LANDMARK_NET: variables.get("batch_stats", {}).get(names.LANDMARK_NET, {})
                },
            }
        )

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, **kwargs) -> LandmarkModel:
        """Loads a landmark pretraining workdir (its best checkpoint) or inference checkpoint.

        Raises:
          CheckpointError / ValueError: naming the path and what is wrong.
        """
        from grefel_jax.checkpoints import load_inference_checkpoint
        from grefel_jax.inference.predictor import _quiet_absl_logging

        path = os.path.abspath(path)
        with _quiet_absl_logging():  # orbax's routine read-only notes
            variables, model_config, _ = load_inference_checkpoint(path, check_shapes=False)
        try:
            return cls(variables, model_config.backbone, **kwargs)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def predict_points(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """Points of each face crop.

        Args:
          crops: K face crops, each (h, w, 3) uint8 RGB, any size.

        Returns:
          (K, N, 2) float64 pixel (x, y) in each crop's own pixels (centres at integers).
        """
        if not crops:
            return np.zeros((0, self.layout.num_points, 2))
        size = self.image_size
        batch = np.stack([preprocess_eval_image(c, size) for c in crops])
        out = []
        for start in range(0, len(batch), self.batch_size):
            chunk = batch[start : start + self.batch_size]
            real = len(chunk)
            if real < self.batch_size:
                pad = np.zeros((self.batch_size - real, *chunk.shape[1:]), np.float32)
                chunk = np.concatenate([chunk, pad])
            out.append(np.asarray(_predict(self._variables, chunk, model=self._model))[:real])
        units = np.concatenate(out).astype(np.float64)
        return np.stack(
            [
                augment.unit_to_pixels(u, c.shape[1], c.shape[0]).astype(np.float64)
                for u, c in zip(units, crops)
            ]
        )
