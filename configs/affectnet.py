"""`--config configs/affectnet.py` loads the recipe of grefel_jax/configs/affectnet.py."""

from grefel_jax.configs.affectnet import get_config  # noqa: F401
