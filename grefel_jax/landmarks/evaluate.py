"""Landmark evaluation: NME over a split, `landmarks_eval.json` and a PNG of 16 faces.

NME of one face = mean distance over its annotated points / distance between the true eye
centres (`PointLayout.eye_centres`); the split's NME is the mean over faces that have both
eyes annotated. Every example counts once (the padded tail of the last batch is masked).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from PIL import Image, ImageDraw

from grefel_jax import sharding
from grefel_jax.data import augment
from grefel_jax.data.landmark_layouts import PointLayout
from grefel_jax.landmarks import data as landmark_data
from grefel_jax.landmarks import losses
from grefel_jax.preprocess import IMAGENET_MEAN, IMAGENET_STD

NUM_SHOWN = 16
REPORT_JSON = "landmarks_eval.json"
REPORT_PNG = "landmarks_eval.png"


def make_eval_fn(predict: Callable, layout: PointLayout, mesh: jax.sharding.Mesh) -> Callable:
    """Jitted `(variables, image (B,S,S,3), points (B,N,2), mask (B,)) -> (pred (B,N,2),
    nme (B,))`, both replicated; NME is NaN on padding and where a face lacks an eye."""
    right, left = list(layout.right_eye), list(layout.left_eye)

    def fn(variables, images, target, mask):
        pred = predict(variables, images)
        right_eye = jnp.mean(target[:, right], axis=1)
        left_eye = jnp.mean(target[:, left], axis=1)
        per_face = losses.nme(pred, target, left_eye, right_eye)
        has_eyes = jnp.all(jnp.isfinite(right_eye) & jnp.isfinite(left_eye), axis=-1)
        return pred, jnp.where(has_eyes & mask, per_face, jnp.nan)

    return jax.jit(fn, out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)))


def evaluate(
    eval_fn: Callable,
    variables,
    data_config,
    split: str,
    *,
    image_size: int,
    global_batch_size: int,
    mesh: jax.sharding.Mesh,
) -> dict:
    """One pass over `split`.

    Returns:
      dict: `nme` (float), `num_examples` (faces counted), and for the report the first
      NUM_SHOWN faces of this process: `images (16, S, S, 3)` uint8, `pred` / `target`
      `(16, N, 2)` crop units.
    """
    sums, count = 0.0, 0
    shown = {"images": [], "pred": [], "target": []}
    for host_batch in landmark_data.make_eval_iterator(
        data_config, split, image_size=image_size, global_batch_size=global_batch_size
    ):
        keys = ("image", "points", "mask")
        batch = sharding.host_local_to_global({k: host_batch[k] for k in keys}, mesh)
        pred, nme = eval_fn(variables, batch["image"], batch["points"], batch["mask"])
        pred, nme = np.asarray(pred), np.asarray(nme)
        keep = np.isfinite(nme)
        sums += float(nme[keep].sum())
        count += int(keep.sum())
        # Process p's local examples are positions p*b .. p*b + b - 1 of the global batch.
        b = host_batch["image"].shape[0]
        offset = jax.process_index() * b
        for j in range(b):
            if len(shown["images"]) < NUM_SHOWN and host_batch["mask"][j]:
                shown["images"].append(_to_uint8(host_batch["image"][j]))
                shown["pred"].append(pred[offset + j])
                shown["target"].append(host_batch["points"][j])
    result = {"nme": sums / max(count, 1), "num_examples": count}
    result.update({k: np.stack(v) if v else np.zeros((0,)) for k, v in shown.items()})
    return result


def _to_uint8(image: np.ndarray) -> np.ndarray:
    """ImageNet-normalized (S, S, 3) float32 -> uint8 RGB."""
    rgb = (image * IMAGENET_STD + IMAGENET_MEAN) * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def draw_faces(images: np.ndarray, pred: np.ndarray, target: np.ndarray, cell: int = 160):
    """A 4 x 4 grid (uint8 RGB): each face with true points (green dots) and predictions
    (red crosses). `images (K, S, S, 3)` uint8, `pred`/`target` `(K, N, 2)` crop units."""
    cols = 4
    rows = max(1, -(-len(images) // cols))
    canvas = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    for k, (image, p, t) in enumerate(zip(images, pred, target)):
        face = Image.fromarray(image).resize((cell, cell), Image.BILINEAR)
        draw = ImageDraw.Draw(face)
        for x, y in augment.unit_to_pixels(t, cell, cell):
            if np.isfinite(x) and np.isfinite(y):
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=(40, 220, 40))
        for x, y in augment.unit_to_pixels(p, cell, cell):
            draw.line((x - 3, y - 3, x + 3, y + 3), fill=(230, 30, 30), width=1)
            draw.line((x - 3, y + 3, x + 3, y - 3), fill=(230, 30, 30), width=1)
        canvas.paste(face, ((k % cols) * cell, (k // cols) * cell))
    return np.asarray(canvas)


def write_report(workdir, result: dict, *, split: str, step: int, source: str) -> dict:
    """Writes `WORKDIR/landmarks_eval.json` (`nme`, `num_examples`, `split`, `step`, `source`)
    and `WORKDIR/landmarks_eval.png` (process 0 only); returns the JSON dict."""
    report = {
        "nme": float(result["nme"]),
        "num_examples": int(result["num_examples"]),
        "split": split,
        "step": int(step),
        "source": source,
    }
    if jax.process_index() == 0:
        workdir = epath.Path(workdir)
        (workdir / REPORT_JSON).write_text(json.dumps(report, indent=2))
        grid = draw_faces(result["images"], result["pred"], result["target"])
        Image.fromarray(grid).save(str(workdir / REPORT_PNG))
    return report
