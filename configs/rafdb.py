"""`--config configs/rafdb.py` loads the recipe of grefel_jax/configs/rafdb.py."""

from grefel_jax.configs.rafdb import get_config  # noqa: F401
