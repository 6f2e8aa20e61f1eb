"""Label issues as users find them: the out-of-fold split (no record is scored by a model that
trained on it), the cleanlab adapter and the detection metrics on hand-made cases, the cleaned
label file and the command line's errors.

No test here compiles a model: training and the model's outputs are replaced by stand-ins
where the wiring is under test, so the file runs in seconds; the real training of a fold is an
ordinary training run (tests/test_train.py, tests/test_study.py).
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from cli_checks import one_error_line

from grefel_jax.data import folds, noise, pipeline, source
from grefel_jax.study import label_issues, ranking

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN = 140  # synthetic_faces/tiny_64


def _config(data_config, *, rate=0.3):
    from grefel_jax.configs import base

    config = base.get_base_config()
    config.data = copy.deepcopy(data_config)  # the fixture is shared by the session: not ours
    config.data.label_noise.rate = rate
    config.data.label_noise.seed = 4
    config.model.variant = "tiny"
    config.model.backbone.ir_units = (1, 1, 1)
    config.model.backbone.vit_depth = 1
    config.batch_size = config.eval_batch_size = 8
    config.init_from = "package:tiny64_identity,package:tiny64_landmarks"  # carried, not loaded
    return config


def _epoch_records(data_config, size: int) -> set[int]:
    """The records of the first `size` positions of the training stream (one epoch)."""
    records, _ = pipeline.train_records(data_config, global_batch_size=1, seed=0)
    return {int(records[i]["record_key"]) for i in range(size)}


def test_folds_are_stratified_balanced_and_seeded():
    labels = np.repeat(np.arange(4), [23, 7, 11, 2])
    assignment = folds.assign_folds(labels, 5, seed=3)
    sizes = np.bincount(assignment, minlength=5)
    assert sizes.sum() == len(labels) and sizes.max() - sizes.min() <= 1
    for c in range(4):  # each class spread over the folds to within one record
        per_fold = np.bincount(assignment[labels == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1
    np.testing.assert_array_equal(assignment, folds.assign_folds(labels, 5, seed=3))
    assert not np.array_equal(assignment, folds.assign_folds(labels, 5, seed=4))
    with pytest.raises(ValueError, match=r"folds.num=1: must be >= 2"):
        folds.assign_folds(labels, 1)
    with pytest.raises(ValueError, match=r"folds.num=50: the training records \(43\)"):
        folds.assign_folds(labels, 50)


def test_out_of_fold_split_never_scores_a_record_with_a_model_that_saw_it(
    tiny_faces_config, tmp_path, monkeypatch
):
    """Trains (stand-in) and scores 3 folds: every record's outputs come from the run whose
    training set, as the training stream reads it, does not hold that record; the runs get
    the config unchanged but for the fold (init_from included)."""
    from grefel_jax import train

    config = _config(tiny_faces_config)
    num_folds, seed = 3, 1
    records, assignment = label_issues.plan_folds(config, num_folds, seed, None)
    np.testing.assert_array_equal(records, np.arange(NUM_TRAIN))
    given = pipeline.training_labels(config.data).apply(
        records, source.split_labels(config.data, "train")
    )
    trained_on = {}
    for k in range(num_folds):
        fold_data = label_issues.fold_config(config, num_folds, k, seed).data
        indices = source.open_training_set(fold_data).indices
        np.testing.assert_array_equal(indices, records[assignment != k])
        # What the training stream of run k reads in one epoch: every other fold, not fold k.
        trained_on[k] = _epoch_records(fold_data, len(indices))
        assert trained_on[k] == set(records[assignment != k].tolist())
        for c in np.unique(given):  # stratified by the given (noisy) label
            share = np.bincount(assignment[given == c], minlength=num_folds)
            assert share.max() - share.min() <= 1

    calls = []

    def fake_training(run_config, workdir, evaluate_during_training=True):
        calls.append((run_config, Path(workdir).name, evaluate_during_training))
        return types.SimpleNamespace(step=10**9)

    clean = source.split_labels(config.data, "train")

    def fake_outputs(checkpoint, run_config, split, batch_size):
        # A model sure of the dataset's label, tagged with the run that produced it.
        probs = np.full((NUM_TRAIN, 7), 0.05)
        probs[np.arange(NUM_TRAIN), clean] = 0.7
        holdout = int(Path(checkpoint).name.removeprefix("fold"))
        return {
            "record_key": np.arange(NUM_TRAIN, dtype=np.int32),
            "label": clean,
            "probs": probs,
            "corrected_probs": probs,
            "scored_by": np.full(NUM_TRAIN, holdout),
        }

    monkeypatch.setattr(train, "train_and_evaluate", fake_training)
    monkeypatch.setattr(label_issues, "head_outputs", fake_outputs)
    out = tmp_path / "oof" / "label_issues.csv"
    summary = label_issues.find_label_issues_out_of_fold(
        config, tmp_path / "oof", num_folds, seed, 8, out, clean="relabel"
    )
    assert [(c.data.folds.num, c.data.folds.holdout, c.data.folds.seed) for c, _, _ in calls] == [
        (3, k, 1) for k in range(3)
    ]
    assert [name for _, name, _ in calls] == ["fold0", "fold1", "fold2"]
    assert all(c.init_from == config.init_from for c, _, _ in calls)
    assert all(c.model.to_dict() == config.model.to_dict() for c, _, _ in calls)

    saved = np.load(out.with_suffix(".npz"))
    np.testing.assert_array_equal(saved["fold"], assignment)
    np.testing.assert_array_equal(saved["given"], given)
    # The heart of the protocol: record i was scored by run fold[i], which never read it.
    outputs = label_issues.out_of_fold_outputs(
        config, [tmp_path / "oof" / f"fold{k}" for k in range(3)], records, assignment, 8
    )
    scored_by = outputs["scored_by"]
    np.testing.assert_array_equal(scored_by, assignment)
    for record, run in zip(records, scored_by):
        assert int(record) not in trained_on[int(run)]

    # Records aligned with their labels: a model sure of the dataset's labels finds every flip.
    flipped = given != clean
    assert summary["mode"] == "out_of_fold" and summary["num_records"] == NUM_TRAIN
    assert summary["num_flipped"] == int(flipped.sum()) > 0
    for kind in ("reliability", "cleanlab", "cleanlab_corrected"):
        assert summary[f"{kind}/auroc"] == 1.0, kind
    assert summary["reliability/precision_at_k"] == summary["reliability/recall_at_k"] == 1.0
    assert json.loads(out.with_suffix(".json").read_text())["folds"] == 3
    # Relabelling the suspects to the suggested label gives back the dataset's labels.
    relabelled = noise.read_label_file(summary["clean"]["file"], ("x",) * 7, NUM_TRAIN)
    np.testing.assert_array_equal(relabelled, clean)
    assert summary["clean"]["k"] == int(flipped.sum())


def test_cleanlab_adapter_on_a_hand_made_case():
    """10 records, 3 classes; records 3 and 7 carry a wrong given label (1). Record 5 is
    correctly labelled (2) but the model is unsure of it.

    Scores 1 - p[given]: 3 -> 0.95, 5 -> 0.75, 7 -> 0.70, the 7 others 0.20. AUROC: 0.95
    beats the 8 correct records, 0.70 beats 7 of them (not record 5): 15 / 16. Top k = 2:
    records 3 and 5, one flip: precision = recall = 1/2.

    Confident learning: the per-class thresholds (mean p_c over the records labelled c) are
    t_0 = 0.8, t_1 = (0.8 + 0.05 + 0.8 + 0.3) / 4 = 0.4875, t_2 = (0.8 + 0.25 + 0.8) / 3 =
    0.617. Record 3 (p_0 = 0.9 >= t_0) and record 7 (p_2 = 0.7 >= t_2) fall off the
    diagonal of the confident joint; record 5 reaches no threshold, so it is not counted:
    find_label_issues picks exactly {3, 7}.
    """
    clean = np.array([0, 1, 2, 0, 1, 2, 0, 2, 2, 0])
    probs = np.array(
        [
            [0.8, 0.1, 0.1],
            [0.1, 0.8, 0.1],
            [0.1, 0.1, 0.8],
            [0.9, 0.05, 0.05],
            [0.1, 0.8, 0.1],
            [0.3, 0.45, 0.25],
            [0.8, 0.1, 0.1],
            [0.0, 0.3, 0.7],
            [0.1, 0.1, 0.8],
            [0.8, 0.1, 0.1],
        ]
    )
    given = clean.copy()
    given[[3, 7]] = 1
    result = ranking.cleanlab_scores(probs, given)
    np.testing.assert_allclose(
        result["score"], [0.2, 0.2, 0.2, 0.95, 0.2, 0.75, 0.2, 0.7, 0.2, 0.2]
    )
    assert np.flatnonzero(result["issues"]).tolist() == [3, 7]
    flipped = given != clean
    metrics = ranking.detection_metrics(result["score"], flipped)
    assert metrics == {"auroc": 15 / 16, "precision_at_k": 0.5, "recall_at_k": 0.5}
    assert ranking.set_precision_recall(result["issues"], flipped) == (1.0, 1.0)


def test_detection_metrics_against_a_hand_computed_example():
    # Scores 0.9 0.8 0.7 0.6 0.5, positives at 0.9 and 0.7 (k = 2).
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    positive = np.array([1, 0, 1, 0, 0], bool)
    # AUROC: 0.9 beats 3 negatives, 0.7 beats 2 (0.6, 0.5): 5 of 6 pairs.
    assert ranking.auroc(scores, positive) == pytest.approx(5 / 6)
    # Top 2 = {0.9, 0.8}: one positive of 2 picked, one of 2 positives found.
    assert ranking.precision_at_k(scores, positive, 2) == 0.5
    assert ranking.recall_at_k(scores, positive, 2) == 0.5
    # Top 3 also holds 0.7: 2 of 3 picked are positive, both positives found.
    assert ranking.precision_at_k(scores, positive, 3) == pytest.approx(2 / 3)
    assert ranking.recall_at_k(scores, positive, 3) == 1.0
    found = np.array([1, 1, 0, 0, 0], bool)
    assert ranking.set_precision_recall(found, positive) == (0.5, 0.5)
    assert np.isnan(ranking.recall_at_k(scores, np.zeros(5, bool), 2))


def test_a_cleaned_label_file_round_trips_and_training_reads_it(tiny_faces_config, tmp_path):
    config = _config(tiny_faces_config)
    clean = source.split_labels(config.data, "train")
    given = pipeline.training_labels(config.data).apply(np.arange(NUM_TRAIN), clean)
    records = np.arange(0, NUM_TRAIN, 2)  # scored: the even records
    scores = np.linspace(1.0, 0.0, len(records))  # the first 5 scored records are the suspects
    suggested = (given[records] + 1) % 7
    path = tmp_path / "issues_drop.txt"
    written = label_issues.clean_label_file(path, given, records, scores, suggested, 5, "drop")
    names = source.dataset_info(config.data).class_names
    np.testing.assert_array_equal(noise.read_label_file(str(path), names, NUM_TRAIN), written)
    np.testing.assert_array_equal(np.flatnonzero(written == noise.DROPPED), [0, 2, 4, 6, 8])
    np.testing.assert_array_equal(
        np.delete(written, [0, 2, 4, 6, 8]), np.delete(given, [0, 2, 4, 6, 8])
    )

    # Training on it reads every record but the dropped ones, with their given labels.
    config.data.label_noise.file = str(path)
    training = source.open_training_set(config.data)
    np.testing.assert_array_equal(
        training.indices, np.delete(np.arange(NUM_TRAIN), [0, 2, 4, 6, 8])
    )
    assert _epoch_records(config.data, len(training.indices)) == set(training.indices.tolist())
    from grefel_jax.study import runner

    expected = float(np.mean(given[training.indices] != clean[training.indices]))
    assert runner.realised_flip_fraction(config.data) == expected

    relabel = tmp_path / "issues_relabel.txt"
    written = label_issues.clean_label_file(
        relabel, given, records, scores, suggested, 5, "relabel"
    )
    np.testing.assert_array_equal(noise.read_label_file(str(relabel), names, NUM_TRAIN), written)
    np.testing.assert_array_equal(written[[0, 2, 4, 6, 8]], suggested[:5])
    np.testing.assert_array_equal(
        np.delete(written, [0, 2, 4, 6, 8]), np.delete(given, [0, 2, 4, 6, 8])
    )
    # Any other negative label is still an error.
    path.write_text("0\n-2\n")
    with pytest.raises(
        ValueError, match=r"label -2 of record 1 is outside 0..6 \(or -1: dropped\)"
    ):
        noise.read_label_file(str(path), names, 2)


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "grefel_jax.study.label_issues", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_bad_folds_and_a_split_too_small_fail_in_one_line(tiny_faces_config, tmp_path):
    """Both fail while reading the flags or the labels: nothing is trained or written."""
    workdir = tmp_path / "w"
    data = [
        "--config",
        "configs/demo.py",
        f"--config.data.data_dir={tiny_faces_config.data_dir}",
        "--config.data.builder_config=tiny_64",
        "--config.init_from=",
        f"--workdir={workdir}",
    ]
    line = one_error_line(_run(*data, "--folds=1"))
    assert line.startswith("ERROR: --folds=1: must be >= 2") and "or 0 to score in sample" in line
    line = one_error_line(_run(*data, "--folds=71"))
    assert line.startswith("ERROR: --folds=71: the training split 'train' has 140 records")
    assert not workdir.exists()
    # The library call names the flags too (the command runs it before training).
    config = _config(tiny_faces_config)
    with pytest.raises(ValueError, match=r"--split=test: out-of-fold scoring ranks the training"):
        label_issues.plan_folds(config, 5, 0, "test")
    with pytest.raises(ValueError, match=r"--folds=-1: must be >= 2"):
        label_issues.plan_folds(config, -1, 0, None)
