r"""Throughput, memory and MFU of the paper-size model on one accelerator (or a CPU smoke run).

  bash benchmarks/accelerator.sh            # the full grid, < 8 minutes on one H100/H200
  bash benchmarks/accelerator.sh --smoke    # tiny one-unit model on CPU, seconds (test suite)

Grid (full): the train step of `build_trainer` (GReFEL head and losses) for compute dtype
{bfloat16, float32} x batch {128, 256} x optimizer {Adam, SAM}, and eval-mode inference at
batch 256 and 1, at 224x224. Each case is compiled ahead of time (`jit(...).lower().compile()`),
so XLA's cost analysis of the very executable that is timed gives the FLOPs per call; MFU =
FLOPs / time / the device's peak for that dtype (`PEAK_FLOPS`; the float32 peak is the TF32
tensor-core rate, because XLA:GPU runs float32 matmuls and convolutions on TF32 by default).
Peak device memory is `memory_stats()['peak_bytes_in_use']` where the backend reports it
(GPU, TPU; not CPU), read after each case; it is the process-wide peak so far, so the cases run
smallest first.

Prints one line per case and `images_per_s=...` summaries; writes JSON to `$OUT/accelerator.json`
when `OUT` is set, else to `--output`.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

from grefel_jax import settings, sharding  # noqa: E402
from grefel_jax.configs import base  # noqa: E402
from grefel_jax.models import GReFEL, init_variables  # noqa: E402
from grefel_jax.trainer import build_trainer  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_bool("smoke", False, "Tiny one-unit model, batch 2, float32, on any backend.")
flags.DEFINE_integer("steps", 10, "Timed calls per case (after one warm-up call).")
flags.DEFINE_string("output", "benchmarks/results/accelerator.json", "JSON path without $OUT.")

# Dense peak FLOP/s per device kind (substring of `device_kind`) and compute dtype, from the
# vendors' data sheets (SXM parts; without sparsity). float32 = TF32 tensor cores.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
}


def peak_flops(device_kind: str, dtype: str) -> float | None:
    """The PEAK_FLOPS entry whose key occurs in `device_kind`, or None (e.g. CPUs)."""
    for key, peaks in PEAK_FLOPS.items():
        if key.lower() in device_kind.lower():
            return peaks[dtype]
    return None


def peak_memory_bytes() -> int | None:
    """Peak bytes in use on device 0 so far, or None where the backend does not say."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def flops_of(compiled) -> float | None:
    """FLOPs per call from XLA's cost analysis of a compiled executable (None if absent)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list):  # older jax: one dict per partition
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops")
    return float(flops) if flops else None


def time_calls(call, steps: int) -> float:
    """Seconds per call of `call()` (which blocks), median over `steps` calls after a warm-up."""
    call()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def make_config(variant: str, dtype: str, batch: int, sam: bool, smoke: bool):
    """The base config at `variant` with the GReFEL head, on all local devices as data
    parallel; the smoke run uses the one-unit backbone of the training tests."""
    config = base.get_base_config()
    config.model.variant = variant
    config.compute_dtype = dtype
    config.optim.sam = sam
    config.mesh.data, config.mesh.fsdp = -1, 1
    config.batch_size = batch
    config.num_train_steps = 1000
    config.loss.class_weighting = False  # random labels: no split to count
    if smoke:
        config.model.backbone.image_size = 64
        config.model.backbone.ir_units = (1, 1, 1)
        config.model.backbone.vit_depth = 1
    return config


def train_case(variant, dtype, batch, sam, smoke, steps, device_kind) -> dict:
    """Compiles and times one train step configuration; returns its record."""
    config = make_config(variant, dtype, batch, sam, smoke)
    mesh = sharding.make_mesh(config.mesh)
    trainer = build_trainer(config, common.random_dataset(common.NUM_CLASSES, batch), mesh)
    state = trainer.init_state(jax.random.key(0))
    size = trainer.image_size
    rng = np.random.default_rng(0)
    data = trainer.global_batch(
        {
            "image": rng.normal(size=(batch, size, size, 3)).astype(np.float32),
            "label": rng.integers(0, common.NUM_CLASSES, size=batch).astype(np.int32),
        }
    )
    start = time.perf_counter()
    compiled = trainer.step.lower(state, data).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], data)
        jax.block_until_ready(metrics)

    seconds = time_calls(call, steps)
    record = {"kind": "train", "optimizer": "sam" if sam else "adam"}
    return record | finish(record, compiled, seconds, batch, dtype, device_kind, compile_s)


def infer_case(variant, dtype, batch, smoke, steps, device_kind) -> dict:
    """Compiles and times eval-mode inference at one batch size; returns its record."""
    config = make_config(variant, dtype, 1, False, smoke)
    model_config = settings.model_config(config, common.NUM_CLASSES)
    model = GReFEL(model_config, dtype=jnp.dtype(dtype))
    variables = init_variables(model, jax.random.key(0))
    size = model_config.backbone.image_size
    images = jnp.asarray(np.random.default_rng(0).normal(size=(batch, size, size, 3)), jnp.float32)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False)["corrected_probs"])
    start = time.perf_counter()
    compiled = apply.lower(variables, images).compile()
    compile_s = time.perf_counter() - start
    seconds = time_calls(lambda: jax.block_until_ready(compiled(variables, images)), steps)
    record = {"kind": "infer", "optimizer": None}
    return record | finish(record, compiled, seconds, batch, dtype, device_kind, compile_s)


def finish(record, compiled, seconds, batch, dtype, device_kind, compile_s) -> dict:
    """The measured fields of a case record, printed as one line."""
    flops = flops_of(compiled)
    peak = peak_flops(device_kind, dtype)
    fields = {
        "compute_dtype": dtype,
        "batch_size": batch,
        "compile_s": round(compile_s, 2),
        "step_s": seconds,
        "images_per_s": batch / seconds,
        "flops_per_call": flops,
        "achieved_tflops": flops / seconds / 1e12 if flops else None,
        "mfu": flops / seconds / peak if flops and peak else None,
        "peak_memory_gib": (peak_memory_bytes() or 0) / 2**30 or None,
    }
    mfu = f"{100 * fields['mfu']:.1f}%" if fields["mfu"] is not None else "n/a"
    memory = fields["peak_memory_gib"]
    print(
        f"{record['kind']:5s} {record['optimizer'] or '-':4s} {dtype:8s} batch {batch:4d}: "
        f"{fields['images_per_s']:9.1f} images/s, {1e3 * seconds:8.2f} ms/call, MFU {mfu}, "
        f"peak memory {f'{memory:.2f} GiB' if memory else 'n/a'} (compile {compile_s:.1f} s)",
        flush=True,
    )
    return fields


def main(argv):
    del argv
    device = jax.devices()[0]
    if FLAGS.smoke:
        variant, dtypes, batches, infer_batches = "tiny", ("float32",), (2,), (1,)
        optimizers = (False,)
    else:
        variant, dtypes, batches, infer_batches = (
            "paper",
            ("bfloat16", "float32"),
            (128, 256),
            (1, 256),
        )
        optimizers = (False, True)
    steps = 1 if FLAGS.smoke else FLAGS.steps
    kind = device.device_kind
    print(f"device: {kind} x {jax.device_count()} ({device.platform}), jax {jax.__version__}")
    results = []
    for dtype in dtypes:
        for batch in infer_batches:
            results.append(
                infer_case(variant, dtype, batch, FLAGS.smoke, steps, device.device_kind)
            )
        for sam in optimizers:
            for batch in batches:
                results.append(
                    train_case(variant, dtype, batch, sam, FLAGS.smoke, steps, device.device_kind)
                )
    report = {
        "benchmark": "accelerator",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "device_kind": device.device_kind,
        "platform": device.platform,
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "variant": variant,
        "smoke": FLAGS.smoke,
        "results": results,
    }
    out_dir = os.environ.get("OUT")
    path = pathlib.Path(out_dir) / "accelerator.json" if out_dir else pathlib.Path(FLAGS.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"Wrote {path}")
    best = max(r["images_per_s"] for r in results if r["kind"] == "train")
    print(f"images_per_s_train_best={best:.1f} cases={len(results)}")


if __name__ == "__main__":
    app.run(main)
