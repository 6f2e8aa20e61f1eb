r"""FER+ (8 classes, majority vote), RAF-DB learning rate.

Best checkpoint by PublicTest (validation); PrivateTest (test) reported at the end.

  python -m grefel_jax.prepare --dataset ferplus --manual_dir DIR \
      --data_dir ~/tensorflow_datasets
  python -m grefel_jax.main --config configs/ferplus.py --workdir runs/ferplus \
      --config.data.data_dir=~/tensorflow_datasets [--config.init_from=weights/backbones]
  python -m grefel_jax.evaluate --checkpoint runs/ferplus --split validation
"""

from grefel_jax.configs import base


def get_config(arg: str | None = None):
    """The FER+ recipe; `arg`: `runlocal`."""
    args = base.parse_arg(arg)
    config = base.dataset_config(
        "ferplus", eval_split="validation", lr=3.5e-5, final_eval_splits=("test",)
    )
    return base.apply_runlocal(config) if args.runlocal else config
