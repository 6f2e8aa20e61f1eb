"""`--config configs/demo.py` loads the recipe of grefel_jax/configs/demo.py."""

from grefel_jax.configs.demo import get_config  # noqa: F401
