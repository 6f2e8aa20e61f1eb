"""Landmark pretraining (issue 10): losses, the stream of points, the step functions, the
NME evaluation and the trainer. The network is `grefel_jax.models.landmarks`; the command is
`python -m grefel_jax.pretrain landmarks`."""
