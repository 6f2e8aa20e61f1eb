"""`python -m grefel_jax.label_issues`: the older name of `python -m
grefel_jax.study.label_issues` (ranks a split's records by how strongly a trained model
disagrees with their labels)."""

from __future__ import annotations

if __name__ == "__main__":
    from grefel_jax import cli
    from grefel_jax.study import label_issues as command

    cli.run_alias(command)
