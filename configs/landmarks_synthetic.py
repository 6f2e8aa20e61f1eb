"""`--config configs/landmarks_synthetic.py`: see grefel_jax/configs/landmarks_synthetic.py."""

from grefel_jax.configs.landmarks_synthetic import get_config  # noqa: F401
