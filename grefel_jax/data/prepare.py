"""`python -m grefel_jax.data.prepare`: the older name of `python -m grefel_jax.prepare`
(dataset preparation left the read path, `grefel_jax.data`, for its own package)."""

from __future__ import annotations

import runpy

if __name__ == "__main__":
    runpy.run_module("grefel_jax.prepare", run_name="__main__", alter_sys=True)
