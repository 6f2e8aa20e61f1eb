r"""AffectNet, 7 or 8 classes: POSTER++ recipe, lr 1e-6, inverse-frequency sampling.

The official validation set (500 per class) is the builder's `test` split, as in every paper.
The argument picks the class count: `configs/affectnet.py` (7, the default) or
`configs/affectnet.py:8` (with contempt).

  python -m grefel_jax.prepare --dataset affectnet --config 7 --manual_dir DIR \
      --data_dir ~/tensorflow_datasets
  python -m grefel_jax.main --config configs/affectnet.py:8 --workdir runs/affectnet8 \
      --config.data.data_dir=~/tensorflow_datasets [--config.init_from=weights/backbones]
  python -m grefel_jax.evaluate --checkpoint runs/affectnet8 --split test
"""

from grefel_jax.configs import base


def get_config(arg: str | None = None):
    """The AffectNet recipe; `arg`: `classes=7|8` (or just `8`), `runlocal`."""
    args = base.parse_arg(arg, classes=7)
    if args.classes not in (7, 8):
        raise ValueError(f"configs/affectnet.py:{args.classes}: the class count is 7 or 8.")
    config = base.dataset_config(
        "affectnet", builder_config=str(args.classes), lr=1e-6, sampler="inverse_frequency"
    )
    # Balanced sampling replaces loss weighting (POSTER++ ImbalancedDatasetSampler).
    config.loss.class_weighting = False
    config.data.augment.random_erasing_p = 1.0
    config.data.augment.random_erasing_scale = (0.05, 0.05)
    return base.apply_runlocal(config) if args.runlocal else config
