r"""AffectNet, 8 classes (with contempt; POSTER++ recipe, lr 1e-6).

The official validation set (500 per class) is the builder's `test` split.

Prepare the data once (the builder lists the official files it needs if any is missing):

  python -m grefel_jax.data.prepare --dataset affectnet --config 8 \
      --manual_dir /path/to/official/files --data_dir ~/tensorflow_datasets

Train and evaluate (single host; see launch/ for TPU pods and Slurm):

  python -m grefel_jax.main --config configs/affectnet8.py --workdir runs/affectnet8 \
      --config.data.data_dir=~/tensorflow_datasets [--config.init_from=weights/backbones]

(`weights/backbones` comes from `python -m grefel_jax.convert --kind backbones`, see the
README "Pretrained weights".)

Evaluate the best checkpoint of a run again, on any split:

  python -m grefel_jax.evaluate --checkpoint runs/affectnet8 --split test
"""

import pathlib
import sys

# Config files are loaded by path; make `configs.base` importable from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402


def get_config():
    """The affectnet8 config (see the module docstring for commands)."""
    config = base.get_base_config()
    config.data.name = "affectnet"
    config.data.builder_config = "8"
    config.data.eval_split = "test"
    config.data.sampler = "inverse_frequency"
    config.optim.lr_backbone = 1e-6
    config.optim.lr_head = 1e-6
    config.optim.lr_anchors = 1e-6
    config.loss.class_weighting = False
    config.data.augment.random_erasing_p = 1.0
    config.data.augment.random_erasing_scale = (0.05, 0.05)
    return config
