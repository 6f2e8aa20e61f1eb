r"""JAFFE (7 classes, 213 images), RAF-DB learning rate.

JAFFE has no official split: the builder trains on 8 subjects and tests on 2. With 213
images, batch 32 and 100 epochs keep the number of updates reasonable.

  python -m grefel_jax.prepare --dataset jaffe --manual_dir DIR \
      --data_dir ~/tensorflow_datasets
  python -m grefel_jax.main --config configs/jaffe.py --workdir runs/jaffe \
      --config.data.data_dir=~/tensorflow_datasets [--config.init_from=weights/backbones]
"""

from grefel_jax.configs import base


def get_config(arg: str | None = None):
    """The JAFFE recipe; `arg`: `runlocal`."""
    args = base.parse_arg(arg)
    config = base.dataset_config("jaffe", lr=3.5e-5)
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_epochs = 100.0
    return base.apply_runlocal(config) if args.runlocal else config
