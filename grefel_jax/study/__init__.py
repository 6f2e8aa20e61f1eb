"""Robustness studies: grids of ordinary training runs over label noise or class imbalance.

  python -m grefel_jax.study noise --config configs/demo.py --workdir runs/study_noise \
      [--preset smoke|default|full] [--config.x=y ...]
  python -m grefel_jax.study imbalance --config configs/demo.py --workdir runs/study_lt

See `grefel_jax.study.__main__` for the flags and docs/robustness.md for the protocol. A
trained run's labels are ranked by `python -m grefel_jax.study.label_issues` (`ranking`).
"""
