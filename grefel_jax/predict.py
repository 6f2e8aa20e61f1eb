"""`python -m grefel_jax.predict`: the prediction command, `grefel_jax.inference.__main__`
(its flags and usage); `grefel_jax.inference.command.run` is the same without flags."""

from __future__ import annotations

if __name__ == "__main__":
    from grefel_jax import cli
    from grefel_jax.inference import __main__ as command

    cli.run_alias(command)
