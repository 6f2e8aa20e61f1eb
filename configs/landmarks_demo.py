"""`--config configs/landmarks_demo.py`: see grefel_jax/configs/landmarks_demo.py."""

from grefel_jax.configs.landmarks_demo import get_config  # noqa: F401
