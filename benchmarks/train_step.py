r"""Images per second of one training step (forward + backward + optimizer), per variant.

  python benchmarks/train_step.py --variants paper,tiny --batch_size 32 --steps 10 \
      --output benchmarks/results/train_step.json [--sam] [--compute_dtype bfloat16]

Random inputs; the step is the one training runs (`trainer.build_trainer`: GReFEL head and
losses, Adam, SAM if asked, jitted with the same shardings over all local devices). Compilation and
two warm-up steps are excluded from the timing.
"""

from __future__ import annotations

import json
import pathlib
import platform
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

from grefel_jax import sharding
from grefel_jax.configs import base
from grefel_jax.trainer import build_trainer

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", ["paper", "tiny"], "Model variants to time.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_integer("steps", 10, "Timed steps.")
flags.DEFINE_integer("num_classes", 7, "Classes of the head.")
flags.DEFINE_bool("sam", False, "SAM (two forward/backward passes per step, POSTER++ recipe).")
flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")
flags.DEFINE_integer("fsdp", 1, "FSDP axis size of the mesh (the rest is data parallel).")
flags.DEFINE_string("output", "benchmarks/results/train_step.json", "JSON output path.")


def time_variant(variant: str) -> dict:
    """Compiles and times the train step of one variant; returns a result record."""
    config = base.get_base_config()
    config.model.variant = variant
    config.compute_dtype = FLAGS.compute_dtype
    config.optim.sam = FLAGS.sam
    config.mesh.data, config.mesh.fsdp = -1, FLAGS.fsdp
    config.batch_size = FLAGS.batch_size
    config.num_train_steps = 1000
    config.loss.class_weighting = False  # random labels: no split to count
    mesh = sharding.make_mesh(config.mesh)
    trainer = build_trainer(
        config, common.random_dataset(FLAGS.num_classes, FLAGS.batch_size), mesh
    )
    state = trainer.init_state(jax.random.key(0))
    step = trainer.step
    model_config = trainer.model_config
    abstract = trainer.abstract_state
    size = model_config.backbone.image_size
    rng = np.random.default_rng(0)
    local = FLAGS.batch_size // jax.process_count()
    batch = sharding.host_local_to_global(
        {
            "image": rng.normal(size=(local, size, size, 3)).astype(np.float32),
            "label": rng.integers(0, FLAGS.num_classes, size=local).astype(np.int32),
        },
        mesh,
    )
    start = time.perf_counter()
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    for _ in range(2):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    seconds = (time.perf_counter() - start) / FLAGS.steps
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.params))
    return {
        "variant": variant,
        "batch_size": FLAGS.batch_size,
        "image_size": size,
        "sam": FLAGS.sam,
        "compute_dtype": FLAGS.compute_dtype,
        "mesh": dict(mesh.shape),
        "parameters": params,
        "compile_and_first_step_s": round(compile_s, 2),
        "step_s": seconds,
        "images_per_s": FLAGS.batch_size / seconds,
        "loss": float(metrics["loss"]),
    }


def main(argv):
    del argv
    results = []
    for variant in FLAGS.variants:
        record = time_variant(variant)
        results.append(record)
        print(
            f"{variant:>6}: {record['images_per_s']:9.1f} images/s "
            f"({record['step_s'] * 1000:.1f} ms/step, batch {FLAGS.batch_size}, "
            f"{record['image_size']}px, sam={FLAGS.sam}, {FLAGS.compute_dtype})"
        )
    device = jax.devices()[0]
    report = {
        "benchmark": "train_step",
        "device": {
            "platform": device.platform,
            "kind": device.device_kind,
            "count": jax.device_count(),
        },
        "host": platform.node(),
        "jax": jax.__version__,
        "results": results,
    }
    if jax.process_index() == 0:
        path = pathlib.Path(FLAGS.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        print(f"Wrote {path}")


if __name__ == "__main__":
    app.run(main)
