"""Thin copies of grefel_jax/configs/ so that `--config configs/<name>.py` works from a clone."""
