"""Long-tailed training splits for class-imbalance experiments (`config.data.imbalance`).

The exponential profile of the long-tailed recognition literature (CIFAR-LT, Cui et al. 2019):
class c, ranked by its index, keeps `n_c = n_max * ratio ** (-c / (C - 1))` of its records,
n_max being the smallest class count, so class 0 keeps n_max and class C - 1 keeps
`n_max / ratio`. Which records a class keeps
is a seeded draw, the same on every host and in every resumed run (docs/robustness.md).
"""

from __future__ import annotations

import numpy as np

PROFILES = ("exponential",)


def long_tail_counts(counts: np.ndarray, ratio: float, profile: str = "exponential") -> np.ndarray:
    """(C,) int64 records kept per class from (C,) `counts` at imbalance `ratio` >= 1.

    `n_max` is the smallest class count (so every class can supply its share); ratio 1 keeps
    `n_max` of every class. Every present class keeps at least one record.
    """
    if profile not in PROFILES:
        raise ValueError(f"config.data.imbalance.profile={profile!r}: expected one of {PROFILES}.")
    if ratio < 1:
        raise ValueError(f"config.data.imbalance.ratio={ratio}: must be >= 1 (1 = balanced).")
    counts = np.asarray(counts, np.int64)
    num_classes = len(counts)
    present = counts > 0
    n_max = int(counts[present].min())
    exponents = np.arange(num_classes) / max(1, num_classes - 1)
    kept = np.floor(n_max * float(ratio) ** (-exponents) + 1e-9).astype(np.int64)
    return np.where(present, np.clip(kept, 1, counts), 0)


def long_tail_indices(
    labels: np.ndarray, ratio: float, *, profile: str = "exponential", seed: int = 0
) -> np.ndarray:
    """Sorted (M,) int64 record indices of a long-tailed subset of a split with (N,) `labels`."""
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=int(labels.max()) + 1 if len(labels) else 0)
    kept = long_tail_counts(counts, ratio, profile)
    rng = np.random.default_rng([int(seed), 0x1B])
    chosen = [rng.permutation(np.flatnonzero(labels == c))[: kept[c]] for c in range(len(counts))]
    return np.sort(np.concatenate(chosen)).astype(np.int64)
