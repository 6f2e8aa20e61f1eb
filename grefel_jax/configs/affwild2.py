r"""Aff-Wild2 expression track (8 classes, video frames), lr 1e-5, 10 epochs.

Frames labelled -1 are skipped; papers report on the official validation set.

  python -m grefel_jax.prepare --dataset aff_wild2_expr --manual_dir DIR \
      --data_dir ~/tensorflow_datasets
  python -m grefel_jax.main --config configs/affwild2.py --workdir runs/affwild2 \
      --config.data.data_dir=~/tensorflow_datasets [--config.init_from=weights/backbones]
"""

from grefel_jax.configs import base


def get_config(arg: str | None = None):
    """The Aff-Wild2 recipe; `arg`: `runlocal`."""
    args = base.parse_arg(arg)
    config = base.dataset_config("aff_wild2_expr", eval_split="validation", lr=1e-5)
    config.num_epochs = 10.0
    config.eval_every_steps = 2000
    config.checkpoint_every_steps = 2000
    config.optim.decay_rate = 0.9
    return base.apply_runlocal(config) if args.runlocal else config
