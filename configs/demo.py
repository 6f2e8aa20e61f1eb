r"""The CPU demo: `tiny` model on the generated synthetic faces (96x96), a few minutes on 2 cores.

No download. Plain AdamW with a short warm-up and cosine decay (SAM would double the step
cost), no augmentation beyond flips, batch 64.

  python -m grefel_jax.data.prepare --dataset synthetic_faces --config demo_96 --data_dir data
  python -m grefel_jax.main --config configs/demo.py --workdir runs/demo

(`make demo` runs exactly these two commands.) The run reports on the test split with the
best checkpoint by validation accuracy: runs/demo/eval_test.json and
runs/demo/confusion_test_primary.png; TensorBoard: `tensorboard --logdir runs/demo`.
"""

import pathlib
import sys

# Config files are loaded by path; make `configs.base` importable from any working directory.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402


def get_config():
    """The demo config."""
    config = base.get_base_config()
    config.model.variant = "tiny"
    config.data.name = "synthetic_faces"
    config.data.builder_config = "demo_96"
    config.data.data_dir = "data"
    config.data.eval_split = "validation"
    config.final_eval_splits = ("test",)
    config.data.augment.resize_crop = False
    config.data.augment.random_erasing_p = 0.0

    # From scratch on 2 cores: no DropPath / dropout (too few steps to need them), and a
    # linear primary classifier on the raw embedding (the MLP + BatchNorm of the full head
    # learns much more slowly from an untrained backbone). Anchors and the attentive
    # correction are those of the GReFEL head.
    config.model.backbone.drop_path_max = 0.0
    config.model.head.mlp_hidden = ()
    config.model.head.mlp_dropout = 0.0
    config.model.head.reduction_dim = 0
    # The center loss is weighted by the (not detached) primary confidence, so from an
    # untrained backbone its cheapest descent is a uniform prediction; keep it small here.
    config.loss.lambda_center = 0.1

    config.optim.name = "adamw"
    config.optim.sam = False
    config.optim.lr_backbone = 1e-3
    config.optim.lr_head = 1e-3
    config.optim.lr_anchors = 1e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 20
    config.optim.weight_decay = 1e-4
    config.optim.grad_clip_norm = 1.0
    config.loss.anchor_loss_form = "margin"

    config.batch_size = 64
    config.eval_batch_size = 128
    config.num_train_steps = 1000
    config.log_every_steps = 50
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 1
    return config
