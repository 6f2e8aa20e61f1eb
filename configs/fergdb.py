"""`--config configs/fergdb.py` loads the recipe of grefel_jax/configs/fergdb.py."""

from grefel_jax.configs.fergdb import get_config  # noqa: F401
