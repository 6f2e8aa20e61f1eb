r"""Landmark pretraining on synthetic faces (all 35 drawn points), `tiny` size.

  python -m grefel_jax.prepare --dataset synthetic_faces --config demo_96 --data_dir data
  python -m grefel_jax.landmarks.pretrain --config configs/landmarks_synthetic.py \
      --workdir runs/landmarks_synthetic

Trains the MobileFaceNet trunk of the tiny GReFEL (48x48 after the model's 2x sub-sampling)
with its GDC landmark head; `--config.init_from=runs/landmarks_synthetic` in training then
loads the trunk as GReFEL's landmark network. Reports the test NME (inter-pupil) in
runs/landmarks_synthetic/landmarks_eval.json and .png.
"""

from grefel_jax.configs import base


def get_config(arg: str | None = None):
    """The recipe; `arg` takes `runlocal` (a few steps) like every config."""
    args = base.parse_arg(arg)
    config = base.landmark_pretrain_config("synthetic_faces", "demo_96")
    config.model.variant = "tiny"
    config.data.data_dir = "data"
    config.data.eval_split = "validation"
    config.data.augment.rotation_degrees = 10.0
    config.data.augment.brightness = 0.2
    config.data.augment.contrast = 0.2

    config.optim.name = "adamw"
    config.optim.sam = False
    config.optim.lr_backbone = 2e-3
    config.optim.schedule = "cosine"
    config.optim.warmup_steps = 100
    config.optim.weight_decay = 1e-4

    config.batch_size = 64
    config.eval_batch_size = 128
    config.num_train_steps = 3000
    config.log_every_steps = 100
    config.eval_every_steps = 1000
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 1
    if args.runlocal:
        base.apply_runlocal(config)
    return config
