r"""Aff-Wild2 expression track (ABAW, 8 classes incl. 'other'), ARBEx-like run.

Papers report on the validation split. Frames are many and highly correlated, so one
epoch is long: 10 epochs, evaluation every 2000 steps.

Prepare the data once (the builder lists the official files it needs if any is missing):

  python -m grefel_jax.data.prepare --dataset aff_wild2_expr \
      --manual_dir /path/to/official/files --data_dir ~/tensorflow_datasets

Train and evaluate (single host; see launch/ for TPU pods and Slurm):

  python -m grefel_jax.main --config configs/affwild2.py --workdir runs/affwild2 \
      --config.data.data_dir=~/tensorflow_datasets [--config.init_from=weights/backbones]

(`weights/backbones` comes from `python -m grefel_jax.convert --kind backbones`, see the
README "Pretrained weights".)

Evaluate the best checkpoint of a run again, on any split:

  python -m grefel_jax.evaluate --checkpoint runs/affwild2 --split validation
"""

import pathlib
import sys

# Config files are loaded by path; make `configs.base` importable from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402


def get_config():
    """The affwild2 config (see the module docstring for commands)."""
    config = base.get_base_config()
    config.data.name = "aff_wild2_expr"
    config.data.builder_config = None
    config.data.eval_split = "validation"
    config.data.sampler = "none"
    config.optim.lr_backbone = 1e-5
    config.optim.lr_head = 1e-5
    config.optim.lr_anchors = 1e-5
    config.num_epochs = 10.0
    config.eval_every_steps = 2000
    config.checkpoint_every_steps = 2000
    config.optim.decay_rate = 0.9
    return config
