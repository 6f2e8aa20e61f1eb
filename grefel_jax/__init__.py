"""grefel_jax: GReFEL facial expression recognition in JAX/Flax (arXiv 2410.15927)."""

__version__ = "0.1.0"
