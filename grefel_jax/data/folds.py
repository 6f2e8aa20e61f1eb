"""K-fold splits of the training records for out-of-fold scoring (`config.data.folds`).

A model cannot judge the labels it was trained on: it has memorised them. Confident learning
(Northcutt et al. 2021) therefore scores every record with a model that did not see it: the
training records are split into K folds, model k trains on every fold but k, and scores
fold k. `config.data.folds.num = K >= 2` with `holdout = k` makes an ordinary training run
model k (`source.train_record_indices` leaves fold k out); `num = 0` trains on every record.

The assignment is a pure function of (given labels, K, seed), the same on every host, in
every resumed run and in the scoring command, with no table to store. It is stratified by
the given label (the only label a user has): within each class the records are shuffled
and dealt round-robin, and each class starts dealing where the previous one stopped, so
every fold holds each class's records to within one and the fold sizes differ by at most one.
"""

from __future__ import annotations

import numpy as np


def assign_folds(labels: np.ndarray, num_folds: int, seed: int = 0) -> np.ndarray:
    """(N,) int32 fold in 0..K-1 of each of N records with (N,) given `labels`.

    Raises:
      ValueError: K < 2, or fewer records than folds (a fold would train on everything).
    """
    labels = np.asarray(labels, np.int64)
    num_folds = int(num_folds)
    if num_folds < 2:
        raise ValueError(f"config.data.folds.num={num_folds}: must be >= 2 (0 = no folds).")
    if len(labels) < num_folds:
        raise ValueError(
            f"config.data.folds.num={num_folds}: the training records ({len(labels)}) are "
            "fewer than the folds."
        )
    folds = np.empty(len(labels), np.int32)
    rng = np.random.default_rng([int(seed), 0xF01D])
    start = 0
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        folds[members] = (start + np.arange(len(members))) % num_folds
        start = (start + len(members)) % num_folds
    return folds


def check(folds_config) -> tuple[int, int, int]:
    """(num, holdout, seed) of `config.data.folds`; num 0 = no folds.

    Raises:
      ValueError: one line naming the key.
    """
    num = int(folds_config.num)
    holdout = int(folds_config.holdout)
    if num != 0 and num < 2:
        raise ValueError(f"config.data.folds.num={num}: must be 0 (no folds) or >= 2.")
    if num and not 0 <= holdout < num:
        raise ValueError(f"config.data.folds.holdout={holdout}: must be in 0..{num - 1}.")
    return num, holdout, int(folds_config.seed)
