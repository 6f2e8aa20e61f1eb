r"""The CPU demo: the full GReFEL head fine-tuned from pretrained tiny backbones, on the
synthetic faces, no download.

  python -m grefel_jax.prepare --dataset synthetic_faces --config demo_96 --data_dir data
  python -m grefel_jax.main --config configs/demo.py --workdir runs/demo

(`make demo` runs exactly these two, then `predict` on unseen faces.) Like every published
POSTER++ / GReFEL result, it starts from pretrained backbones (`init_from`): the packaged
`tiny64_identity` IR-50 (face-identity pretraining on synthetic identities) and
`tiny64_landmarks` MobileFaceNet (landmark pretraining on the demo faces' drawn points),
both built by `make pretrained` (docs/pretraining.md). `--config.init_from=` (empty) trains
from random weights instead.

The model is the default `grefel` head preset (K = 10 anchors per class, per-sample
attention, MLP with BatchNorm and dropout 0.5, all loss weights 1, the margin anchor loss and
the detached center confidence) at the paper's head widths (128-d reduction, MLP 384-192-96,
8 attention tokens of 4 heads), which trained better on the tiny backbone than the narrower
32 / 64-32 of `HEAD_SIZES['tiny']` (docs/results/demo_recipe.md). What makes it fit in a few
minutes on 2 cores:

- the 96x96 images are fed at 64x64 (`model.backbone.image_size`), the size both backbones
  were pretrained at;
- batch 32, AdamW with cosine decay: 5e-4 for the pretrained backbone, 2e-3 for the head
  and its anchors, which start from scratch (SAM would double the step cost);
- no DropPath in the backbone (too few steps to need it), flips as the only augmentation.

The run reports on the test split with the best checkpoint by validation accuracy:
runs/demo/eval_test.json and runs/demo/confusion_test_primary.png; TensorBoard:
`tensorboard --logdir runs/demo`.
"""

from grefel_jax.configs import base

# The pretrained backbones shipped in grefel_jax/assets/pretrained (`make pretrained`).
PACKAGED_BACKBONES = "package:tiny64_identity,package:tiny64_landmarks"


def get_config(arg: str | None = None):
    """The demo config; `arg` takes `runlocal` (a few steps) like every config."""
    args = base.parse_arg(arg)
    config = base.get_base_config()
    config.model.variant = "tiny"
    config.model.backbone.image_size = 64
    config.model.backbone.drop_path_max = 0.0
    config.data.name = "synthetic_faces"
    config.data.builder_config = "demo_96"
    config.data.data_dir = "data"
    config.data.eval_split = "validation"
    config.final_eval_splits = ("test",)
    config.data.augment.resize_crop = False
    config.data.augment.random_erasing_p = 0.0

    config.model.head.reduction_dim = 128
    config.model.head.mlp_hidden = (384, 192, 96)
    config.model.head.attention_tokens = 8
    config.model.head.attention_heads = 4
    config.init_from = PACKAGED_BACKBONES

    config.optim.name = "adamw"
    config.optim.sam = False
    config.optim.lr_backbone = 5e-4
    config.optim.lr_head = config.optim.lr_anchors = 2e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 50
    config.optim.weight_decay = 1e-4

    config.batch_size = 32
    config.eval_batch_size = 128
    config.num_train_steps = 2400
    config.log_every_steps = 100
    config.eval_every_steps = 800
    config.checkpoint_every_steps = 800
    config.keep_checkpoints = 1
    if args.runlocal:
        base.apply_runlocal(config)
    return config
