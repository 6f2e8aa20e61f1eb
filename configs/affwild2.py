"""`--config configs/affwild2.py` loads the recipe of grefel_jax/configs/affwild2.py."""

from grefel_jax.configs.affwild2 import get_config  # noqa: F401
