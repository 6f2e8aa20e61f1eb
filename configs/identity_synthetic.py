"""`--config configs/identity_synthetic.py`: see grefel_jax/configs/identity_synthetic.py."""

from grefel_jax.configs.identity_synthetic import get_config  # noqa: F401
