r"""Landmark pretraining for the CPU demo: `landmarks_synthetic` at the demo's input size.

  python -m grefel_jax.landmarks.pretrain --config configs/landmarks_demo.py \
      --workdir runs/demo_landmarks
  python -m grefel_jax.main --config configs/demo.py --workdir runs/demo \
      --config.init_from=runs/demo_landmarks

`make demo` runs these two (the first one reuses its finished checkpoint on a second call).
The model must be the demo's: `tiny` fed at 64x64, so the landmark network sees 32x32 crops,
the same as inside the demo's GReFEL (a trunk pretrained at another size would see faces at
a scale it never saw). 2,000 steps instead of the 96x96 recipe's 3,000 keep the demo short;
the NME they reach and the effect on the demo are in docs/landmarks.md.
"""

from grefel_jax.configs import base, demo, landmarks_synthetic


def get_config(arg: str | None = None):
    """The recipe; `arg` takes `runlocal` (a few steps) like every config."""
    args = base.parse_arg(arg)
    config = landmarks_synthetic.get_config()
    demo_model = demo.get_config().model
    config.model.variant = demo_model.variant
    config.model.backbone.image_size = demo_model.backbone.image_size
    config.num_train_steps = 2000
    config.checkpoint_every_steps = 1000
    config.eval_every_steps = 1000
    if args.runlocal:
        base.apply_runlocal(config)
    return config
