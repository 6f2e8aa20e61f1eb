"""Robustness studies: noise sampler, label files, long-tailed subsets, the study runner's
outputs and resume, and the label-issue ranking."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from grefel_jax.data import imbalance, noise, pipeline
from grefel_jax.study import grid, ranking, report, runner


def test_symmetric_flips_hit_the_rate_and_never_keep_the_class():
    n, num_classes = 30_000, 7
    clean = np.arange(n) % num_classes
    for rate in (0.1, 0.3):
        noisy = noise.LabelNoise(num_classes, rate, "symmetric", seed=3).apply(np.arange(n), clean)
        assert abs((noisy != clean).mean() - rate) < 0.01
    # At rate 1 every label is drawn from the *other* classes, uniformly.
    noisy = noise.LabelNoise(num_classes, 1.0, "symmetric", seed=3).apply(np.arange(n), clean)
    assert np.all(noisy != clean)
    offsets = np.bincount((noisy - clean) % num_classes, minlength=num_classes)
    assert offsets[0] == 0 and offsets[1:].min() > 0.9 * n / (num_classes - 1)


def test_label_file_by_index_or_name_and_its_errors(tmp_path):
    names = ("surprise", "fear", "happiness")
    path = tmp_path / "labels.txt"
    path.write_text("0\nhappiness\n\nFear\n")
    np.testing.assert_array_equal(noise.read_label_file(str(path), names, 3), [0, 2, 1])
    given = noise.GivenLabels(noise.read_label_file(str(path), names, 3))
    assert given(1, 0) == 2  # the file decides, whatever the clean label
    with pytest.raises(ValueError, match=r"labels.txt: 3 labels, but the training split has 4"):
        noise.read_label_file(str(path), names, 4)
    path.write_text("0\nangry\n")
    with pytest.raises(ValueError, match=r"line 2: 'angry' is neither a class index"):
        noise.read_label_file(str(path), names, 2)
    path.write_text("0\n5\n")
    with pytest.raises(ValueError, match=r"label 5 of record 1 is outside 0..2"):
        noise.read_label_file(str(path), names, 2)
    with pytest.raises(ValueError, match=r"missing.txt: no such file"):
        noise.read_label_file(str(tmp_path / "missing.txt"), names, 2)


def test_long_tail_profile_and_the_training_order_reads_only_the_subset():
    counts = np.array([100, 120, 100, 100, 100])
    # n_c = 100 * 50 ** (-c / 4): 100, 37.6, 14.1, 5.3, 2.0
    np.testing.assert_array_equal(imbalance.long_tail_counts(counts, 50.0), [100, 37, 14, 5, 2])
    np.testing.assert_array_equal(imbalance.long_tail_counts(counts, 1.0), [100] * 5)
    with pytest.raises(ValueError, match="ratio=0.5"):
        imbalance.long_tail_counts(counts, 0.5)
    labels = np.repeat(np.arange(5), counts)
    keep = imbalance.long_tail_indices(labels, 50.0, seed=1)
    np.testing.assert_array_equal(np.bincount(labels[keep]), [100, 37, 14, 5, 2])
    np.testing.assert_array_equal(keep, imbalance.long_tail_indices(labels, 50.0, seed=1))
    order = pipeline.TrainOrder(len(labels), seed=0, keep=keep)
    epoch = [order.record(i) for i in range(len(keep))]
    assert sorted(epoch) == list(keep)  # one epoch = each kept record once
    balanced = pipeline.TrainOrder(len(labels), 0, labels, "inverse_frequency", keep=keep)
    drawn = labels[[balanced.record(i) for i in range(5000)]]
    assert set(np.unique([balanced.record(i) for i in range(5000)])) <= set(keep)
    assert np.bincount(drawn).min() > 800  # classes drawn uniformly despite the tail


def test_ranking_puts_a_deliberately_flipped_record_first():
    # Five records the model is sure about; record 3's given label was flipped 2 -> 0.
    probs = np.full((5, 3), 0.05)
    truth = np.array([0, 1, 2, 2, 1])
    probs[np.arange(5), truth] = 0.9
    given = truth.copy()
    given[3] = 0
    outputs = {"probs": probs, "corrected_probs": probs, "anchor_probs": probs}
    scores = ranking.given_label_scores(outputs, given)
    assert int(np.argmax(scores["reliability"])) == 3
    flipped = given != truth
    assert ranking.auroc(scores["reliability"], flipped) == 1.0
    assert ranking.precision_at_k(scores["reliability"], flipped, 1) == 1.0
    # Hand-computed AUROC with a tie: positives {0.9, 0.5}, negatives {0.5, 0.1}:
    # pairs (0.9 > 0.5), (0.9 > 0.1), (0.5 = 0.5 -> 1/2), (0.5 > 0.1) -> 3.5 / 4.
    assert ranking.auroc(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, 0, 0], bool)) == 0.875


def _study_config(data_config):
    from grefel_jax.configs import base

    config = base.get_base_config()
    config.data = data_config
    config.model.variant = "tiny"
    config.model.backbone.image_size = 32
    config.model.backbone.ir_units = (1, 1, 1)  # a backbone that compiles in seconds
    config.model.backbone.vit_depth = 1
    config.optim.sam = False
    config.batch_size = config.eval_batch_size = 8
    config.log_every_steps = 1
    config.async_checkpoints = False
    return config


def test_a_two_run_study_writes_its_reports_resumes_and_ranks_label_issues(
    tiny_faces_config, tmp_path, monkeypatch
):
    """One of the suite's slow tests, by nature: a study is training runs, so this trains
    two (2 steps each), evaluates them and ranks a run's labels. The second run's programs
    come from the persistent compilation cache; what is left is tracing, the steps and the
    evaluations (about a minute on 2 cores under load)."""
    from grefel_jax import train
    from grefel_jax.study import label_issues

    config = _study_config(tiny_faces_config)
    specs = grid.noise_grid(rates=(0.0, 0.5), heads=("grefel_k1",), seeds=(0,), steps=2)
    workdir = tmp_path / "study"
    rows = runner.run_study(config, specs, workdir, split="test")
    paths = report.write_reports(rows, "noise", workdir)
    assert [p.name for p in paths] == ["results.json", "results.md", "noise.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    saved = json.loads(paths[0].read_text())
    assert [r["noise"] for r in saved] == [0.0, 0.5]
    assert saved[0]["realised_flip_fraction"] == 0.0
    assert 0.3 < saved[1]["realised_flip_fraction"] < 0.7  # 140 records at r = 0.5
    assert {r["steps"] for r in saved} == {2} and {r["num_examples"] for r in saved} == {70}
    assert "| grefel_k1 |" in paths[1].read_text()

    # A re-run trains nothing: every run is finished.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(train, "train_and_evaluate", no_training)
    assert runner.run_study(config, specs, workdir, split="test") == rows

    # Label issues of the noisy run on its own training split.
    noisy_run = workdir / specs[1].name
    run_config = runner.apply_overrides(config, specs[1].overrides())
    out = tmp_path / "issues.csv"
    summary = label_issues.find_label_issues(str(noisy_run), run_config, "train", 8, out)
    with open(out) as f:
        ranked = list(csv.DictReader(f))
    assert len(ranked) == summary["num_records"] == 140
    scores = [float(r["score"]) for r in ranked]
    assert scores == sorted(scores, reverse=True)
    flips = sum(r["given_label"] != r["dataset_label"] for r in ranked)
    assert summary["num_flipped"] == flips == round(saved[1]["realised_flip_fraction"] * 140)
    assert 0.0 <= summary["reliability/auroc"] <= 1.0
    assert out.with_suffix(".png").stat().st_size > 0
