"""Robustness studies: noise sampler, label files, long-tailed subsets, the study grid (noise
kinds, initialisation), the runner's accuracy history, memorised fraction, outputs and resume,
the report's computed summary, the command line's errors, and the label-issue ranking."""

from __future__ import annotations

import concurrent.futures
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

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


def test_run_names_and_overrides_carry_the_noise_kind_and_the_initialisation():
    specs = grid.noise_grid(
        rates=(0.0, 0.3),
        kinds=("symmetric", "pairs"),
        heads=("grefel",),
        seeds=(0,),
        steps=600,
        init_from="package:a, package:b",
        train_records=800,
        eval_every=75,
    )
    # The clean run is one run for both kinds; the noisy ones are one per kind.
    assert [(s.noise, s.kind) for s in specs] == [
        (0.0, "symmetric"),
        (0.3, "symmetric"),
        (0.3, "pairs"),
    ]
    tag = grid.init_tag("package:a,package:b")
    assert tag.startswith("init") and len(tag) == 10
    assert [s.name for s in specs] == [
        f"grefel_noise00_seed0_steps600_train800_{tag}",
        f"grefel_noise30_seed0_steps600_train800_{tag}",
        f"grefel_pairs30_seed0_steps600_train800_{tag}",
    ]
    values = specs[2].overrides()
    assert values["data.label_noise.kind"] == "pairs"
    assert values["data.label_noise.rate"] == 0.3
    assert values["init_from"] == "package:a,package:b"  # normalised
    assert values["eval_every_steps"] == 75 and values["num_train_steps"] == 600
    assert values["model.head_preset"] == "grefel" and "model.head.num_anchors" not in values
    assert grid.HEADS["grefel_trust_full"]["loss.trust"] == "full"
    # Random weights are a different run from the pretrained ones; None keeps the config's.
    random = grid.RunSpec(head="poster", seed=1, steps=None, init_from="")
    assert random.name == "poster_noise00_seed1_random" and random.overrides()["init_from"] == ""
    assert "init_from" not in grid.RunSpec(head="poster", seed=1, steps=None).overrides()
    assert grid.init_tag(" package:a ,package:b") == tag != grid.init_tag("package:b,package:a")
    with pytest.raises(ValueError, match="--kinds: unknown kind 'uniform'"):
        grid.check_names(kinds=("uniform",))


def test_memorised_fraction_on_a_hand_made_case():
    clean = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    given = np.array([0, 1, 2, 1, 2, 0, 0, 1])  # records 3, 4, 5 flipped
    predicted = np.array([0, 1, 0, 1, 2, 2, 0, 0])  # fits the wrong label of 3 and 4, not 5
    scores = runner.memorisation(predicted, given, clean)
    assert scores["num_flipped"] == 3
    assert scores["memorised_fraction"] == pytest.approx(2 / 3)
    assert scores["train_accuracy_given"] == pytest.approx(5 / 8)  # 0, 1, 3, 4, 6
    assert scores["train_accuracy_clean"] == pytest.approx(4 / 8)  # 0, 1, 5, 6
    assert np.isnan(runner.memorisation(clean, clean, clean)["memorised_fraction"])


def _write_metrics(run_dir: Path, accuracies: dict[int, float], corrected_offset: float):
    """A metrics.jsonl as the training loop writes it: train lines and test evaluations."""
    run_dir.mkdir(parents=True)
    lines = []
    for step, acc in accuracies.items():
        lines.append({"step": step, "split": "train", "accuracy": 0.99, "loss": 0.1})
        record = {"step": step, "split": "test", "num_examples": 70.0}
        for prediction, value in (("primary", acc), ("corrected", acc + corrected_offset)):
            for metric in runner.METRICS:
                record[f"{prediction}/{metric}"] = value
        lines.append(record)
    (run_dir / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def _hand_row(run_dir: Path, head: str, noise: float, seed: int) -> dict:
    history = runner.read_history(run_dir, "test")
    row = {
        "study": "noise",
        "head": head,
        "num_anchors": 0 if head == "poster" else 10,
        "noise": noise,
        "kind": "symmetric" if noise else "",
        "label_file": "",
        "imbalance_ratio": 1.0,
        "balancing": "",
        "seed": seed,
        "steps": history[-1]["step"],
        "train_records": 100,
        "init_from": "",
        "eval_every": 100,
        "realised_flip_fraction": noise,
        "split": "test",
        "num_examples": 70,
        "history": history,
        **runner.history_summary(history),
    }
    for prediction in ("primary", "corrected"):
        row[f"train/{prediction}/memorised_fraction"] = 0.5 if noise else None
        row[f"train/{prediction}/train_accuracy_given"] = 0.8
    return row


def test_the_report_reads_peak_final_and_drop_from_the_history_and_computes_its_answer(
    tmp_path,
):
    # poster memorises at 30 %: peak 0.80 at step 200, then down to 0.70 (drop 0.10);
    # grefel peaks later and keeps it (drop 0.00 / 0.01): it shrinks the drop beyond the spread.
    curves = {
        ("poster", 0.0): [{100: 0.8, 200: 0.9, 300: 0.9}, {100: 0.8, 200: 0.88, 300: 0.89}],
        # seed 0 logs step 300 as 0.75, is interrupted and logs it again as 0.70 on resume
        ("poster", 0.3): [{100: 0.7, 200: 0.8, 300: 0.75}, {100: 0.72, 200: 0.81, 300: 0.70}],
        ("grefel", 0.0): [{100: 0.7, 200: 0.85, 300: 0.9}, {100: 0.7, 200: 0.86, 300: 0.9}],
        ("grefel", 0.3): [{100: 0.6, 200: 0.7, 300: 0.75}, {100: 0.6, 200: 0.76, 300: 0.75}],
    }
    rows = []
    for (head, rate), seeds in curves.items():
        for seed, accuracies in enumerate(seeds):
            run_dir = tmp_path / f"{head}_{rate}_{seed}"
            _write_metrics(run_dir, accuracies, corrected_offset=0.02 if head != "poster" else 0)
            if (head, rate, seed) == ("poster", 0.3, 0):  # the later line of a step counts
                again = {"step": 300, "split": "test", "num_examples": 70.0}
                again.update(
                    {f"{p}/{m}": 0.7 for p in ("primary", "corrected") for m in runner.METRICS}
                )
                with open(run_dir / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(again) + "\n")
            rows.append(_hand_row(run_dir, head, rate, seed))
    poster = rows[2]
    assert [h["step"] for h in poster["history"]] == [100, 200, 300]
    assert poster["primary/peak_accuracy"] == 0.8 and poster["primary/peak_step"] == 200
    assert poster["primary/final_accuracy"] == 0.7
    assert poster["primary/drop_accuracy"] == pytest.approx(0.1)
    grefel = rows[7]  # seed 1 at 30 %: peak 0.78 (corrected) at step 200, final 0.77
    assert grefel["corrected/peak_step"] == 200
    assert grefel["corrected/peak_accuracy"] == pytest.approx(0.78)
    assert grefel["corrected/final_accuracy"] == pytest.approx(0.77)

    verdict = report.drop_verdict(rows)
    assert verdict["compared"] == 1
    [(kind, level, head, shrink, spread)] = verdict["shrinks"]
    assert (kind, level, head) == ("symmetric", "30%", "grefel")
    # poster drops 0.10 and 0.11, grefel 0.00 and 0.01 -> shrink 0.10, spread 2 x 0.00707.
    assert shrink == pytest.approx(0.10) and spread == pytest.approx(2 * 0.01 / np.sqrt(2))
    assert verdict["memorisation"][0][:2] == ("symmetric", "30%") and verdict["memorisation"][0][4]
    paths = report.write_reports(rows, "noise", tmp_path)
    text = paths[1].read_text()
    assert (
        "drop shrunk by a GReFEL setting beyond the seed spread: YES: grefel at symmetric 30%"
        in text
    )
    assert "| poster (primary) | 0.000 ± 0.000 | 0.105 ± 0.007 |" in text  # the drop table
    assert paths[2].stat().st_size > 0
    # With a seed spread larger than the shrink, the answer is no.
    rows[6]["corrected/drop_accuracy"] = 0.3
    assert report.drop_verdict(rows)["shrinks"] == []
    assert "beyond the seed spread: NO (none of 1 head x level cells)" in "\n".join(
        report.summary_lines(rows)
    )


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
    config.init_from = ""  # the tiny model is not the packaged backbones' architecture
    return config


def test_a_two_run_study_records_its_history_resumes_and_ranks_label_issues(
    tiny_faces_config, tmp_path, monkeypatch
):
    """One of the suite's slow tests, by nature: a study is training runs, so this trains
    two (2 steps each, the test split evaluated at both), scores their training records,
    and ranks a run's labels. The second run's programs come from the persistent compilation
    cache; what is left is tracing, the steps and the evaluations."""
    from grefel_jax import loop
    from grefel_jax.study import label_issues

    config = _study_config(tiny_faces_config)
    specs = grid.noise_grid(
        rates=(0.0, 0.5),
        heads=("grefel_k1",),
        seeds=(0,),
        steps=2,
        init_from="",
        train_records=100,
        eval_every=1,
    )
    workdir = tmp_path / "study"
    rows = runner.run_study(config, specs, workdir, split="test")
    paths = report.write_reports(rows, "noise", workdir)
    assert [p.name for p in paths] == ["results.json", "results.md", "noise.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    saved = json.loads(paths[0].read_text())
    assert [r["noise"] for r in saved] == [0.0, 0.5]
    assert saved[0]["realised_flip_fraction"] == 0.0
    assert 0.3 < saved[1]["realised_flip_fraction"] < 0.7  # 100 records at r = 0.5
    assert {r["steps"] for r in saved} == {2} and {r["num_examples"] for r in saved} == {70}
    assert {r["init_from"] for r in saved} == {""} and {r["train_records"] for r in saved} == {100}
    for row in saved:
        # The test split at every evaluation: steps 1 and 2; peak and final from them.
        history = row["history"]
        assert [h["step"] for h in history] == [1, 2]
        for prediction in ("primary", "corrected"):
            values = [h[f"{prediction}/accuracy"] for h in history]
            assert row[f"{prediction}/peak_accuracy"] == max(values)
            assert row[f"{prediction}/final_accuracy"] == values[-1]
            assert row[f"{prediction}/accuracy"] == values[-1]
            assert row[f"{prediction}/peak_step"] == 1 + values.index(max(values))
        # Training records scored without augmentation: the 100 of the subset.
        assert row["train/num_records"] == 100
        assert row["train/num_flipped"] == round(row["realised_flip_fraction"] * 100)
    assert saved[0]["train/primary/memorised_fraction"] is None  # nothing flipped
    assert 0.0 <= saved[1]["train/primary/memorised_fraction"] <= 1.0
    assert "| grefel_k1 (corrected) |" in paths[1].read_text()
    assert runner.finished_rows(workdir, "noise", like=specs[0]) == rows
    assert runner.finished_rows(workdir, "imbalance") == []

    # A re-run trains nothing: every run is finished.
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(loop, "run", no_training)
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
    assert 0.0 <= summary["reliability/auroc"] <= 1.0
    assert out.with_suffix(".png").stat().st_size > 0


def test_bad_study_flags_stop_with_one_error_line_before_compiling():
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(repo)}
    base = [sys.executable, "-m", "grefel_jax.study", "noise", "--config", "configs/demo.py"]
    cases = {
        "--preset": ["--preset", "everything"],
        "--heads": ["--heads", "poster,grefel_k7"],
        "--kinds": ["--kinds", "uniform"],
        "--init_from": ["--init_from", "package:tiny64_nothing"],
    }

    def run(args):
        return subprocess.run(
            base + ["--workdir", "/nonexistent/study"] + args,
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(cases, pool.map(run, cases.values())))
    for flag, result in results.items():
        assert result.returncode == 2, (flag, result.stderr[-500:])
        errors = [line for line in result.stderr.splitlines() if line.startswith("ERROR:")]
        assert len(errors) == 1 and errors[0].startswith(f"ERROR: {flag}"), (flag, errors)
    assert not Path("/nonexistent/study").exists()
