"""Label-issue scores and how well a ranking finds flipped labels (AUROC, precision at k).

Scores are "how strongly the model disagrees with the given label", higher = more suspect:

* `reliability`: 1 - q_corr[y], the reliability-balanced distribution's probability of the
  given label y. q_corr mixes the primary distribution with the anchor-distance and attention
  corrections by their confidences (docs/reliability.md), so a label that the primary head has
  fitted but the embedding's nearest anchors contradict still scores high. The chosen score.
* `anchor`: 1 - g[y], the anchor-distance (geometric) correction alone (reported beside it).
* `baseline`: 1 - p[y], the primary prediction's probability of the given label: the
  self-confidence score of confident learning (Northcutt et al. 2021).
"""

from __future__ import annotations

import numpy as np

SCORES = ("reliability", "anchor", "baseline")


def given_label_scores(outputs: dict[str, np.ndarray], given: np.ndarray) -> dict[str, np.ndarray]:
    """(N,) float64 scores per kind from head outputs (N, C) and (N,) given labels.

    `outputs` holds `probs` and `corrected_probs`, and `anchor_probs` for the GReFEL head (a
    head without anchors scores `anchor` like `reliability`).
    """
    rows = np.arange(len(given))
    pick = lambda probs: 1.0 - np.asarray(probs, np.float64)[rows, given]  # noqa: E731
    anchor = outputs.get("anchor_probs", outputs["corrected_probs"])
    return {
        "reliability": pick(outputs["corrected_probs"]),
        "anchor": pick(anchor),
        "baseline": pick(outputs["probs"]),
    }


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for the (N,) bool `positive` (ties count 1/2).

    The Mann-Whitney form: the probability that a random positive outscores a random
    negative. NaN when either class is empty.
    """
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    num_pos, num_neg = int(positive.sum()), int((~positive).sum())
    if num_pos == 0 or num_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties (1-based).
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    rank_sum = ranks[positive].sum()
    return float((rank_sum - num_pos * (num_pos + 1) / 2.0) / (num_pos * num_neg))


def precision_at_k(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Fraction of the k highest scores that are positive (k = number of flips: the
    precision a user gets by relabelling exactly as many records as are wrong)."""
    if k <= 0:
        return float("nan")
    top = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")[:k]
    return float(np.asarray(positive, bool)[top].mean())


def recall_at_k(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    """Fraction of the positives among the k highest scores (NaN without positives). At
    k = number of positives it equals precision_at_k: both are (true positives in the top k)
    / k."""
    positive = np.asarray(positive, bool)
    if k <= 0 or not positive.any():
        return float("nan")
    top = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")[:k]
    return float(positive[top].sum() / positive.sum())


def set_precision_recall(found: np.ndarray, positive: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of the (N,) bool set `found` against the (N,) bool `positive`
    (NaN where the denominator is empty)."""
    found, positive = np.asarray(found, bool), np.asarray(positive, bool)
    hits = float((found & positive).sum())
    precision = hits / found.sum() if found.any() else float("nan")
    recall = hits / positive.sum() if positive.any() else float("nan")
    return float(precision), float(recall)


def detection_metrics(scores: np.ndarray, positive: np.ndarray) -> dict[str, float]:
    """AUROC, precision_at_k and recall_at_k of (N,) `scores` for the (N,) bool `positive`,
    k = the number of positives (the number of flipped labels)."""
    k = int(np.asarray(positive, bool).sum())
    return {
        "auroc": auroc(scores, positive),
        "precision_at_k": precision_at_k(scores, positive, k),
        "recall_at_k": recall_at_k(scores, positive, k),
    }


def cleanlab_scores(pred_probs: np.ndarray, given: np.ndarray) -> dict[str, np.ndarray]:
    """cleanlab's view of the same out-of-fold probabilities (cleanlab 2.x, not re-implemented).

    Args:
      pred_probs: (N, C) out-of-fold probabilities (rows sum to 1).
      given: (N,) int given labels.

    Returns:
      `score` (N,) float64 = 1 - `cleanlab.rank.get_label_quality_scores` (its default
      self-confidence quality, so higher = more suspect, as the scores above), and `issues`
      (N,) bool = `cleanlab.filter.find_label_issues` (confident learning's own pick,
      `prune_by_noise_rate`: it also estimates how many labels are wrong).
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    pred_probs = np.asarray(pred_probs, np.float64)
    # float32 softmax rows can miss 1 by more than cleanlab's check allows.
    pred_probs = pred_probs / pred_probs.sum(axis=1, keepdims=True)
    given = np.asarray(given, np.int64)
    quality = get_label_quality_scores(given, pred_probs)
    # n_jobs=1: cleanlab would otherwise start a process per core (shared small machines).
    issues = find_label_issues(given, pred_probs, n_jobs=1)
    return {"score": 1.0 - np.asarray(quality, np.float64), "issues": np.asarray(issues, bool)}
