"""`python -m grefel_jax.data.prepare`: the older name of `python -m grefel_jax.prepare`
(dataset preparation left the read path, `grefel_jax.data`, for its own package)."""

from __future__ import annotations

from grefel_jax.prepare.build import prepare  # noqa: F401  (the library entry point)

if __name__ == "__main__":
    from grefel_jax import cli
    from grefel_jax.prepare import __main__ as command

    cli.run_alias(command)
