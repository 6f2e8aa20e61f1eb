r"""FERG-DB (7 classes, stylised characters), RAF-DB learning rate.

FERG-DB has no official split: the builder's 80/20 split by path hash is used.

  python -m grefel_jax.prepare --dataset ferg_db --manual_dir DIR \
      --data_dir ~/tensorflow_datasets
  python -m grefel_jax.main --config configs/fergdb.py --workdir runs/fergdb \
      --config.data.data_dir=~/tensorflow_datasets [--config.init_from=weights/backbones]
"""

from grefel_jax.configs import base


def get_config(arg: str | None = None):
    """The FERG-DB recipe; `arg`: `runlocal`."""
    args = base.parse_arg(arg)
    config = base.dataset_config("ferg_db", lr=3.5e-5)
    return base.apply_runlocal(config) if args.runlocal else config
