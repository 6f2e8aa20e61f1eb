"""`python -m grefel_jax.label_issues`: the older name of `python -m
grefel_jax.study.label_issues` (ranks a split's records by how strongly a trained model
disagrees with their labels)."""

from __future__ import annotations

import runpy

if __name__ == "__main__":
    runpy.run_module("grefel_jax.study.label_issues", run_name="__main__", alter_sys=True)
