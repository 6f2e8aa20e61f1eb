r"""Landmark pretraining on AffectNet's 68 points (iBUG layout), `paper` size.

  python -m grefel_jax.prepare --dataset affectnet --config 7 --manual_dir ...
  python -m grefel_jax.landmarks.pretrain --config configs/landmarks_affectnet.py \
      --workdir runs/landmarks_affectnet --config.data.data_dir=~/tensorflow_datasets

Faces without landmarks (NaN) count neither in the loss nor in the NME. AffectNet has no
validation split: the periodic evaluation and the report both use `test` (the official
validation set). Not run here (AffectNet is not available on this machine).
"""

from grefel_jax.configs import base


def get_config(arg: str | None = None):
    """The recipe; `arg` takes `runlocal` (a few steps) like every config."""
    args = base.parse_arg(arg)
    config = base.landmark_pretrain_config("affectnet", "7")
    config.model.variant = "paper"
    config.data.eval_split = "test"
    config.data.augment.rotation_degrees = 10.0

    config.optim.name = "adamw"
    config.optim.sam = False
    config.optim.lr_backbone = 1e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 500
    config.optim.weight_decay = 1e-4

    config.batch_size = 128
    config.num_epochs = 30.0
    config.log_every_steps = 100
    config.eval_every_steps = -1  # once per epoch
    config.checkpoint_every_steps = -1
    if args.runlocal:
        base.apply_runlocal(config)
    return config
