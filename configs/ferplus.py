"""`--config configs/ferplus.py` loads the recipe of grefel_jax/configs/ferplus.py."""

from grefel_jax.configs.ferplus import get_config  # noqa: F401
