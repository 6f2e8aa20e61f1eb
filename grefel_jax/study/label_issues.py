r"""Ranks the training records by how strongly a model that did not see them disagrees with
their labels (out of fold), or by an already trained model (in sample).

Out of fold (the default, the confident-learning protocol):

  python -m grefel_jax.study.label_issues --config configs/demo.py \
      --config.data.label_noise.rate=0.3 --workdir runs/label_issues --folds 5

splits the training records into K folds (`--folds K`, stratified by the given label, seeded
by `--fold_seed`; grefel_jax/data/folds.py) and trains K ordinary runs of the config, from
the same `init_from` pretrained backbones, run k on every fold but k (`W/fold<k>`; a re-run
resumes or skips them), then scores every record with the run that did not see it. The
config is `--config`, or with `--checkpoint` that training workdir's `config.json` (re-score
a run's labels out of fold). A model cannot judge the labels it was trained on: it has
memorised them, so in-sample scores mostly measure how little it memorised.

In sample (`--folds 0`): `--checkpoint` is a training workdir (its `config.json` says which
dataset and which label noise or label file gave the training labels) or, with `--config`, an
inference checkpoint; it scores `--split` (any split) with that model.

For each record: the given label (for the training split: the label training saw, after the
run's label noise or label file), the suggested label (argmax of the reliability-balanced
distribution q_corr) and the score 1 - q_corr[given] (grefel_jax/study/ranking.py). Writes
`--out` (CSV, strongest suspect first; default W/label_issues.csv out of fold), a contact
sheet `<out>.png` of the 64 strongest suspects, `<out>.json` (the report) and, out of fold,
`<out>.npz` (the out-of-fold probabilities, records and folds).

When the given labels differ from the dataset's clean ones (the study's label noise:
symmetric or pairs), it reports how well each score finds the flipped records, on the same
probabilities: AUROC, precision and recall at k = number of flips for the head's score, the
anchor correction alone, the primary prediction's self-confidence 1 - p[given], and cleanlab
(`cleanlab.rank.get_label_quality_scores` on p, and the set `cleanlab.filter.
find_label_issues` picks); its last line is `auroc=<float> cleanlab_auroc=<float>`.

`--clean relabel|drop` also writes `<out>_<relabel|drop>.txt`, a label file
(`config.data.label_noise.file`: one class index per training record, -1 = dropped) that
relabels the top-k suspects to their suggested label or drops them; train on it with
`--config.data.label_noise.file=...` or `python -m grefel_jax.study noise --label_files ...`.
`python -m grefel_jax.label_issues` is the command's older name.
"""

from __future__ import annotations

import copy
import csv
import functools
import json
import logging
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
SHEET_SIZE = 64
IN_SAMPLE = 0  # --folds 0: score with the model trained on the records (in sample)
CLEAN_MODES = ("relabel", "drop")
CLEAN_BY = ("reliability", "cleanlab")


def define_flags():
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config",
        None,
        "Config (default: the --checkpoint workdir's config.json).",
        lock_config=True,
    )
    flags.DEFINE_string(
        "checkpoint",
        None,
        "In sample: the training workdir or inference checkpoint to score "
        "with. Out of fold: a training workdir whose config.json to train the folds with.",
    )
    flags.DEFINE_string("workdir", None, "Out of fold: where the K fold runs and reports go.")
    flags.DEFINE_integer(
        "folds", 5, "K >= 2: out-of-fold scoring with K models; 0: in sample (--checkpoint)."
    )
    flags.DEFINE_integer("fold_seed", 0, "Seed of the fold assignment.")
    flags.DEFINE_string(
        "split", None, "Split to rank (default and out of fold: the training split)."
    )
    flags.DEFINE_string(
        "out", None, "CSV to write (also <out>.png, .json); default W/label_issues.csv."
    )
    flags.DEFINE_integer("batch_size", None, "Global batch (default: config.eval_batch_size).")
    flags.DEFINE_enum(
        "clean",
        None,
        list(CLEAN_MODES),
        "Write a cleaned label file: relabel or drop the top-k suspects.",
    )
    flags.DEFINE_integer(
        "clean_k",
        None,
        "Suspects to clean (default: those whose suggested label differs from "
        "the given one, or for --clean_by cleanlab those find_label_issues picks).",
    )
    flags.DEFINE_enum("clean_by", "reliability", list(CLEAN_BY), "Ranking that --clean uses.")


def head_outputs(checkpoint: str, config, split: str, batch_size: int) -> dict[str, np.ndarray]:
    """Per-record head outputs over `split` in record order.

    Returns:
      dict of numpy arrays: record_key (N,), label (N,) the dataset's label, probs (N, C),
      corrected_probs (N, C), and anchor_probs (N, C) for the GReFEL head.
    """
    import jax

    from grefel_jax import checkpoints, settings, sharding
    from grefel_jax.data import pipeline

    variables, model_config, _ = checkpoints.load_inference_checkpoint(checkpoint)
    info = pipeline.dataset_info(config.data)
    if info.num_classes != model_config.head.num_classes:
        raise ValueError(
            f"{checkpoint}: the model has {model_config.head.num_classes} classes but "
            f"{info.full_name} has {info.num_classes}."
        )
    model = settings.make_model(model_config, settings.compute_dtype(config))
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    sharding.check_batch_size(batch_size, mesh, "--batch_size")
    variables = jax.device_put(variables, sharding.replicated(mesh))
    keys = ("probs", "corrected_probs") + (
        ("anchor_probs",) if model_config.head.kind == "grefel" else ()
    )

    @functools.partial(jax.jit, out_shardings=sharding.replicated(mesh))
    def apply(variables, images):
        outputs = model.apply(variables, images, train=False)
        return {k: outputs[k] for k in keys}

    collected: dict[str, list[np.ndarray]] = {k: [] for k in ("record_key", "label", *keys)}
    iterator = pipeline.make_eval_iterator(
        config.data,
        split,
        image_size=model_config.backbone.image_size,
        global_batch_size=batch_size,
    )
    for batch in iterator:
        images = sharding.host_local_to_global({"image": batch["image"]}, mesh)["image"]
        outputs = jax.device_get(apply(variables, images))
        keep = batch["mask"]
        collected["record_key"].append(batch["record_key"][keep])
        collected["label"].append(batch["clean_label"][keep])
        for k in keys:
            collected[k].append(np.asarray(outputs[k])[keep])
    return {k: np.concatenate(v) for k, v in collected.items()}


def given_labels(config, split: str, record_keys: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) the labels training saw: the run's noise / label file on its training split."""
    from grefel_jax.data import pipeline

    if split != config.data.train_split:
        return labels
    return pipeline.training_labels(config.data).apply(record_keys, labels)


def contact_sheet(path: Path, config, split: str, rows: list[dict], class_names) -> None:
    """An 8 x 8 grid of the strongest suspects: image, 'given -> suggested', score."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from grefel_jax.data import source

    records = source.data_source(config.data, split)
    shown = rows[:SHEET_SIZE]
    cols = 8
    fig, axes = plt.subplots(-(-max(1, len(shown)) // cols), cols, figsize=(16, 17))
    for ax in np.asarray(axes).reshape(-1):
        ax.axis("off")
    for ax, row in zip(np.asarray(axes).reshape(-1), shown):
        ax.imshow(records[int(row["record_key"])]["image"])
        ax.set_title(
            f"#{row['record_key']} {row['given_label']}\n-> {row['suggested_label']} "
            f"({row['score']:.2f})",
            fontsize=8,
        )
    fig.suptitle(f"{len(shown)} strongest label suspects of {split} (given -> suggested)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def fold_config(config, num_folds: int, holdout: int, seed: int):
    """A copy of `config` whose training leaves out fold `holdout` of `num_folds`
    (`config.data.folds`), with no final evaluation and one kept checkpoint (as a study run):
    everything else, `init_from` included, as given."""
    import ml_collections

    config = copy.deepcopy(config)
    with config.unlocked():
        config.data.folds = ml_collections.ConfigDict(
            {"num": int(num_folds), "holdout": int(holdout), "seed": int(seed)}
        )
        config.final_eval_splits = ()
        config.keep_checkpoints = 1
    return config


def plan_folds(
    config, num_folds: int, seed: int, split: str | None
) -> tuple[np.ndarray, np.ndarray]:
    """The out-of-fold split of the training records, after checking the flags against the
    data (reads labels only: nothing is built or compiled).

    Returns:
      `(records, folds)`: sorted (M,) int64 indices of the training records scored, and
      (M,) int32 the fold of each (its scorer: the run that trained on every other fold).

    Raises:
      ValueError: one line naming `--folds` or `--split`.
    """
    from grefel_jax.data import source

    if num_folds < 2:
        raise ValueError(
            f"--folds={num_folds}: must be >= 2 (out of fold), or {IN_SAMPLE} to score in sample "
            "with --checkpoint."
        )
    train_split = config.data.train_split
    if split not in (None, train_split):
        raise ValueError(
            f"--split={split}: out-of-fold scoring ranks the training split ({train_split!r}); "
            f"score another split in sample with --folds {IN_SAMPLE} --checkpoint W."
        )
    data_config = fold_config(config, num_folds, 0, seed).data
    records = source.unfolded_record_indices(data_config)
    size = source.dataset_info(data_config).split_sizes[train_split]
    num_records = size if records is None else len(records)
    if num_records < 2 * num_folds:
        raise ValueError(
            f"--folds={num_folds}: the training split {train_split!r} has {num_records} records "
            f"to train on, too few for {num_folds} folds (need at least {2 * num_folds}: every "
            "fold scored, every run trained on more than one record)."
        )
    return source.fold_assignment(data_config)


def train_folds(config, workdir: Path, num_folds: int, seed: int) -> list[Path]:
    """Trains run k of `num_folds` (every fold but k) into `workdir/fold<k>`, each an
    ordinary training run (`train.train_and_evaluate`: a finished run is kept, an
    interrupted one resumes). Returns the run directories.

    Raises:
      UserError: a run stopped early (SIGTERM); running the command again resumes it.
    """
    import jax

    from grefel_jax import errors, settings, train
    from grefel_jax.data import source

    run_dirs = []
    for holdout in range(num_folds):
        config_k = fold_config(config, num_folds, holdout, seed)
        run_dir = workdir / f"fold{holdout}"
        logging.info("label_issues: fold %d of %d -> %s", holdout, num_folds, run_dir)
        state = train.train_and_evaluate(config_k, str(run_dir), evaluate_during_training=False)
        total = settings.run_length(config_k, source.open_training_set(config_k.data).size)
        if int(state.step) < total.total_steps:
            raise errors.UserError(
                f"{run_dir}: stopped at step {int(state.step)} of {total.total_steps}; run the "
                "same command again to resume."
            )
        del state
        jax.clear_caches()  # this run's programs; the persistent cache keeps them
        run_dirs.append(run_dir)
    return run_dirs


def out_of_fold_outputs(
    config, run_dirs, records: np.ndarray, folds: np.ndarray, batch_size: int
) -> dict[str, np.ndarray]:
    """Head outputs of every record in `records` from the run that did not train on it.

    Args:
      run_dirs: K run directories; run k trained on every fold but k.
      records: (M,) training record indices; folds: (M,) their fold in 0..K-1.

    Returns:
      dict of (M, ...) arrays in the order of `records`: record_key, label (the dataset's),
      probs, corrected_probs (and anchor_probs), and fold (M,) int32.
    """
    split = config.data.train_split
    result: dict[str, np.ndarray] = {}
    for holdout, run_dir in enumerate(run_dirs):
        outputs = head_outputs(str(run_dir), config, split, batch_size)
        # The pass is in record order: row i is record i.
        np.testing.assert_array_equal(outputs["record_key"], np.arange(len(outputs["label"])))
        mine = np.flatnonzero(folds == holdout)
        for key, values in outputs.items():
            if key not in result:
                result[key] = np.zeros((len(records), *values.shape[1:]), values.dtype)
            result[key][mine] = values[records[mine]]
    result["fold"] = np.asarray(folds, np.int32)
    return result


def clean_label_file(
    path: Path,
    all_given: np.ndarray,
    records: np.ndarray,
    scores: np.ndarray,
    suggested: np.ndarray,
    k: int,
    mode: str,
) -> np.ndarray:
    """Writes a label file (`config.data.label_noise.file`: one class index per training
    record in record order, -1 = dropped) with the k highest-scoring records relabelled to
    their suggested label (`mode='relabel'`) or dropped (`'drop'`); the others keep their
    given label. Returns the (N,) int32 labels written.

    Args:
      all_given: (N,) given labels of the whole training split (-1 where already dropped).
      records: (M,) indices of the scored records; scores, suggested: (M,) per scored record.
    """
    from grefel_jax.data import noise

    if mode not in CLEAN_MODES:
        raise ValueError(f"--clean={mode}: expected one of {CLEAN_MODES}.")
    labels = np.asarray(all_given, np.int32).copy()
    top = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")[: max(0, int(k))]
    labels[records[top]] = suggested[top] if mode == "relabel" else noise.DROPPED
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{int(label)}\n" for label in labels))
    return labels


def rank_and_report(
    outputs: dict[str, np.ndarray],
    given: np.ndarray,
    config,
    split: str,
    out: Path,
    summary: dict,
    *,
    clean: str | None = None,
    clean_k: int | None = None,
    clean_by: str = "reliability",
) -> dict:
    """Ranks the scored records, writes `out` (CSV), `out.png`, `out.json` (and with `clean`
    the label file `<out>_<clean>.txt`); returns `summary` completed.

    Args:
      outputs: (M, ...) head outputs of the scored records (`head_outputs` keys, and `fold`
        out of fold); given: (M,) their given labels.

    The summary gains num_records, num_flipped, num_suggested (suggested != given) and
    cleanlab/num_issues, and when some given labels differ from the dataset's, for each
    score of ranking.SCORES, `cleanlab` (on p) and `cleanlab_corrected` (cleanlab on q_corr):
    `<score>/auroc`, `/precision_at_k`, `/recall_at_k` (k = number of flips), plus the
    precision and recall of the sets `cleanlab/find_label_issues`,
    `cleanlab_corrected/find_label_issues` and `reliability/suggested` (suggested != given).
    """
    from grefel_jax.data import pipeline, source
    from grefel_jax.study import ranking

    info = source.dataset_info(config.data)
    names = info.class_names
    scores = ranking.given_label_scores(outputs, given)
    cleanlab = ranking.cleanlab_scores(outputs["probs"], given)
    scores["cleanlab"] = cleanlab["score"]
    # Confident learning fed the head's q_corr instead of p: is q_corr the better input?
    cleanlab_corrected = ranking.cleanlab_scores(outputs["corrected_probs"], given)
    scores["cleanlab_corrected"] = cleanlab_corrected["score"]
    suggested = outputs["corrected_probs"].argmax(-1)
    order = np.argsort(-scores["reliability"], kind="mergesort")
    rows = []
    for i in order:
        row = {
            "record_key": int(outputs["record_key"][i]),
            "given_label": names[int(given[i])],
            "suggested_label": names[int(suggested[i])],
            "score": float(scores["reliability"][i]),
            "baseline_score": float(scores["baseline"][i]),
            "cleanlab_score": float(scores["cleanlab"][i]),
            "cleanlab_issue": bool(cleanlab["issues"][i]),
            "dataset_label": names[int(outputs["label"][i])],
        }
        if "fold" in outputs:
            row["fold"] = int(outputs["fold"][i])
        rows.append(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    contact_sheet(out.with_suffix(".png"), config, split, rows, names)
    flipped = given != outputs["label"]
    summary.update(
        split=split,
        num_records=len(rows),
        num_flipped=int(flipped.sum()),
        num_suggested=int((suggested != given).sum()),
        **{"cleanlab/num_issues": int(cleanlab["issues"].sum())},
    )
    if 0 < flipped.sum() < len(flipped):
        for kind in (*ranking.SCORES, "cleanlab", "cleanlab_corrected"):
            for name, value in ranking.detection_metrics(scores[kind], flipped).items():
                summary[f"{kind}/{name}"] = value
        for name, found in (
            ("cleanlab/find_label_issues", cleanlab["issues"]),
            ("cleanlab_corrected/find_label_issues", cleanlab_corrected["issues"]),
            ("reliability/suggested", suggested != given),
        ):
            precision, recall = ranking.set_precision_recall(found, flipped)
            summary[f"{name}/precision"], summary[f"{name}/recall"] = precision, recall
    if clean:
        if split != config.data.train_split:
            raise ValueError(f"--clean: cleans the training split's labels, not --split={split}.")
        by_cleanlab = clean_by == "cleanlab"
        if clean_k is None:
            clean_k = int((cleanlab["issues"] if by_cleanlab else suggested != given).sum())
        target = outputs["probs"].argmax(-1) if by_cleanlab else suggested
        size = info.split_sizes[split]
        all_given = pipeline.training_labels(config.data, info).apply(
            np.arange(size), source.split_labels(config.data, split)
        )
        path = out.with_name(f"{out.stem}_{clean}.txt")
        clean_label_file(
            path,
            all_given,
            outputs["record_key"].astype(np.int64),
            scores[clean_by],
            target,
            clean_k,
            clean,
        )
        summary["clean"] = {"file": str(path), "mode": clean, "by": clean_by, "k": int(clean_k)}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return summary


def find_label_issues(
    checkpoint: str, config, split: str, batch_size: int, out: Path, **clean_options
) -> dict:
    """In sample: ranks `split` with the model of `checkpoint`; writes `out` (CSV), `out.png`
    and `out.json`; returns the summary (`rank_and_report`). `clean_options`: clean,
    clean_k, clean_by of `rank_and_report`."""
    outputs = head_outputs(checkpoint, config, split, batch_size)
    given = given_labels(config, split, outputs["record_key"], outputs["label"])
    kept = given >= 0  # a label file's dropped records (-1) were not trained on: not ranked
    outputs = {key: values[kept] for key, values in outputs.items()}
    summary = {"mode": "in_sample", "checkpoint": checkpoint}
    return rank_and_report(outputs, given[kept], config, split, out, summary, **clean_options)


def find_label_issues_out_of_fold(
    config,
    workdir: Path,
    num_folds: int,
    seed: int,
    batch_size: int,
    out: Path,
    *,
    split: str | None = None,
    **clean_options,
) -> dict:
    """Out of fold: trains the `num_folds` runs under `workdir` (`train_folds`), scores every
    training record with the run that did not see it, writes `out` (CSV), `out.png`,
    `out.json` and `out.npz` (records, fold, given, probs, corrected_probs); returns the
    summary (`rank_and_report`, plus mode, folds and fold_seed). `split`: None or the
    training split (anything else is an error naming --split)."""
    records, folds = plan_folds(config, num_folds, seed, split)
    split = config.data.train_split
    run_dirs = train_folds(config, workdir, num_folds, seed)
    outputs = out_of_fold_outputs(config, run_dirs, records, folds, batch_size)
    given = given_labels(config, split, outputs["record_key"], outputs["label"])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        out.with_suffix(".npz"),
        records=records,
        fold=folds,
        given=given,
        dataset_label=outputs["label"],
        probs=outputs["probs"],
        corrected_probs=outputs["corrected_probs"],
    )
    summary = {
        "mode": "out_of_fold",
        "workdir": str(workdir),
        "folds": int(num_folds),
        "fold_seed": int(seed),
        "init_from": str(config.get("init_from", "") or ""),
        "num_train_steps": config.get("num_train_steps"),
        "label_noise": config.data.label_noise.to_dict(),
    }
    return rank_and_report(outputs, given, config, split, out, summary, **clean_options)


def check_flags() -> None:
    """The flags' own errors (one line naming the flag), before any data is read."""
    folds = FLAGS.folds
    if folds != IN_SAMPLE and folds < 2:
        raise ValueError(
            f"--folds={folds}: must be >= 2 (out of fold), or {IN_SAMPLE} to score in sample "
            "with --checkpoint."
        )
    if FLAGS.clean_k is not None and FLAGS.clean_k < 0:
        raise ValueError(f"--clean_k={FLAGS.clean_k}: must be >= 0.")
    if FLAGS.clean_k is not None and not FLAGS.clean:
        raise ValueError("--clean_k: needs --clean relabel or --clean drop.")
    if folds == IN_SAMPLE:
        if not FLAGS.checkpoint:
            raise ValueError(f"--checkpoint: required with --folds {IN_SAMPLE} (in sample).")
        if not FLAGS.out:
            raise ValueError(f"--out: required with --folds {IN_SAMPLE} (in sample).")
    else:
        if not FLAGS.workdir:
            raise ValueError(
                f"--workdir: required with --folds {folds} (the {folds} fold runs go there); "
                f"--folds {IN_SAMPLE} scores in sample with --checkpoint."
            )
        if FLAGS.config is None and not FLAGS.checkpoint:
            raise ValueError(
                f"--config: required with --folds {folds} (or --checkpoint W: its config.json)."
            )


def main(argv):
    del argv
    from grefel_jax import cli, evaluate, logging_utils

    logging_utils.quiet_library_logs()
    with cli.user_errors(KeyError):
        check_flags()
        config = FLAGS.config
        if config is None:
            config = evaluate.load_workdir_config(FLAGS.checkpoint)
        batch_size = FLAGS.batch_size or int(config.eval_batch_size)
        clean_options = dict(clean=FLAGS.clean, clean_k=FLAGS.clean_k, clean_by=FLAGS.clean_by)
        if FLAGS.folds == IN_SAMPLE:
            out = Path(FLAGS.out)
            split = FLAGS.split or config.data.train_split
            summary = find_label_issues(
                FLAGS.checkpoint, config, split, batch_size, out, **clean_options
            )
            how = "in sample"
        else:
            workdir = Path(FLAGS.workdir)
            out = Path(FLAGS.out) if FLAGS.out else workdir / "label_issues.csv"
            import jax

            if not jax.config.jax_compilation_cache_dir:
                # The K runs compile the same programs: compile once (as a study does).
                jax.config.update("jax_compilation_cache_dir", str(workdir / "jax_cache"))
            # Checks the folds against the data first: nothing is compiled before.
            summary = find_label_issues_out_of_fold(
                config,
                workdir,
                FLAGS.folds,
                FLAGS.fold_seed,
                batch_size,
                out,
                split=FLAGS.split,
                **clean_options,
            )
            how = f"out of fold ({FLAGS.folds} folds)"
    print(
        f"{out}: {summary['num_records']} records ranked {how}; report {out.with_suffix('.json')}, "
        f"contact sheet {out.with_suffix('.png')}"
    )
    if "clean" in summary:
        c = summary["clean"]
        done = {"relabel": "relabelled", "drop": "dropped"}[c["mode"]]
        print(f"{c['file']}: label file with the top {c['k']} suspects ({c['by']}) {done}")
    if "reliability/auroc" in summary:
        k = summary["num_flipped"]
        for kind in ("reliability", "baseline", "cleanlab"):
            print(
                f"{kind}: precision_at_k={summary[f'{kind}/precision_at_k']:.4f} "
                f"recall_at_k={summary[f'{kind}/recall_at_k']:.4f} (k={k} flipped labels)"
            )
        print(
            f"cleanlab find_label_issues: {summary['cleanlab/num_issues']} found, precision "
            f"{summary['cleanlab/find_label_issues/precision']:.4f}, recall "
            f"{summary['cleanlab/find_label_issues/recall']:.4f}"
        )
        print(
            f"auroc={summary['reliability/auroc']:.4f} "
            f"cleanlab_auroc={summary['cleanlab/auroc']:.4f}"
        )
    else:
        print("No given label differs from the dataset's: no flip-detection numbers.")
    sys.stdout.flush()


if __name__ == "__main__":
    from grefel_jax import cli

    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
