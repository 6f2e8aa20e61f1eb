"""Face-identity pretraining of the image backbone (`python -m grefel_jax.pretrain identity`).

* `losses`: the additive angular margin losses (ArcFace, CosFace);
* `verification`: LFW-style pairs, 10-fold verification accuracy, TAR at a FAR;
* `evaluate`: embeddings of a held-out split, `identity_eval.json` and the neighbours PNG;
* `task`: the pretraining task that the one training loop (`grefel_jax.loop`) runs.

The network is `grefel_jax.models.identity.IdentityNet`; docs/pretraining.md has the recipe.
"""
