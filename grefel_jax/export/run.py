"""`python -m grefel_jax.export.run`: the older name of `python -m grefel_jax.export.predict`
(predicts from an export folder alone)."""

from __future__ import annotations

import runpy

if __name__ == "__main__":
    runpy.run_module("grefel_jax.export.predict", run_name="__main__", alter_sys=True)
