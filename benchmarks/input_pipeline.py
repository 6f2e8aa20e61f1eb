r"""Input-pipeline throughput: images/s of decode + augment at 224, per worker process.

  python benchmarks/input_pipeline.py --data_dir /tmp/tfds --config demo_96 --seconds 10
  python benchmarks/input_pipeline.py --workers 0,1,2 --json runs/input_pipeline.json

Builds the synthetic_faces config first if it is not prepared. Reports, for each worker count,
images/s of the full training pipeline (decode from ArrayRecord, resize + random crop, flip,
random erasing, normalize, batch) and that number divided by max(workers, 1), plus the
synthetic generator's own rate on one core.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

from grefel_jax.data import config as data_config_lib
from grefel_jax.data import errors, pipeline
from grefel_jax.data import synthetic_faces as render
from grefel_jax.prepare import build as prepare

flags.DEFINE_string("data_dir", "/tmp/grefel_tfds", "TFDS data_dir.")
flags.DEFINE_string("config", "demo_96", "synthetic_faces builder config to read.")
flags.DEFINE_integer("image_size", 224, "Model input size to resize/crop to.")
flags.DEFINE_integer("batch_size", 32, "Batch size.")
flags.DEFINE_list("workers", ["0", "1", "2"], "Worker counts to measure.")
flags.DEFINE_float("seconds", 8.0, "Measuring time per setting (after one warm-up batch).")
flags.DEFINE_string("json", None, "Optional path to write the results as JSON.")
FLAGS = flags.FLAGS


def measure_pipeline(data_config, workers: int) -> float:
    cfg = data_config.copy_and_resolve_references()
    cfg.num_workers = workers
    it = pipeline.make_train_iterator(
        cfg, image_size=FLAGS.image_size, global_batch_size=FLAGS.batch_size, seed=0
    )
    next(it)  # warm-up: worker start-up and first reads
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < FLAGS.seconds:
        count += len(next(it)["label"])
    return count / (time.perf_counter() - start)


def measure_generator(size: int, n: int = 200) -> float:
    start = time.perf_counter()
    for i in range(n):
        render.render_face((1, 0, i), i % 7, size)
    return n / (time.perf_counter() - start)


def main(argv):
    del argv
    cfg = data_config_lib.get_data_config()
    cfg.data_dir, cfg.builder_config = FLAGS.data_dir, FLAGS.config
    try:
        pipeline.dataset_info(cfg)
    except errors.DatasetNotPreparedError:
        prepare.prepare("synthetic_faces", config=FLAGS.config, data_dir=FLAGS.data_dir)
    results = {"image_size": FLAGS.image_size, "batch_size": FLAGS.batch_size, "pipeline": []}
    for workers in map(int, FLAGS.workers):
        rate = measure_pipeline(cfg, workers)
        per_worker = rate / max(workers, 1)
        results["pipeline"].append(
            {"workers": workers, "images_per_s": rate, "images_per_s_per_worker": per_worker}
        )
        print(f"workers={workers}: {rate:8.1f} images/s  ({per_worker:8.1f} per worker)")
    for size in (64, 96, 224):
        rate = measure_generator(size)
        results[f"generator_{size}_images_per_s"] = rate
        print(f"synthetic_faces generator at {size}x{size}: {rate:8.1f} images/s (one core)")
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    app.run(main)
