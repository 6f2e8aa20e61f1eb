r"""FERG-DB (7 classes, rendered characters), RAF-DB learning rate.

FERG-DB has no official split: the builder's seeded split is used.

Prepare the data once (the builder lists the official files it needs if any is missing):

  python -m grefel_jax.data.prepare --dataset ferg_db \
      --manual_dir /path/to/official/files --data_dir ~/tensorflow_datasets

Train and evaluate (single host; see launch/ for TPU pods and Slurm):

  python -m grefel_jax.main --config configs/fergdb.py --workdir runs/fergdb \
      --config.data.data_dir=~/tensorflow_datasets [--config.init_from=weights/backbones]

(`weights/backbones` comes from `python -m grefel_jax.convert --kind backbones`, see the
README "Pretrained weights".)

Evaluate the best checkpoint of a run again, on any split:

  python -m grefel_jax.evaluate --checkpoint runs/fergdb --split test
"""

import pathlib
import sys

# Config files are loaded by path; make `configs.base` importable from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402


def get_config():
    """The fergdb config (see the module docstring for commands)."""
    config = base.get_base_config()
    config.data.name = "ferg_db"
    config.data.builder_config = None
    config.data.eval_split = "test"
    config.data.sampler = "none"
    config.optim.lr_backbone = 3.5e-5
    config.optim.lr_head = 3.5e-5
    config.optim.lr_anchors = 3.5e-5
    return config
