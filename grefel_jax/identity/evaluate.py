"""Identity evaluation: face verification on held-out identities, the report and its PNG.

The embeddings of every image of a held-out split (flip-averaged, `identity.flip_test`) are
scored on LFW-style pairs (`verification.make_pairs`: 10 identity-disjoint folds of balanced
same / different pairs): 10-fold accuracy and TAR at FAR = 1e-3. The report goes to
`W/identity_eval.json`; `W/identity_neighbours.png` shows, for a few held-out faces, their
nearest neighbours in the split (green border: same identity, red: another one).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import jax
import numpy as np
from etils import epath
from PIL import Image, ImageDraw

from grefel_jax import sharding
from grefel_jax.identity import verification

REPORT_JSON = "identity_eval.json"
REPORT_PNG = "identity_neighbours.png"
FAR = 1e-3
NUM_QUERIES = 6
NUM_NEIGHBOURS = 5


def embed_split(
    embed: Callable,
    variables,
    data_config,
    split: str,
    *,
    image_size: int,
    global_batch_size: int,
    mesh: jax.sharding.Mesh,
) -> dict[str, np.ndarray]:
    """Embeddings of every example of `split`, in record order (padding dropped).

    Returns:
      dict: `embedding (M, E)` float32, `label (M,)` int32, `record_key (M,)` int32.
    """
    from grefel_jax.data import pipeline

    sharding.check_batch_size(global_batch_size, mesh, "config.eval_batch_size")
    gather = jax.jit(lambda *xs: xs, out_shardings=sharding.replicated(mesh))
    out = {"embedding": [], "label": [], "record_key": []}
    for host_batch in pipeline.make_eval_iterator(
        data_config, split, image_size=image_size, global_batch_size=global_batch_size
    ):
        keys = ("image", "label", "mask", "record_key")
        batch = sharding.host_local_to_global({k: host_batch[k] for k in keys}, mesh)
        embedding = np.asarray(embed(variables, batch["image"]))
        label, mask, record = (np.asarray(x) for x in gather(*(batch[k] for k in keys[1:])))
        out["embedding"].append(embedding[mask])
        out["label"].append(label[mask])
        out["record_key"].append(record[mask])
    if not out["label"]:
        raise ValueError(f"Split {split!r} of {data_config.name} is empty.")
    return {k: np.concatenate(v) for k, v in out.items()}


def verify(embedded: dict[str, np.ndarray], *, pairs_per_fold: int, seed: int = 0) -> dict:
    """Verification numbers of `embed_split`'s output.

    Returns:
      dict: `verification_accuracy`, `verification_accuracy_std`, `fold_accuracies`,
      `tar_at_far_1e-3`, `far_reached`, `num_pairs`, `num_images`, `num_identities`, and
      `pairs` / `scores` (not JSON) for the report.
    """
    pairs = verification.make_pairs(embedded["label"], pairs_per_fold=pairs_per_fold, seed=seed)
    scores = verification.pair_scores(embedded["embedding"], pairs)
    accuracy = verification.verification_accuracy(scores, pairs)
    tar = verification.tar_at_far(scores, pairs.same, FAR)
    return {
        "verification_accuracy": accuracy["accuracy"],
        "verification_accuracy_std": accuracy["accuracy_std"],
        "fold_accuracies": accuracy["fold_accuracies"],
        "tar_at_far_1e-3": tar["tar"],
        "far_reached": tar["far"],
        "num_pairs": len(pairs),
        "num_images": int(len(embedded["label"])),
        "num_identities": int(len(np.unique(embedded["label"]))),
        "pairs": pairs,
        "scores": scores,
    }


def neighbours(embedding: np.ndarray, labels: np.ndarray, queries: int, k: int) -> list[dict]:
    """For the first image of each of the first `queries` identities, its `k` nearest other
    images by cosine: `[{'query': i, 'neighbours': [j...], 'same': [bool...], 'scores': [...]}]`."""
    e = embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)
    _, first = np.unique(labels, return_index=True)
    rows = []
    for q in np.sort(first)[:queries]:
        sims = e @ e[q]
        sims[q] = -np.inf
        order = np.argsort(-sims)[:k]
        rows.append(
            {
                "query": int(q),
                "neighbours": [int(j) for j in order],
                "same": [bool(labels[j] == labels[q]) for j in order],
                "scores": [float(sims[j]) for j in order],
            }
        )
    return rows


def draw_neighbours(images: list[list[np.ndarray]], same: list[list[bool]], cell: int = 96):
    """A grid (uint8 RGB): per row a query face then its neighbours, each neighbour framed
    green (same identity) or red (another identity). `images[r][0]` is the query."""
    cols = max(len(r) for r in images)
    pad = 4
    canvas = Image.new(
        "RGB", (cols * (cell + pad) + pad, len(images) * (cell + pad) + pad), "white"
    )
    for r, row in enumerate(images):
        for c, image in enumerate(row):
            x, y = pad + c * (cell + pad), pad + r * (cell + pad)
            face = Image.fromarray(image).resize((cell, cell), Image.BILINEAR)
            canvas.paste(face, (x, y))
            if c > 0:
                colour = (40, 200, 40) if same[r][c - 1] else (230, 30, 30)
                ImageDraw.Draw(canvas).rectangle(
                    (x - 2, y - 2, x + cell + 1, y + cell + 1), outline=colour, width=3
                )
    return np.asarray(canvas)


def write_report(
    workdir, embedded: dict, result: dict, data_config, *, split: str, step: int, source: str
) -> dict:
    """Writes `W/identity_eval.json` and `W/identity_neighbours.png` (process 0 only).

    Returns:
      The JSON dict: `verification_accuracy`, `verification_accuracy_std`, `tar_at_far_1e-3`,
      `num_pairs`, `far_reached`, `fold_accuracies`, `num_images`, `num_identities`, `split`,
      `step`, `source`, `neighbours` (the PNG's rows).
    """
    from grefel_jax.data import source as data_source

    rows = neighbours(embedded["embedding"], embedded["label"], NUM_QUERIES, NUM_NEIGHBOURS)
    report = {k: v for k, v in result.items() if k not in ("pairs", "scores")}
    report.update({"split": split, "step": int(step), "source": source, "neighbours": rows})
    if jax.process_index() == 0:
        workdir = epath.Path(workdir)
        (workdir / REPORT_JSON).write_text(json.dumps(report, indent=2))
        records = data_source.data_source(data_config, split)
        keys = embedded["record_key"]
        images = [
            [records[int(keys[i])]["image"] for i in [row["query"], *row["neighbours"]]]
            for row in rows
        ]
        grid = draw_neighbours(images, [row["same"] for row in rows])
        Image.fromarray(grid).save(str(workdir / REPORT_PNG))
    return report
