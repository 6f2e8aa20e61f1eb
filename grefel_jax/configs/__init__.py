"""Run configs: one `get_config(arg)` module per recipe, sharing `base.py`.

Load one by path (`--config grefel_jax/configs/rafdb.py`, or the thin copies under the
repository's `configs/`) or import it (`from grefel_jax.configs import rafdb`).
"""
