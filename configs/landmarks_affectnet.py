"""`--config configs/landmarks_affectnet.py`: see grefel_jax/configs/landmarks_affectnet.py."""

from grefel_jax.configs.landmarks_affectnet import get_config  # noqa: F401
