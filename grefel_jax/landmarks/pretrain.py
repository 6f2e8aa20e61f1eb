r"""The landmark pretraining command of issue 10, kept as an alias of
`python -m grefel_jax.pretrain landmarks` (grefel_jax/pretrain/landmarks.py):

  python -m grefel_jax.landmarks.pretrain --config configs/landmarks_synthetic.py \
      --workdir runs/landmarks
"""

from __future__ import annotations

from grefel_jax.pretrain.landmarks import pretrain  # noqa: F401  (the library entry point)


def main(argv):
    from grefel_jax import cli
    from grefel_jax.pretrain import __main__ as command

    if len(argv) > 1:
        cli.fail(f"Unexpected arguments: {argv[1:]}")
    command.run("landmarks", command.FLAGS.config, command.FLAGS.workdir)


if __name__ == "__main__":
    from absl import app

    from grefel_jax import cli
    from grefel_jax.pretrain import __main__ as command

    command.define_flags()
    app.run(main, flags_parser=cli.parse_flags)
