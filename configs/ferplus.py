r"""FER+ (8 classes, majority vote), RAF-DB learning rate.

Best checkpoint by PublicTest (validation); PrivateTest (test) reported at the end.

Prepare the data once (the builder lists the official files it needs if any is missing):

  python -m grefel_jax.data.prepare --dataset ferplus \
      --manual_dir /path/to/official/files --data_dir ~/tensorflow_datasets

Train and evaluate (single host; see launch/ for TPU pods and Slurm):

  python -m grefel_jax.main --config configs/ferplus.py --workdir runs/ferplus \
      --config.data.data_dir=~/tensorflow_datasets [--config.init_from=weights/backbones]

(`weights/backbones` comes from `python -m grefel_jax.convert --kind backbones`, see the
README "Pretrained weights".)

Evaluate the best checkpoint of a run again, on any split:

  python -m grefel_jax.evaluate --checkpoint runs/ferplus --split validation
"""

import pathlib
import sys

# Config files are loaded by path; make `configs.base` importable from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402


def get_config():
    """The ferplus config (see the module docstring for commands)."""
    config = base.get_base_config()
    config.data.name = "ferplus"
    config.data.builder_config = None
    config.data.eval_split = "validation"
    config.data.sampler = "none"
    config.optim.lr_backbone = 3.5e-5
    config.optim.lr_head = 3.5e-5
    config.optim.lr_anchors = 3.5e-5
    config.final_eval_splits = ("test",)
    return config
