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
SPEC_FILE = "study_spec.json"
PREDICTIONS = ("primary", "corrected")
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


def training_set(data_config, train_records: int | None):
    """The training set a run reads: `source.open_training_set`, restricted to the first
    `train_records` records of the training split when that is set.

    Raises:
      ValueError: more records asked than the split has, or a subset with an imbalance ratio.
    """
    import dataclasses

    from grefel_jax.data import source

    data = source.open_training_set(data_config)
    if train_records is None:
        return data
    size = data.info.split_sizes[data.split]
    if not 1 <= int(train_records) <= size:
        raise ValueError(
            f"--train_records={train_records}: the training split {data.split!r} has {size} "
            "records."
        )
    if data.indices is not None:
        raise ValueError(
            "--train_records: a fixed subset and an imbalance ratio > 1 cannot be combined."
        )
    return dataclasses.replace(data, indices=np.arange(int(train_records), dtype=np.int64))


def realised_flip_fraction(data_config, data=None) -> float:
    """Fraction of the training records (of the subset trained on) whose label differs from
    the clean one under the run's `config.data.label_noise`."""
    from grefel_jax.data import pipeline, source

    data = data or source.open_training_set(data_config)
    labels = source.split_labels(data_config, data.split)
    indices = np.arange(len(labels)) if data.indices is None else data.indices
    given = pipeline.training_labels(data_config, data.info).apply(indices, labels[indices])
    return float(np.mean(given != labels[indices]))


def read_history(run_dir: Path, split: str) -> list[dict]:
    """The evaluations of `split` logged in `run_dir/metrics.jsonl`, one dict per evaluated
    step in step order (a resumed run may log a step twice: the later line counts)."""
    by_step: dict[int, dict] = {}
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if record.get("split") != split or "primary/accuracy" not in record:
            continue
        by_step[int(record["step"])] = {
            "step": int(record["step"]),
            "num_examples": int(record.get("num_examples", 0)),
            **{
                f"{p}/{m}": float(record[f"{p}/{m}"])
                for p in PREDICTIONS
                for m in METRICS
                if f"{p}/{m}" in record
            },
        }
    return [by_step[s] for s in sorted(by_step)]


def history_summary(history: list[dict], metric: str = "accuracy") -> dict[str, float]:
    """Peak, final, step of the peak and drop (peak - final) of `metric` over a run's
    evaluations, for each prediction: `<prediction>/peak_<metric>`, `.../final_<metric>`,
    `.../peak_step` (the first step reaching the peak; for `accuracy` only) and
    `.../drop_<metric>`.

    Args:
      history: `read_history`'s list (at least one evaluation).
    """
    if not history:
        raise ValueError("no evaluation in the run's metrics.jsonl")
    out: dict[str, float] = {}
    for prediction in PREDICTIONS:
        key = f"{prediction}/{metric}"
        values = np.array([h[key] for h in history], np.float64)
        best = int(np.argmax(values))  # the first maximum: when the peak was reached
        out[f"{prediction}/peak_{metric}"] = float(values[best])
        out[f"{prediction}/final_{metric}"] = float(values[-1])
        out[f"{prediction}/drop_{metric}"] = float(values[best] - values[-1])
        if metric == "accuracy":
            out[f"{prediction}/peak_step"] = int(history[best]["step"])
    return out


def memorisation(predicted: np.ndarray, given: np.ndarray, clean: np.ndarray) -> dict:
    """How far a model fits the labels it was given, on the training records.

    Args:
      predicted: (N,) int, the model's class for each training record.
      given: (N,) int, the label training saw (after the run's label noise).
      clean: (N,) int, the dataset's label.

    Returns:
      train_accuracy_given: fraction with predicted == given (the training accuracy on the
        noisy labels); train_accuracy_clean: predicted == clean; memorised_fraction: among
        the flipped records (given != clean), the fraction predicted as their given, wrong
        label (NaN when nothing was flipped); num_flipped.
    """
    predicted, given, clean = (np.asarray(a).reshape(-1) for a in (predicted, given, clean))
    flipped = given != clean
    return {
        "train_accuracy_given": float(np.mean(predicted == given)),
        "train_accuracy_clean": float(np.mean(predicted == clean)),
        "memorised_fraction": float(np.mean(predicted[flipped] == given[flipped]))
        if flipped.any()
        else float("nan"),
        "num_flipped": int(flipped.sum()),
    }


def training_predictions(config, data, variables, mesh) -> dict[str, np.ndarray]:
    """The model's classes for the records training read, without augmentation (the
    evaluation preprocessing), in record order.

    Returns:
      record_key (N,), clean_label (N,) (the dataset's), primary (N,) and corrected (N,)
      argmax of p and of q_corr.
    """
    import functools

    import jax

    from grefel_jax import settings, sharding
    from grefel_jax.data import pipeline

    model_config = settings.model_config(config, data.info.num_classes)
    model = settings.make_model(model_config, settings.compute_dtype(config))
    split = data.split
    prefix = data.indices is not None and np.array_equal(data.indices, np.arange(len(data.indices)))
    if prefix:  # a slice decodes only the subset (a pixel-cached split would read them all)
        split = f"{data.split}[:{len(data.indices)}]"

    @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))
    def classes(variables, images):
        outputs = model.apply(variables, images, train=False)
        return outputs["probs"].argmax(-1), outputs["corrected_probs"].argmax(-1)

    collected: dict[str, list[np.ndarray]] = {
        k: [] for k in ("record_key", "clean_label", "primary", "corrected")
    }
    iterator = pipeline.make_eval_iterator(
        config.data,
        split,
        image_size=model_config.backbone.image_size,
        global_batch_size=int(config.eval_batch_size),
    )
    for batch in iterator:
        images = sharding.host_local_to_global({"image": batch["image"]}, mesh)["image"]
        primary, corrected = jax.device_get(classes(variables, images))
        keep = np.asarray(batch["mask"])
        collected["record_key"].append(np.asarray(batch["record_key"])[keep])
        collected["clean_label"].append(np.asarray(batch["clean_label"])[keep])
        collected["primary"].append(np.asarray(primary)[keep])
        collected["corrected"].append(np.asarray(corrected)[keep])
    out = {k: np.concatenate(v) for k, v in collected.items()}
    if data.indices is not None and not prefix:
        chosen = np.isin(out["record_key"], data.indices)
        out = {k: v[chosen] for k, v in out.items()}
    return out


def training_scores(config, data, variables, mesh) -> dict[str, float]:
    """`memorisation` of the primary and the corrected prediction on the training records,
    as `train/<prediction>/<field>`."""
    from grefel_jax.data import pipeline

    predictions = training_predictions(config, data, variables, mesh)
    given = pipeline.training_labels(config.data, data.info).apply(
        predictions["record_key"], predictions["clean_label"]
    )
    row: dict[str, float] = {"train/num_records": int(len(given))}
    for prediction in PREDICTIONS:
        scores = memorisation(predictions[prediction], given, predictions["clean_label"])
        row["train/num_flipped"] = scores.pop("num_flipped")
        # No flipped record: no memorised fraction (None, not NaN: results.json stays JSON).
        row.update(
            {f"train/{prediction}/{k}": None if np.isnan(v) else v for k, v in scores.items()}
        )
    return row


def _row(
    spec: RunSpec,
    config,
    num_classes: int,
    history: list[dict],
    flips: float,
    seconds: float,
    *,
    split: str,
    num_examples: int,
    study: str,
) -> dict:
    from grefel_jax import settings

    model_config = settings.model_config(config, num_classes)
    final = history[-1]
    row = {
        "study": study,
        "run": spec.name,
        "head": spec.head,
        "num_anchors": int(model_config.head.num_anchors)
        if model_config.head.kind == "grefel"
        else 0,
        "noise": float(spec.noise),
        "kind": spec.kind if spec.noise > 0 and not spec.label_file else "",
        "label_file": spec.label_file,
        "imbalance_ratio": float(spec.ratio),
        "balancing": spec.balancing,
        "seed": int(spec.seed),
        "steps": int(final["step"]),
        "init_from": _init_of(config),
        "train_records": spec.train_records,
        "eval_every": int(config.eval_every_steps),
        "realised_flip_fraction": flips,
        "split": split,
        "num_examples": int(num_examples),
        "seconds": round(seconds, 1),
    }
    # The last evaluation's numbers (the run's final step) under the names of earlier studies.
    for prediction in PREDICTIONS:
        for metric in METRICS:
            row[f"{prediction}/{metric}"] = float(final[f"{prediction}/{metric}"])
    row.update(history_summary(history, "accuracy"))
    row.update(history_summary(history, "mean_class_accuracy"))
    row["history"] = history
    return row


def _init_of(config) -> str:
    from grefel_jax.study import grid

    return grid.normalise_init(config.init_from)


def run_one(base_config, spec: RunSpec, run_dir: Path, *, split: str, study: str = "noise") -> dict:
    """Trains one run into `run_dir`, evaluating `split` every `eval_every` steps; returns its
    results row (with the accuracy history, and for a noise study the training-record scores
    of the last step's weights).

    Raises:
      StudyInterrupted: the run stopped early (its checkpoint resumes it).
    """
    import dataclasses

    import jax

    from grefel_jax import loop, train

    config = apply_overrides(base_config, spec.overrides())
    # The clean `split` is evaluated every eval_every steps and at the last step; no
    # checkpoint is selected on it (the loop keeps no best checkpoint and writes no final
    # report): the study reads the whole history from metrics.jsonl.
    config.data.eval_split = split
    config.final_eval_splits = ()
    config.keep_checkpoints = 1
    data = training_set(config.data, spec.train_records)
    flips = realised_flip_fraction(config.data, data)
    logging.info(
        "study run %s: %d training records, realised label-flip fraction %.4f.",
        spec.name,
        data.size,
        flips,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SPEC_FILE).write_text(json.dumps(dataclasses.asdict(spec), indent=1))
    meshes = []

    def task(mesh):
        meshes.append(mesh)
        return dataclasses.replace(
            train.grefel_task(config, data, mesh), best_metric=None, report=None
        )

    start = time.perf_counter()
    result = loop.run(config, str(run_dir), task)
    if not result.finished:
        raise StudyInterrupted(f"{spec.name} stopped at step {result.step}.")
    history = read_history(run_dir, split)
    row = _row(
        spec,
        config,
        data.info.num_classes,
        history,
        flips,
        0.0,
        split=split,
        num_examples=history[-1]["num_examples"],
        study=study,
    )
    if study == "noise":
        row.update(training_scores(config, data, result.state.eval_variables(), meshes[-1]))
    row["seconds"] = round(time.perf_counter() - start, 1)
    (run_dir / ROW_FILE).write_text(json.dumps(row, indent=1))
    del result
    jax.clear_caches()  # compiled programs of this run; the persistent cache keeps them
    return row


def run_study(
    base_config,
    specs: Sequence[RunSpec],
    workdir: Path,
    *,
    split: str,
    study: str = "noise",
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
        row = run_one(base_config, spec, run_dir, split=split, study=study)
        rows.append(row)
        memorised = row.get("train/primary/memorised_fraction")
        print(
            f"study {number}/{len(specs)} {spec.name}: accuracy peak "
            f"{row['primary/peak_accuracy']:.4f} at step {row['primary/peak_step']}, final "
            f"{row['primary/final_accuracy']:.4f} (corrected {row['corrected/peak_accuracy']:.4f}"
            f" / {row['corrected/final_accuracy']:.4f}), flips "
            f"{row['realised_flip_fraction']:.3f}"
            + ("" if memorised is None else f", memorised {memorised:.3f}")
            + f", {row['seconds']:.0f} s",
            flush=True,
        )
        if on_row is not None:
            on_row(rows)
    return rows


def finished_rows(workdir: Path, study: str, like: RunSpec | None = None) -> list[dict]:
    """Every finished run of `study` under `workdir` (all presets run there), optionally only
    those of the same regime as `like` (steps, training records, initialisation), so one
    report covers the presets of one sitting after another."""
    rows = []
    for path in sorted(Path(workdir).glob(f"*/{ROW_FILE}")):
        row = json.loads(path.read_text())
        if row.get("study", "noise") != study:
            continue
        if like is not None and (
            (like.steps is not None and row["steps"] != like.steps)
            or row.get("train_records") != like.train_records
            or (like.init_from is not None and row.get("init_from") != like.init_from)
        ):
            continue
        rows.append(row)
    from grefel_jax.study import grid

    heads = list(grid.HEADS)

    def order(row):
        head = heads.index(row["head"]) if row["head"] in heads else len(heads)
        return (
            row.get("imbalance_ratio", 1.0),
            row.get("balancing", ""),
            head,
            row["head"],
            row.get("kind", ""),
            row["noise"],
            row.get("label_file", ""),
            row["seed"],
        )

    return sorted(rows, key=order)
