r"""Images per second of one training step (forward + backward + optimizer), per variant.

  python benchmarks/train_step.py --variants paper,tiny --batch_size 32 --steps 10 \
      --output benchmarks/results/train_step.json [--sam] [--compute_dtype bfloat16]

Random inputs; the step is the real `train.train_step` (GReFEL head and losses, Adam, SAM if
asked) jitted with the same shardings as training over all local devices. Compilation and
two warm-up steps are excluded from the timing.
"""

from __future__ import annotations

import functools
import json
import pathlib
import platform
import sys
import time

import jax
import numpy as np
import optax
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import base  # noqa: E402
from grefel_jax import optim, sharding, train  # noqa: E402

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
    model_config = train.model_config_from(config, FLAGS.num_classes)
    model = train.make_model(config, model_config)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_size(FLAGS.batch_size, mesh)

    abstract = jax.eval_shape(
        lambda: train.init_state(jax.random.key(0), model=model, tx=optax.identity(), use_ema=False)
    )
    labels = optim.param_labels(abstract.params, freeze_image_backbone=False)
    tx, _ = optim.make_optimizer(config.optim, labels, steps_per_epoch=100, total_steps=1000)
    init_fn = functools.partial(train.init_state, model=model, tx=tx, use_ema=False)
    state_shardings = sharding.param_shardings(
        jax.eval_shape(init_fn, jax.random.key(0)), mesh, fsdp_min_size=config.mesh.fsdp_min_size
    )
    state = jax.jit(init_fn, out_shardings=state_shardings)(jax.random.key(0))
    step_fn = functools.partial(
        train.train_step,
        model=model,
        tx=tx,
        trainable=optim.trainable_mask(labels),
        total_steps=1000,
        class_weights=None,
        loss_config=train.loss_kwargs(config),
        sam_rho=0.05 if FLAGS.sam else 0.0,
        sam_adaptive=False,
        ema_decay=0.0,
    )
    batch_shardings = {k: sharding.batch_sharding(mesh) for k in ("image", "label")}
    step = jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=(0,),
    )
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
