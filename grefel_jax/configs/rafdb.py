r"""RAF-DB basic, 7 classes: POSTER++ recipe, SAM + Adam, lr 3.5e-5.

RAF-DB has no validation split; as in POSTER++, the best epoch is picked on test.

  python -m grefel_jax.prepare --dataset raf_db --manual_dir DIR \
      --data_dir ~/tensorflow_datasets
  python -m grefel_jax.main --config configs/rafdb.py --workdir runs/rafdb \
      --config.data.data_dir=~/tensorflow_datasets [--config.init_from=weights/backbones]
  python -m grefel_jax.evaluate --checkpoint runs/rafdb --split test

(`weights/backbones`: `python -m grefel_jax.convert --kind backbones`, README "Pretrained
weights".)
"""

from grefel_jax.configs import base


def get_config(arg: str | None = None):
    """The RAF-DB recipe; `arg`: `runlocal`."""
    args = base.parse_arg(arg)
    config = base.dataset_config("raf_db", lr=3.5e-5)
    return base.apply_runlocal(config) if args.runlocal else config
