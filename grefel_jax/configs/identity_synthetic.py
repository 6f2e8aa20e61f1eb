r"""Face-identity pretraining of the tiny IR-50 on synthetic identities, at the demo's size.

  python -m grefel_jax.prepare --dataset synthetic_identities --config 96 --data_dir data
  python -m grefel_jax.pretrain identity --config configs/identity_synthetic.py \
      --workdir runs/identity_synthetic

Trains GReFEL's `tiny` IR-50 fed at 64x64 (32x32 after the model's 2x sub-sampling: the scale
at which the demo's GReFEL sees faces) with a fourth stage, a 128-d embedding and a CosFace
margin head over the 1,000 training identities; reports face verification on 200 held-out
identities in runs/identity_synthetic/identity_eval.json and .png. `--config.init_from=
runs/identity_synthetic` in training then loads the IR-50 stages 1-3 as GReFEL's `ir_back`.
"""

from grefel_jax.configs import base, demo


def get_config(arg: str | None = None):
    """The recipe; `arg` takes `runlocal` (a few steps) like every config."""
    args = base.parse_arg(arg)
    config = base.identity_pretrain_config("synthetic_identities", "96")
    demo_model = demo.get_config().model
    config.model.variant = demo_model.variant
    config.model.backbone.image_size = demo_model.backbone.image_size
    config.data.data_dir = "data"
    config.data.augment.resize_crop = True
    config.data.augment.rotation_degrees = 10.0
    config.data.augment.brightness = 0.2
    config.data.augment.contrast = 0.2

    config.optim.name = "adamw"
    config.optim.sam = False
    config.optim.lr_backbone = config.optim.lr_head = 2e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 5e-4

    config.batch_size = 128
    config.eval_batch_size = 250
    # Validation verification accuracy is above 0.99 after 1,000 steps (docs/pretraining.md
    # §6); 1,500 steps of batch 128 are 12 epochs of the 16,000 training images.
    config.num_train_steps = 1500
    config.log_every_steps = 100
    config.eval_every_steps = 500
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 1
    if args.runlocal:
        base.apply_runlocal(config)
    return config
