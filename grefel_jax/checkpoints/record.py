"""`ModelRecord`: what a checkpoint says about its model besides the weights.

Saved with every checkpoint, training and inference alike, so that evaluation and prediction
never have to guess: the architecture (ModelConfig), the class names in label order, the
dataset trained on, and the input preprocessing (image side, normalization, resize).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from grefel_jax import preprocess
from grefel_jax.models.config import ModelConfig, model_config_from_dict, model_config_to_dict


def default_preprocessing(image_size: int) -> dict[str, Any]:
    """The preprocessing of `grefel_jax.preprocess.preprocess_eval_image` at side S."""
    return {
        "image_size": int(image_size),
        "resize": "PIL bilinear to S x S",
        "mean": [float(x) for x in preprocess.IMAGENET_MEAN],
        "std": [float(x) for x in preprocess.IMAGENET_STD],
        "rgb": "grefel_jax.preprocess.pil_to_rgb (EXIF upright, alpha over white)",
    }


@dataclasses.dataclass(frozen=True)
class ModelRecord:
    """A model's description.

    Attributes:
      model_config: the architecture.
      class_names: the C class names in label order, or None when unknown (converted
        official checkpoints do not record their dataset).
      dataset: the dataset trained on (`name` or `name/config`), or None.
      preprocessing: JSON-ready description of the input pipeline (`default_preprocessing`).
    """

    model_config: ModelConfig
    class_names: tuple[str, ...] | None = None
    dataset: str | None = None
    preprocessing: Mapping[str, Any] | None = None

    def __post_init__(self):
        if self.class_names is not None:
            names = tuple(str(n) for n in self.class_names)
            if len(names) != self.model_config.head.num_classes:
                raise ValueError(
                    f"{len(names)} class names {list(names)} for a model with "
                    f"{self.model_config.head.num_classes} classes."
                )
            object.__setattr__(self, "class_names", names)
        if self.preprocessing is None:
            size = self.model_config.backbone.image_size
            object.__setattr__(self, "preprocessing", default_preprocessing(size))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "model_config": model_config_to_dict(self.model_config),
            "class_names": None if self.class_names is None else list(self.class_names),
            "dataset": self.dataset,
            "preprocessing": dict(self.preprocessing),
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelRecord:
        """Inverse of `to_dict`; a bare model-config dict (older checkpoints) is accepted."""
        if "model_config" not in values:
            return cls(model_config_from_dict(values))
        return cls(
            model_config=model_config_from_dict(values["model_config"]),
            class_names=values.get("class_names"),
            dataset=values.get("dataset"),
            preprocessing=values.get("preprocessing"),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
