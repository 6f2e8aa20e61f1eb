"""`python -m grefel_jax.export.run`: the older name of `python -m grefel_jax.export.predict`
(predicts from an export folder alone)."""

from __future__ import annotations

from grefel_jax.export.predict import run  # noqa: F401  (the library entry point)

if __name__ == "__main__":
    from grefel_jax import cli
    from grefel_jax.export import predict as command

    cli.run_alias(command)
