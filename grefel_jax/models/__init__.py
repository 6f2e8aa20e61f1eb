"""GReFEL model: POSTER++ feature extractor + poster or reliability-balancing head."""

from grefel_jax.models.config import (
    HEAD_PRESETS,
    VARIANTS,
    BackboneConfig,
    HeadConfig,
    ModelConfig,
    make_model_config,
    model_config_from_dict,
    model_config_to_dict,
)
from grefel_jax.models.grefel import GReFEL, init_variables

__all__ = [
    "HEAD_PRESETS",
    "VARIANTS",
    "BackboneConfig",
    "GReFEL",
    "HeadConfig",
    "ModelConfig",
    "init_variables",
    "make_model_config",
    "model_config_from_dict",
    "model_config_to_dict",
]
