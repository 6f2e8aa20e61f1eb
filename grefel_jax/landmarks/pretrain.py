r"""The landmark pretraining command of issue 10, kept as an alias of
`python -m grefel_jax.pretrain landmarks` (grefel_jax/pretrain/landmarks.py):

  python -m grefel_jax.landmarks.pretrain --config configs/landmarks_synthetic.py \
      --workdir runs/landmarks
"""

from __future__ import annotations

import runpy
import sys

if __name__ == "__main__":
    sys.argv.insert(1, "landmarks")  # the task argument of `python -m grefel_jax.pretrain`
    runpy.run_module("grefel_jax.pretrain", run_name="__main__", alter_sys=True)
