r"""The CPU demo: the full GReFEL head on the `tiny` backbone, synthetic faces, no download.

  python -m grefel_jax.data.prepare --dataset synthetic_faces --config demo_96 --data_dir data
  python -m grefel_jax.landmarks.pretrain --config configs/landmarks_demo.py \
      --workdir runs/demo_landmarks
  python -m grefel_jax.main --config configs/demo.py --workdir runs/demo \
      --config.init_from=runs/demo_landmarks

(`make demo` runs exactly these three commands, then `predict` on unseen faces; without
`init_from` the landmark network stays random, as before issue 10.) The model is
the default `grefel` head preset at `tiny` size (32-d reduction, MLP 64-32 with BatchNorm and
dropout 0.5, K = 10 anchors per class, per-sample attention, all loss weights 1, the margin
anchor loss and the detached center confidence the preset defaults to); see docs/numerics.md
for why it trains from scratch. What makes it fit in a few minutes on 2 cores:

- the 96x96 images are fed at 64x64 (`model.backbone.image_size`): the step costs about half;
- batch 32 and AdamW at 5e-4 with cosine decay (SAM would double the step cost); at 1e-3
  the primary MLP behind dropout 0.5 stayed at chance for 700+ steps;
- no DropPath in the backbone (too few steps to need it), flips as the only augmentation.

The run reports on the test split with the best checkpoint by validation accuracy:
runs/demo/eval_test.json and runs/demo/confusion_test_primary.png; TensorBoard:
`tensorboard --logdir runs/demo`.
"""

from grefel_jax.configs import base


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

    config.optim.name = "adamw"
    config.optim.sam = False
    config.optim.lr_backbone = config.optim.lr_head = config.optim.lr_anchors = 5e-4
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 50
    config.optim.weight_decay = 1e-4

    config.batch_size = 32
    config.eval_batch_size = 128
    config.num_train_steps = 1800
    config.log_every_steps = 100
    config.eval_every_steps = 600
    config.checkpoint_every_steps = 600
    config.keep_checkpoints = 1
    if args.runlocal:
        base.apply_runlocal(config)
    return config
