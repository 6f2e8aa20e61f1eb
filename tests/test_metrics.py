"""Eval metrics against direct numpy computations."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from grefel_jax import metrics


def random_batch(rng, batch, num_classes):
    logits = rng.normal(size=(batch, num_classes)) * 2.0
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    corrected = 0.5 * probs + 0.5 * np.roll(probs, 1, axis=-1)
    labels = rng.integers(0, num_classes, size=batch)
    # Skew predictions towards the label so that accuracy is far from chance.
    probs[np.arange(batch), labels] += rng.uniform(0, 1.5, size=batch)
    probs /= probs.sum(-1, keepdims=True)
    return probs.astype(np.float32), corrected.astype(np.float32), labels.astype(np.int32)


def numpy_reference(probs, labels, num_classes, num_bins=15):
    """Textbook definitions, one example at a time where that is clearer."""
    pred = probs.argmax(-1)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for t, p in zip(labels, pred):
        confusion[t, p] += 1
    f1s, recalls = [], []
    for c in range(num_classes):
        tp = np.sum((pred == c) & (labels == c))
        fp = np.sum((pred == c) & (labels != c))
        fn = np.sum((pred != c) & (labels == c))
        if np.sum(labels == c):
            recalls.append(tp / np.sum(labels == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    conf = probs.max(-1)
    correct = pred == labels
    ece = 0.0
    edges = np.linspace(0, 1, num_bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (conf > lo) & (conf <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    nll = -np.mean(np.log(probs[np.arange(len(labels)), labels]))
    return dict(
        accuracy=correct.mean(),
        mean_class_accuracy=np.mean(recalls),
        macro_f1=np.mean(f1s),
        ece=ece,
        nll=nll,
        confusion=confusion,
    )


def test_metrics_match_numpy_and_ignore_padding():
    rng = np.random.default_rng(0)
    num_classes, sizes = 5, (37, 64, 29)
    all_probs, all_corr, all_labels = [], [], []
    totals = None
    for size in sizes:
        probs, corrected, labels = random_batch(rng, size, num_classes)
        all_probs.append(probs), all_corr.append(corrected), all_labels.append(labels)
        # Pad to 64 with garbage that the mask must hide.
        pad = 64 - size
        mask = np.arange(64) < size
        padded = [np.concatenate([x, np.repeat(x[:1], pad, axis=0)]) for x in (probs, corrected)]
        padded_labels = np.concatenate([labels, np.full(pad, 3, np.int32)])
        stats = metrics.batch_statistics(
            jnp.asarray(padded[0]),
            jnp.asarray(padded[1]),
            jnp.asarray(padded_labels),
            jnp.asarray(mask),
        )
        stats = {k: np.asarray(v) for k, v in stats.items()}
        totals = stats if totals is None else {k: totals[k] + stats[k] for k in totals}
    summary = metrics.summarize(totals, [f"c{i}" for i in range(num_classes)])
    labels = np.concatenate(all_labels)
    assert summary["num_examples"] == sum(sizes)
    for name, probs in (
        ("primary", np.concatenate(all_probs)),
        ("corrected", np.concatenate(all_corr)),
    ):
        ref = numpy_reference(probs, labels, num_classes)
        np.testing.assert_array_equal(summary[f"{name}/confusion_matrix"], ref["confusion"])
        for key in ("accuracy", "mean_class_accuracy", "macro_f1", "ece", "nll"):
            np.testing.assert_allclose(summary[f"{name}/{key}"], ref[key], rtol=1e-5, atol=1e-6)
        recall = summary[f"{name}/per_class_recall"]
        for c in range(num_classes):
            rows = labels == c
            np.testing.assert_allclose(recall[f"c{c}"], np.mean(probs[rows].argmax(-1) == c))
    assert summary["accuracy"] == summary["primary/accuracy"]
    assert summary["primary/accuracy"] > 0.5  # the skew worked: the test is not trivial


def test_absent_class_has_no_recall_and_is_left_out_of_means():
    probs = jnp.asarray(np.eye(3, dtype=np.float32)[[0, 0, 1]])
    labels = jnp.asarray([0, 1, 1])
    stats = metrics.batch_statistics(probs, probs, labels, jnp.ones(3, bool))
    summary = metrics.summarize(stats, ["a", "b", "c"])
    assert summary["primary/per_class_recall"]["c"] is None
    np.testing.assert_allclose(summary["primary/mean_class_accuracy"], (1.0 + 0.5) / 2)
    # F1: a = 2*1/(2+1+0) = 2/3, b = 2*1/(2+0+1) = 2/3, c absent from labels and predictions.
    np.testing.assert_allclose(summary["primary/macro_f1"], 2 / 3, rtol=1e-6)
    # One-hot predictions are fully confident: ECE = 1 - accuracy.
    np.testing.assert_allclose(summary["primary/ece"], 1 / 3, rtol=1e-6)


def test_confusion_matrix_figure_is_an_rgb_image(tmp_path):
    image = metrics.confusion_matrix_figure(np.array([[3, 1], [0, 4]]), ["x", "y"], title="t")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
    assert image.shape[0] > 100 and image.shape[1] > 100
    path = tmp_path / "cm.png"
    metrics.save_png(image, str(path))
    assert path.stat().st_size > 1000
