r"""Inference latency of the exported artifacts against the jitted JAX model, on CPU.

  python benchmarks/export_speed.py --batch_sizes 1,32 --repeats 30 \
      --output benchmarks/results/export_speed.json

The model is the demo config's (`configs/demo.py`: `tiny` backbone at 64x64, full grefel
head), randomly initialised (timing does not depend on the weights), saved as an inference
checkpoint and exported with `grefel_jax.export` (batch-polymorphic StableHLO and ONNX).
Timed per batch size, on the same random normalized images: `Predictor`'s jitted forward
(what `predict` runs), the deserialized StableHLO artifact (jax), and the ONNX artifact on
onnxruntime's CPUExecutionProvider (default threads), both batch-polymorphic and (with
`--fixed_batch_onnx`, the default) exported at that batch size. Compilation / session creation and
three warm-up calls are excluded; the median (and quartiles) of `--repeats` calls are printed.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import tempfile
import time

import jax
import numpy as np
from absl import app, flags
from demo_checkpoint import random_demo_checkpoint

from grefel_jax.export import exporter, manifest, runtimes
from grefel_jax.inference.predictor import Predictor, forward

FLAGS = flags.FLAGS
flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes to time.")
flags.DEFINE_integer("repeats", 30, "Timed calls per batch size and runtime.")
flags.DEFINE_bool(
    "fixed_batch_onnx", True, "Also time an ONNX export with the batch size fixed (--batch N)."
)
flags.DEFINE_string("output", None, "Also write the results as JSON here.")

WARMUP = 3


def _time(call, repeats: int) -> dict:
    """Median and quartiles in ms of `call()` (which must block until its result is ready)."""
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1e3)
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return {"median_ms": float(median), "q1_ms": float(q1), "q3_ms": float(q3)}


def _onnx_nodes(path) -> int:
    import onnx

    return len(onnx.load(str(path)).graph.node)


def main(argv):
    del argv
    work = pathlib.Path(tempfile.mkdtemp(prefix="export_speed_"))
    random_demo_checkpoint(work / "checkpoint")
    result = exporter.export_checkpoint(str(work / "checkpoint"), work / "exported")
    if result.errors:
        raise SystemExit(f"export failed: {result.errors}")
    document = result.manifest
    predictor = Predictor.from_checkpoint(work / "checkpoint", detect=False)
    size = predictor.image_size
    runners = {
        fmt: runtimes.load_runtime(
            manifest.artifact_path(work / "exported", document, fmt), fmt, document
        )
        for fmt in ("stablehlo", "onnx")
    }
    runners_path = manifest.artifact_path(work / "exported", document, "onnx")
    rng = np.random.default_rng(0)
    rows = []
    for batch_size in (int(b) for b in FLAGS.batch_sizes):
        images = rng.standard_normal((batch_size, size, size, 3)).astype(np.float32)
        device_images = jax.device_put(images)
        candidates = {
            "jax_jit": lambda x=device_images: jax.block_until_ready(
                forward(predictor.variables, x, model=predictor.model)
            ),
            "stablehlo": lambda x=images: runners["stablehlo"](x),
            "onnxruntime_cpu": lambda x=images: runners["onnx"](x),
        }
        if FLAGS.fixed_batch_onnx:
            fixed_dir = work / f"exported_onnx_batch{batch_size}"
            fixed = exporter.export_checkpoint(
                str(work / "checkpoint"), fixed_dir, formats=("onnx",), batch=batch_size
            )
            if fixed.errors:
                raise SystemExit(f"fixed-batch export failed: {fixed.errors}")
            path = manifest.artifact_path(fixed_dir, fixed.manifest, "onnx")
            fixed_runtime = runtimes.load_runtime(path, "onnx", fixed.manifest)
            candidates["onnxruntime_cpu_fixed_batch"] = lambda x=images, r=fixed_runtime: r(x)
            nodes = _onnx_nodes(path)
            print(f"ONNX graph nodes: dynamic batch {_onnx_nodes(runners_path)}, fixed {nodes}")
        for name, call in candidates.items():
            timing = _time(call, FLAGS.repeats)
            timing.update(runtime=name, batch_size=batch_size)
            timing["images_per_s"] = batch_size / timing["median_ms"] * 1e3
            rows.append(timing)
            print(
                f"batch {batch_size:3d}  {name:28s} median {timing['median_ms']:8.2f} ms  "
                f"(q1 {timing['q1_ms']:.2f}, q3 {timing['q3_ms']:.2f})  "
                f"{timing['images_per_s']:8.1f} images/s",
                flush=True,
            )
    if FLAGS.output:
        out = {
            "model": "configs/demo.py (tiny, 64x64, grefel head), random init",
            "host": {"processor": platform.processor(), "cpus": os.cpu_count()},
            "versions": document["versions"],
            "repeats": FLAGS.repeats,
            "results": rows,
        }
        path = pathlib.Path(FLAGS.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
