"""Face verification the way LFW reports it (docs/pretraining.md, "Verification protocol").

* `make_pairs`: balanced same / different identity pairs of a held-out split, in 10 folds
  whose identities are disjoint (LFW's View 2: people in different folds are mutually
  exclusive), seeded, without repeats.
* `verification_accuracy`: for each fold, the cosine threshold that maximises accuracy on the
  other nine folds is applied to it; mean ± std of the ten fold accuracies.
* `tar_at_far`: the true accept rate at the threshold where at most a fraction `far` of the
  different-identity pairs are accepted.

Pure numpy; scores are cosine similarities of L2-normalised embeddings (higher = same).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

NUM_FOLDS = 10


@dataclasses.dataclass(frozen=True)
class Pairs:
    """P pairs of examples of one split.

    Attributes:
      first, second: (P,) int64 example indices (positions in the split).
      same: (P,) bool, True for same-identity pairs.
      fold: (P,) int64 fold of each pair in [0, NUM_FOLDS).
    """

    first: np.ndarray
    second: np.ndarray
    same: np.ndarray
    fold: np.ndarray

    def __len__(self) -> int:
        return len(self.same)


def make_pairs(
    labels: np.ndarray, *, pairs_per_fold: int = 300, seed: int = 0, folds: int = NUM_FOLDS
) -> Pairs:
    """Balanced pairs in identity-disjoint folds.

    Identities (those with 2 or more examples; the others can only appear in different
    pairs and are dropped) are shuffled and dealt round-robin into `folds` folds. Each fold
    gets `pairs_per_fold` same pairs (an identity drawn uniformly, two distinct examples of it)
    and as many different pairs (two distinct identities of the fold, one example of each),
    all distinct; a fold with too few candidates gets all of its distinct pairs, and both
    kinds are cut to the smaller count so every fold stays balanced.

    Args:
      labels: (M,) int identity label of each example of the split.
      pairs_per_fold: same pairs (and different pairs) per fold; LFW uses 300.
      seed: the draw.
      folds: number of folds (10).

    Returns:
      Pairs. Raises ValueError when fewer than 2 identities per fold have 2 examples.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    identities, counts = np.unique(labels, return_counts=True)
    identities = identities[counts >= 2]
    if len(identities) < 2 * folds:
        raise ValueError(
            f"Verification needs at least {2 * folds} identities with 2 or more images "
            f"({folds} folds of 2); the split has {len(identities)}."
        )
    members = {int(i): np.flatnonzero(labels == i) for i in identities}
    shuffled = rng.permutation(identities)
    first, second, same, fold_of = [], [], [], []
    for fold in range(folds):
        ids = shuffled[fold::folds]
        positives = _distinct_pairs(
            pairs_per_fold, functools.partial(_same_pair, rng, ids, members)
        )
        negatives = _distinct_pairs(
            pairs_per_fold, functools.partial(_different_pair, rng, ids, members)
        )
        n = min(len(positives), len(negatives))
        for pairs, is_same in ((positives[:n], True), (negatives[:n], False)):
            first += [a for a, _ in pairs]
            second += [b for _, b in pairs]
            same += [is_same] * n
            fold_of += [fold] * n
    return Pairs(
        first=np.asarray(first, np.int64),
        second=np.asarray(second, np.int64),
        same=np.asarray(same, bool),
        fold=np.asarray(fold_of, np.int64),
    )


def _same_pair(rng, ids, members) -> tuple[int, int]:
    pool = members[int(ids[rng.integers(len(ids))])]
    a, b = rng.choice(len(pool), 2, replace=False)
    return int(pool[a]), int(pool[b])


def _different_pair(rng, ids, members) -> tuple[int, int]:
    i, j = rng.choice(len(ids), 2, replace=False)
    a, b = members[int(ids[i])], members[int(ids[j])]
    return int(a[rng.integers(len(a))]), int(b[rng.integers(len(b))])


def _distinct_pairs(count: int, draw) -> list[tuple[int, int]]:
    """Up to `count` distinct unordered pairs from `draw()`; stops after many repeats."""
    seen: set[tuple[int, int]] = set()
    pairs = []
    misses = 0
    while len(pairs) < count and misses < 20 * count:
        a, b = draw()
        key = (min(a, b), max(a, b))
        if key in seen:
            misses += 1
            continue
        seen.add(key)
        pairs.append((a, b))
    return pairs


def pair_scores(embeddings: np.ndarray, pairs: Pairs) -> np.ndarray:
    """(P,) cosine similarity of each pair; `embeddings (M, E)` (normalised here)."""
    e = np.asarray(embeddings, np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    return np.sum(e[pairs.first] * e[pairs.second], axis=1)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """The threshold t maximising the accuracy of `score > t` (ties: the smallest t).

    Candidates are the midpoints between consecutive distinct scores, plus one below all.
    """
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2.0])
    accuracy = [np.mean((scores > t) == same) for t in candidates]
    return float(candidates[int(np.argmax(accuracy))])


def verification_accuracy(scores: np.ndarray, pairs: Pairs) -> dict:
    """10-fold accuracy: each fold judged with the best threshold of the other folds.

    Returns:
      dict: `accuracy` (mean of the fold accuracies), `accuracy_std`, `fold_accuracies`
      (list), `thresholds` (list, one per fold).
    """
    scores = np.asarray(scores, np.float64)
    accuracies, thresholds = [], []
    for fold in np.unique(pairs.fold):
        test = pairs.fold == fold
        t = best_threshold(scores[~test], pairs.same[~test])
        thresholds.append(t)
        accuracies.append(float(np.mean((scores[test] > t) == pairs.same[test])))
    return {
        "accuracy": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "fold_accuracies": accuracies,
        "thresholds": thresholds,
    }


def tar_at_far(scores: np.ndarray, same: np.ndarray, far: float = 1e-3) -> dict:
    """True accept rate at the strictest false accept rate <= `far` that the pairs resolve.

    The threshold is the (k+1)-th highest different-pair score with k = floor(far * D) (D
    different pairs): accepting `score > threshold` admits at most k different pairs.

    Returns:
      dict: `tar`, `far` (the false accept rate reached), `threshold`, `num_different`.
    """
    scores = np.asarray(scores, np.float64)
    same = np.asarray(same, bool)
    negatives = np.sort(scores[~same])[::-1]
    if len(negatives) == 0 or not same.any():
        raise ValueError("tar_at_far needs both same and different pairs.")
    k = int(np.floor(far * len(negatives)))
    threshold = float(negatives[min(k, len(negatives) - 1)])
    return {
        "tar": float(np.mean(scores[same] > threshold)),
        "far": float(np.mean(negatives > threshold)),
        "threshold": threshold,
        "num_different": int(len(negatives)),
    }
