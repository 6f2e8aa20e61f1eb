"""`--config configs/jaffe.py` loads the recipe of grefel_jax/configs/jaffe.py."""

from grefel_jax.configs.jaffe import get_config  # noqa: F401
