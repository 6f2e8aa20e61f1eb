"""`python -m grefel_jax.predict`: facial expressions in images and videos. The command is
the inference package's (`grefel_jax/inference/__main__.py`: its flags and usage;
`inference.command.run` is the same without flags); this name runs it."""

from __future__ import annotations

import runpy

if __name__ == "__main__":
    runpy.run_module("grefel_jax.inference", run_name="__main__", alter_sys=True)
