"""Evaluation metrics: sufficient statistics on device, summaries on host, confusion PNG.

`batch_statistics` runs inside the jitted eval step and returns sums only (confusion
matrices, NLL sum, calibration bins), so summing them over batches gives the statistics of
the whole split on any number of hosts, and padded examples (mask False) count nowhere.
`summarize` turns the summed statistics into the reported numbers.

For each of the two predictions (`primary` = argmax of `probs`, `corrected` = argmax of
`corrected_probs`):

* accuracy, mean class accuracy (mean recall over classes present in the labels), per-class
  recall, macro-F1 (mean F1 over classes present in labels or predictions, as scikit-learn);
* NLL = mean -log p[y] of that distribution;
* ECE with 15 equal-width confidence bins: sum_b |acc_b - conf_b| * n_b / N, where the
  confidence is the max probability and the bins are (k/15, (k+1)/15].
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PREDICTIONS = ("primary", "corrected")
NUM_ECE_BINS = 15


def batch_statistics(
    probs: jax.Array,
    corrected_probs: jax.Array,
    labels: jax.Array,
    mask: jax.Array,
    *,
    num_bins: int = NUM_ECE_BINS,
) -> dict[str, jax.Array]:
    """Sums over one batch; add them up over batches.

    Args:
      probs / corrected_probs: (B, C) float probabilities.
      labels: (B,) int32 true classes.
      mask: (B,) bool, False for padding.

    Returns:
      `count` () int32, and for each prediction `p`: `p/confusion` (C, C) int32 (rows = true
      class, columns = predicted), `p/nll_sum` () float32, `p/bin_count` (num_bins,) int32,
      `p/bin_confidence` and `p/bin_correct` (num_bins,) float32.
    """
    num_classes = probs.shape[-1]
    valid = mask.astype(jnp.int32)
    weight = mask.astype(jnp.float32)
    true_onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.int32) * valid[:, None]
    stats: dict[str, jax.Array] = {"count": jnp.sum(valid)}
    for name, p in zip(PREDICTIONS, (probs, corrected_probs)):
        p = p.astype(jnp.float32)
        pred = jnp.argmax(p, axis=-1)
        pred_onehot = jax.nn.one_hot(pred, num_classes, dtype=jnp.int32)
        stats[f"{name}/confusion"] = jnp.einsum("bi,bj->ij", true_onehot, pred_onehot)
        p_true = jnp.take_along_axis(p, labels[:, None], axis=-1)[:, 0]
        stats[f"{name}/nll_sum"] = jnp.sum(-jnp.log(jnp.maximum(p_true, 1e-12)) * weight)
        confidence = jnp.max(p, axis=-1)
        correct = (pred == labels).astype(jnp.float32)
        # Bin k holds confidences in (k/n, (k+1)/n]; confidence 0 goes to bin 0.
        bins = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
        bin_onehot = jax.nn.one_hot(bins, num_bins, dtype=jnp.float32) * weight[:, None]
        stats[f"{name}/bin_count"] = jnp.sum(bin_onehot, axis=0).astype(jnp.int32)
        stats[f"{name}/bin_confidence"] = jnp.sum(bin_onehot * confidence[:, None], axis=0)
        stats[f"{name}/bin_correct"] = jnp.sum(bin_onehot * correct[:, None], axis=0)
    return stats


def summarize(stats: Mapping[str, Any], class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Reported metrics from summed statistics (host numpy).

    Returns a JSON-ready dict: `num_examples`, and for each prediction `p`: `p/accuracy`,
    `p/mean_class_accuracy`, `p/macro_f1`, `p/nll`, `p/ece`, `p/per_class_recall`
    (class name -> recall or None when the class has no example), `p/confusion_matrix`
    (list of lists). `accuracy` is an alias of `primary/accuracy` (the keep-best metric).
    """
    stats = {k: np.asarray(v) for k, v in stats.items()}
    n = int(stats["count"])
    out: dict[str, Any] = {"num_examples": n}
    for name in PREDICTIONS:
        conf = stats[f"{name}/confusion"].astype(np.int64)
        num_classes = conf.shape[0]
        names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        true_count = conf.sum(axis=1)
        pred_count = conf.sum(axis=0)
        tp = np.diag(conf)
        with np.errstate(divide="ignore", invalid="ignore"):
            recall = np.where(true_count > 0, tp / np.maximum(true_count, 1), np.nan)
            f1_den = true_count + pred_count
            f1 = np.where(f1_den > 0, 2 * tp / np.maximum(f1_den, 1), np.nan)
        present = true_count > 0
        gap = np.abs(stats[f"{name}/bin_correct"] - stats[f"{name}/bin_confidence"])
        out[f"{name}/accuracy"] = float(tp.sum() / n) if n else float("nan")
        out[f"{name}/mean_class_accuracy"] = (
            float(np.mean(recall[present])) if present.any() else float("nan")
        )
        out[f"{name}/macro_f1"] = float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")
        out[f"{name}/nll"] = float(stats[f"{name}/nll_sum"] / n) if n else float("nan")
        out[f"{name}/ece"] = float(gap.sum() / n) if n else float("nan")
        out[f"{name}/per_class_recall"] = {
            c: (None if np.isnan(r) else float(r)) for c, r in zip(names, recall)
        }
        out[f"{name}/confusion_matrix"] = conf.tolist()
    out["accuracy"] = out["primary/accuracy"]
    return out


def scalar_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """The float entries of a summary (for TensorBoard and keep-best)."""
    return {k: float(v) for k, v in summary.items() if isinstance(v, (int, float))}


def confusion_matrix_figure(
    confusion: np.ndarray, class_names: Sequence[str], title: str = ""
) -> np.ndarray:
    """Row-normalised confusion matrix with counts, rendered to an RGB uint8 (H, W, 3) image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    confusion = np.asarray(confusion, dtype=np.int64)
    rows = confusion.sum(axis=1, keepdims=True)
    normalized = confusion / np.maximum(rows, 1)
    size = 1.2 + 0.6 * len(class_names)
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=100)
    im = ax.imshow(normalized, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            color = "white" if normalized[i, j] > 0.5 else "black"
            ax.text(j, i, f"{confusion[i, j]}", ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    from PIL import Image

    return np.asarray(Image.open(buffer).convert("RGB"))


def save_png(image: np.ndarray, path: str) -> None:
    """Writes an (H, W, 3) uint8 image as PNG."""
    from PIL import Image

    Image.fromarray(image).save(path)
