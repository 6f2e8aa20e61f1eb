"""Pretraining of GReFEL's two backbones, run by the one training loop (`grefel_jax.loop`).

  python -m grefel_jax.pretrain landmarks --config configs/landmarks_synthetic.py --workdir W
  python -m grefel_jax.pretrain identity --config configs/identity_synthetic.py --workdir W

* `landmarks`: MobileFaceNet + GDC head regressing landmark points (GReFEL's frozen
  landmark network);
* `identity`: IR-50 + embedding + margin head on face identities (GReFEL's image backbone).

Either workdir is an `init_from` source of GReFEL training; both at once:
`--config.init_from=W_identity,W_landmarks` (docs/pretraining.md).
"""

TASKS = ("landmarks", "identity")
