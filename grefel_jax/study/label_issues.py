r"""Ranks the records of a split by how strongly a trained model disagrees with their labels.

  python -m grefel_jax.study.label_issues \
      --checkpoint runs/study_noise/grefel_k10_noise30_seed0_steps800 \
      --split train --out issues.csv

`--checkpoint` is a training workdir (its `config.json` says which dataset, and for the
training split which label noise or label file gave the labels it trained on) or, with
`--config`, an inference checkpoint. For each record: the given label (for the training split:
the label training saw, i.e. after the run's label noise or label file), the suggested label
(argmax of the reliability-balanced distribution q_corr) and the score 1 - q_corr[given]
(grefel_jax/study/ranking.py). Writes `--out` (CSV, strongest suspect first), a contact sheet
`<out>.png` of the 64 strongest suspects with both labels, and `<out>.json` (the summary).

When the given labels differ from the dataset's clean ones (label noise on the training
split), it also reports how well the ranking finds the flipped records: AUROC and precision
at k = number of flips, beside the baseline of the primary prediction's probability of the
given label (confident learning's self-confidence), and prints
`auroc=<float> baseline_auroc=<float>` as its last line. `python -m grefel_jax.label_issues`
is its older name.
"""

from __future__ import annotations

import csv
import functools
import json
import sys
from pathlib import Path

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS
SHEET_SIZE = 64


def define_flags():
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "Config (default: the workdir's config.json).", lock_config=True
    )
    flags.DEFINE_string("checkpoint", None, "Training workdir or inference checkpoint.")
    flags.DEFINE_string("split", "train", "Split to rank.")
    flags.DEFINE_string("out", None, "CSV to write (also <out>.png and <out>.json).")
    flags.DEFINE_integer("batch_size", None, "Global batch (default: config.eval_batch_size).")
    flags.mark_flags_as_required(["checkpoint", "out"])


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


def find_label_issues(checkpoint: str, config, split: str, batch_size: int, out: Path) -> dict:
    """Ranks `split`, writes `out` (CSV), `out.png` and `out.json`; returns the summary.

    The summary holds num_records, num_flipped and, when some given labels differ from the
    dataset's, `<score>/auroc` and `<score>/precision_at_k` for each of ranking.SCORES.
    """
    from grefel_jax.data import source
    from grefel_jax.study import ranking

    info = source.dataset_info(config.data)
    outputs = head_outputs(checkpoint, config, split, batch_size)
    given = given_labels(config, split, outputs["record_key"], outputs["label"])
    scores = ranking.given_label_scores(outputs, given)
    suggested = outputs["corrected_probs"].argmax(-1)
    order = np.argsort(-scores["reliability"], kind="mergesort")
    names = info.class_names
    rows = [
        {
            "record_key": int(outputs["record_key"][i]),
            "given_label": names[int(given[i])],
            "suggested_label": names[int(suggested[i])],
            "score": float(scores["reliability"][i]),
            "baseline_score": float(scores["baseline"][i]),
            "dataset_label": names[int(outputs["label"][i])],
        }
        for i in order
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    contact_sheet(out.with_suffix(".png"), config, split, rows, names)
    flipped = given != outputs["label"]
    summary = {
        "checkpoint": checkpoint,
        "split": split,
        "num_records": len(rows),
        "num_flipped": int(flipped.sum()),
    }
    if 0 < flipped.sum() < len(flipped):
        k = int(flipped.sum())
        for kind in ranking.SCORES:
            summary[f"{kind}/auroc"] = ranking.auroc(scores[kind], flipped)
            summary[f"{kind}/precision_at_k"] = ranking.precision_at_k(scores[kind], flipped, k)
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv):
    del argv
    from grefel_jax import cli, evaluate, logging_utils

    logging_utils.quiet_library_logs()
    out = Path(FLAGS.out)
    with cli.user_errors(KeyError):
        config = FLAGS.config
        if config is None:
            config = evaluate.load_workdir_config(FLAGS.checkpoint)
        batch_size = FLAGS.batch_size or int(config.eval_batch_size)
        summary = find_label_issues(FLAGS.checkpoint, config, FLAGS.split, batch_size, out)
    print(
        f"{out}: {summary['num_records']} records ranked; contact sheet {out.with_suffix('.png')}"
    )
    if "reliability/auroc" in summary:
        print(
            f"{summary['num_flipped']} given labels differ from the dataset's: precision at "
            f"k={summary['num_flipped']} {summary['reliability/precision_at_k']:.4f} "
            f"(baseline {summary['baseline/precision_at_k']:.4f}); anchor-only AUROC "
            f"{summary['anchor/auroc']:.4f}"
        )
        print(
            f"auroc={summary['reliability/auroc']:.4f} "
            f"baseline_auroc={summary['baseline/auroc']:.4f}"
        )
    else:
        print("No given label differs from the dataset's: no flip-detection numbers.")
    sys.stdout.flush()


if __name__ == "__main__":
    from grefel_jax import cli

    define_flags()
    app.run(main, flags_parser=cli.parse_flags)
