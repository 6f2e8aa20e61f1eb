"""Runs a study's grid: one ordinary training run per spec, each in its own sub-workdir.

A run is finished when its sub-workdir holds `study_row.json`; a re-run study skips finished
runs and resumes an interrupted one from its last checkpoint (the training loop's own
resume). Runs share one process, so the persistent compilation cache (`W/jax_cache`) makes
every run after the first of a head skip most of its compilation.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from grefel_jax.study.grid import RunSpec

ROW_FILE = "study_row.json"
METRICS = ("accuracy", "mean_class_accuracy", "macro_f1", "ece")


class StudyInterrupted(Exception):
    """A run stopped before its last step (SIGTERM / preemption); re-running resumes it."""


def apply_overrides(config, overrides: dict[str, Any]):
    """A copy of `config` with dotted keys set (`'model.head.num_anchors': 10`)."""
    config = copy.deepcopy(config)
    for key, value in overrides.items():
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = node[part]
        if leaf not in node:
            raise ValueError(f"study override {key!r}: the config has no such key.")
        node[leaf] = value
    return config


def realised_flip_fraction(data_config) -> float:
    """Fraction of the training records (of the subset trained on) whose label differs from
    the clean one under the run's `config.data.label_noise`."""
    from grefel_jax.data import pipeline, source

    data = source.open_training_set(data_config)
    labels = source.split_labels(data_config, data.split)
    indices = np.arange(len(labels)) if data.indices is None else data.indices
    given = pipeline.training_labels(data_config, data.info).apply(indices, labels[indices])
    return float(np.mean(given != labels[indices]))


def _row(
    spec: RunSpec, config, num_classes: int, summary: dict[str, Any], flips: float, seconds: float
) -> dict:
    from grefel_jax import settings

    model_config = settings.model_config(config, num_classes)
    row = {
        "run": spec.name,
        "head": spec.head,
        "num_anchors": int(model_config.head.num_anchors)
        if model_config.head.kind == "grefel"
        else 0,
        "noise": float(spec.noise),
        "label_file": spec.label_file,
        "imbalance_ratio": float(spec.ratio),
        "balancing": spec.balancing,
        "seed": int(spec.seed),
        "steps": int(summary["checkpoint_step"]),
        "realised_flip_fraction": flips,
        "split": summary["split"],
        "num_examples": int(summary["num_examples"]),
        "seconds": round(seconds, 1),
    }
    for prediction in ("primary", "corrected"):
        for metric in METRICS:
            row[f"{prediction}/{metric}"] = float(summary[f"{prediction}/{metric}"])
    return row


def run_one(base_config, spec: RunSpec, run_dir: Path, *, split: str) -> dict:
    """Trains and evaluates one run into `run_dir`; returns its results row.

    Raises:
      StudyInterrupted: the run stopped early (its checkpoint resumes it).
    """
    import jax

    from grefel_jax import evaluate, sharding, train

    config = apply_overrides(base_config, spec.overrides())
    # One evaluation, at the end: no checkpoint is selected on any split, the number is the
    # last step's, on the clean `split` (labels are noisy only in the training stream).
    config.final_eval_splits = ()
    config.keep_checkpoints = 1
    flips = realised_flip_fraction(config.data)
    logging.info("study run %s: realised label-flip fraction %.4f.", spec.name, flips)
    start = time.perf_counter()
    state = train.train_and_evaluate(config, str(run_dir), evaluate_during_training=False)
    from grefel_jax import settings
    from grefel_jax.data import source

    data = source.open_training_set(config.data)
    total = settings.run_length(config, data.size).total_steps
    if int(state.step) < total:
        raise StudyInterrupted(f"{spec.name} stopped at step {int(state.step)} of {total}.")
    summary, _ = evaluate.evaluate_workdir(
        config, str(run_dir), split=split, mesh=sharding.make_mesh(config.mesh)
    )
    row = _row(spec, config, data.info.num_classes, summary, flips, time.perf_counter() - start)
    (run_dir / ROW_FILE).write_text(json.dumps(row, indent=1))
    del state
    jax.clear_caches()  # compiled programs of this run; the persistent cache keeps them
    return row


def run_study(
    base_config,
    specs: Sequence[RunSpec],
    workdir: Path,
    *,
    split: str,
    on_row: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Runs every spec not yet finished under `workdir`; returns all rows in grid order.

    `on_row(rows)` is called after every finished run with the rows so far (to rewrite the
    reports), so an interrupted study still leaves its partial tables.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for number, spec in enumerate(specs, start=1):
        run_dir = workdir / spec.name
        done = run_dir / ROW_FILE
        if done.exists():
            rows.append(json.loads(done.read_text()))
            logging.info("study %d/%d %s: finished earlier, kept.", number, len(specs), spec.name)
            continue
        logging.info("study %d/%d %s: training.", number, len(specs), spec.name)
        row = run_one(base_config, spec, run_dir, split=split)
        rows.append(row)
        print(
            f"study {number}/{len(specs)} {spec.name}: accuracy {row['primary/accuracy']:.4f} "
            f"(corrected {row['corrected/accuracy']:.4f}), "
            f"flips {row['realised_flip_fraction']:.3f}, {row['seconds']:.0f} s",
            flush=True,
        )
        if on_row is not None:
            on_row(rows)
    return rows
