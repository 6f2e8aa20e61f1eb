r"""Recall, false positives and speed of the face detectors, on photos shipped inside packages.

  flock /tmp/grefel_heavy.lock python benchmarks/face_detectors.py \
      --output benchmarks/results/face_detectors.json

No photo is downloaded; every one ships inside an installed wheel:

- Real faces (boxes hand-checked on a 50-pixel grid, eyebrows to chin, ear to ear):
  scikit-image `skimage/data/astronaut.png` (Eileen Collins, NASA, public domain; frontal),
  `skimage/data/camera.png` (the cameraman; profile, grey), matplotlib
  `mpl-data/sample_data/grace_hopper.jpg` (US Navy photo, public domain; frontal, glasses).
  Each is scored at its own size and enlarged to 1920 pixels wide.
- Composite "group" scenes, 1920x1080 (plainly composites: no packaged group photo exists):
  the three faces above with their surroundings, feathered into face-free packaged photos,
  6 per scene (one per cell of a 3x2 grid) at face widths 24-200 px, in-plane rotation
  -35..35 degrees, brightness x0.35 to x1.4, mirrored at random; the true box is the
  hand-checked box scaled and moved with
  the face. Out-of-plane turns come only from the real profile (camera.png).
- Face-free photos (every box is a false positive): scikit-image's coffee, chelsea (a cat),
  rocket, horse, hubble_deep_field, retina, brick, grass, gravel, coins, page, text,
  immunohistochemistry, each at its own size and enlarged to 1920 pixels wide.

A detection is a hit when its IoU with a true box is >= --iou (0.4: detectors draw boxes of
different extent around the same face, an SSD box reaches the hairline, a Haar box is square).
Speed: median milliseconds of `detect` on the 1920x1080 scenes, after one warm-up call.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import time

import cv2
import matplotlib.cbook
import numpy as np
import skimage.data
from absl import app, flags
from PIL import Image

from grefel_jax.inference import faces

FLAGS = flags.FLAGS
flags.DEFINE_integer("scenes", 6, "Composite 1920x1080 scenes (the README table: 6).")
flags.DEFINE_integer("faces_per_scene", 6, "Faces pasted into each scene.")
flags.DEFINE_float("iou", 0.4, "Smallest IoU of a hit.")
flags.DEFINE_integer("seed", 0, "Seed of the composites.")
flags.DEFINE_string("output", None, "Also write the results as JSON here.")

# Hand-checked face boxes (x, y, w, h) in the packaged photos.
REAL_FACES = {
    "skimage:astronaut.png": (skimage.data.astronaut, (175, 60, 95, 115)),
    "skimage:camera.png": (skimage.data.camera, (198, 110, 64, 85)),
    "matplotlib:grace_hopper.jpg": (
        lambda: np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))),
        (180, 125, 170, 205),
    ),
}
FACE_FREE = [
    "coffee",
    "chelsea",
    "rocket",
    "horse",
    "hubble_deep_field",
    "retina",
    "brick",
    "grass",
    "gravel",
    "coins",
    "page",
    "text",
    "immunohistochemistry",
]
BACKGROUNDS = ["coffee", "rocket", "hubble_deep_field", "retina", "grass", "brick"]

CANDIDATES = {
    "haar (default: min face 10% of short side)": lambda: faces.FaceDetector(),
    "haar, min face 2%": lambda: faces.FaceDetector(min_face_fraction=0.02),
    "ssd 300x300 squashed (OpenCV sample)": lambda: _SquashedSsd(),
    "ssd long side 640, p>=0.5": lambda: faces.SsdDetector(input_size=640),
    "ssd long side 640, p>=0.8": lambda: faces.SsdDetector(input_size=640, score_threshold=0.8),
    "ssd long side 960, p>=0.5": lambda: faces.SsdDetector(input_size=960),
    "ssd long side 960, p>=0.8": lambda: faces.SsdDetector(input_size=960, score_threshold=0.8),
}


class _SquashedSsd(faces.SsdDetector):
    """The SSD as OpenCV's sample runs it: the whole image squashed to 300x300."""

    def detect(self, image):
        h, w = image.shape[:2]
        bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
        blob = cv2.dnn.blobFromImage(bgr, 1.0, (300, 300), faces.SSD_MEAN_BGR)
        net = self.load()
        net.setInput(blob)
        rows = np.reshape(net.forward(), (-1, 7))
        rows = rows[rows[:, 2] >= self.score_threshold]
        c = np.clip(rows[:, 3:7], 0, 1) * [w, h, w, h]
        return [
            faces.FaceBox(int(a), int(b), int(x - a), int(y - b), float(s))
            for (a, b, x, y), s in zip(c, rows[:, 2])
        ]


def rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, -1)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8)


def to_width(image: np.ndarray, width: int = 1920) -> tuple[np.ndarray, float]:
    scale = width / image.shape[1]
    size = (width, int(round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_CUBIC), scale


def background(name: str, rng: np.random.Generator) -> np.ndarray:
    image = rgb(getattr(skimage.data, name)())
    scale = max(1920 / image.shape[1], 1080 / image.shape[0])
    size = (int(np.ceil(image.shape[1] * scale)), int(np.ceil(image.shape[0] * scale)))
    image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    y = rng.integers(0, image.shape[0] - 1080 + 1)
    x = rng.integers(0, image.shape[1] - 1920 + 1)
    return image[y : y + 1080, x : x + 1920].copy()


def composite(rng: np.random.Generator, count: int) -> tuple[np.ndarray, list[tuple]]:
    """One 1920x1080 scene with `count` pasted faces and their true boxes."""
    canvas = background(BACKGROUNDS[rng.integers(len(BACKGROUNDS))], rng).astype(np.float32)
    sources = [(rgb(load()), box) for load, box in REAL_FACES.values()]
    truths = []
    cols, rows = 3, 2  # One face per cell: pasted faces never overlap.
    cells = rng.permutation(cols * rows)[:count] if count <= cols * rows else range(count)
    for cell in cells:
        image, (bx, by, bw, bh) = sources[rng.integers(len(sources))]
        face_w = float(np.exp(rng.uniform(np.log(24), np.log(200))))
        scale = face_w / bw
        angle = float(rng.uniform(-35, 35))
        gain = float(rng.uniform(0.35, 1.4))
        # The face with 0.45 of its size of context on each side, as a square patch small
        # enough (<= 540 px) for one cell of the 3x2 grid: patches never cover each other.
        side = int(round(max(bw, bh) * 1.9))
        cx, cy = bx + bw / 2, by + bh / 2
        matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        out_side = int(round(side * scale))
        matrix[:, 2] += np.array([out_side / 2 - cx, out_side / 2 - cy])
        patch = cv2.warpAffine(
            image, matrix, (out_side, out_side), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT
        ).astype(np.float32)
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        patch = np.clip(patch * gain, 0, 255)
        # Feathered ellipse around the face: no hard square edge for a detector to latch on.
        yy, xx = np.mgrid[:out_side, :out_side] / max(out_side - 1, 1) - 0.5
        alpha = np.clip((0.5 - np.sqrt(xx**2 + yy**2)) / 0.12, 0, 1)[..., None]
        col, row = cell % cols, cell // cols
        cell_w, cell_h = 1920 // cols, 1080 // rows
        ox = col * cell_w + rng.integers(0, max(1, cell_w - out_side))
        oy = row * cell_h + rng.integers(0, max(1, cell_h - out_side))
        ox, oy = min(ox, 1920 - out_side), min(oy, 1080 - out_side)
        region = canvas[oy : oy + out_side, ox : ox + out_side]
        canvas[oy : oy + out_side, ox : ox + out_side] = alpha * patch + (1 - alpha) * region
        w, h = bw * scale, bh * scale
        truths.append((ox + out_side / 2 - w / 2, oy + out_side / 2 - h / 2, w, h))
    return canvas.astype(np.uint8), truths


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter)


def score(boxes: list, truths: list, threshold: float) -> tuple[int, int]:
    """(hits, false positives): greedy one-to-one matching, surest box first."""
    boxes = sorted(boxes, key=lambda b: -(b.score or 0.0))
    free = list(truths)
    hits = 0
    for box in boxes:
        best = max(free, key=lambda t: iou(box.as_tuple(), t), default=None)
        if best is not None and iou(box.as_tuple(), best) >= threshold:
            free.remove(best)
            hits += 1
    return hits, len(boxes) - hits


def main(argv):
    del argv
    rng = np.random.default_rng(FLAGS.seed)
    real = []
    for name, (load, box) in REAL_FACES.items():
        image = rgb(load())
        real.append((name, image, [box]))
        big, s = to_width(image)
        real.append((name + "@1920", big, [tuple(v * s for v in box)]))
    scenes = [composite(rng, FLAGS.faces_per_scene) for _ in range(FLAGS.scenes)]
    free = []
    for name in FACE_FREE:
        image = rgb(getattr(skimage.data, name)())
        free += [(name, image), (name + "@1920", to_width(image)[0])]

    pressure_before = pathlib.Path("/proc/pressure/cpu").read_text().strip()
    results = {}
    for label, make in CANDIDATES.items():
        detector = make()
        detector.detect(scenes[0][0])  # Warm-up: loads the model, allocates.
        row = {}
        hits = sum(score(detector.detect(im), t, FLAGS.iou)[0] for _, im, t in real)
        row["real_recall"] = hits / len(real)
        row["real_missed"] = [n for n, im, t in real if not score(detector.detect(im), t, 0.4)[0]]
        times, hits, fps = [], 0, 0
        for image, truths in scenes:
            start = time.perf_counter()
            boxes = detector.detect(image)
            times.append(time.perf_counter() - start)
            h, f = score(boxes, truths, FLAGS.iou)
            hits, fps = hits + h, fps + f
        row["composite_recall"] = hits / sum(len(t) for _, t in scenes)
        row["composite_false_per_image"] = fps / len(scenes)
        free_boxes = {n: len(detector.detect(im)) for n, im in free}
        row["face_free_false_per_image"] = sum(free_boxes.values()) / len(free)
        row["face_free_false_by_image"] = {n: c for n, c in free_boxes.items() if c}
        row["ms_per_1920x1080"] = 1000 * float(np.median(times))
        results[label] = row
        print(
            f"{label:45s} real recall {row['real_recall']:.2f}  composite recall "
            f"{row['composite_recall']:.2f}  FP/img composite "
            f"{row['composite_false_per_image']:.2f} face-free "
            f"{row['face_free_false_per_image']:.2f}  {row['ms_per_1920x1080']:.0f} ms",
            flush=True,
        )
    pressure_after = pathlib.Path("/proc/pressure/cpu").read_text().strip()
    cpu = next(
        (line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line),
        platform.processor(),
    )
    summary = {
        "machine": f"{cpu}, {os.cpu_count()} logical CPUs",
        "cv2": cv2.__version__,
        "cpu_pressure_before": pressure_before,
        "cpu_pressure_after": pressure_after,
        "real_images": len(real),
        "composite_scenes": len(scenes),
        "composite_faces": sum(len(t) for _, t in scenes),
        "face_free_images": len(free),
        "iou_threshold": FLAGS.iou,
        "detectors": results,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "detectors"}, indent=1))
    if FLAGS.output:
        pathlib.Path(FLAGS.output).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(FLAGS.output).write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)
