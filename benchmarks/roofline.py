r"""How close the CPU runs are to this machine's float32 peak: the floor under any speed-up.

  python benchmarks/roofline.py --variant paper --batch_size 32 \
      --vs_torch benchmarks/results/vs_torch_separate.json \
      --output benchmarks/results/roofline.json

1. The machine's sustained float32 matrix-product rate, measured on both sides (`jnp.dot` under
   jit and `torch.mm`, square N x N, medians of `--reps` calls after a warm-up): the best
   either framework reaches is the practical peak P (GFLOP/s).
2. The model's FLOPs from XLA's cost analysis of the forward pass (grefel_jax.models.summary),
   F per image for the whole model and L for the frozen landmark network alone. A train step
   costs about 3F - 2L per image (forward, plus a backward of twice the forward FLOPs for
   everything except the frozen landmark network, whose gradient nobody takes).
3. Lower bounds at batch B: inference B F / P, train step B (3F - 2L) / P. With a `vs_torch`
   report it prints each side's fraction of P and what a speed-up of `--target` over PyTorch
   would ask: the time it allows and the fraction of P that time means.

The last line is `peak_gflops=<P> infer_floor_s=<x> train_floor_s=<x>`.
"""

from __future__ import annotations

import json
import os
import pathlib
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

from grefel_jax.models import names  # noqa: E402
from grefel_jax.models.config import make_model_config  # noqa: E402
from grefel_jax.models.mobilefacenet import MobileFaceNet  # noqa: E402
from grefel_jax.models.summary import flops_per_image  # noqa: E402

FLAGS = flags.FLAGS
# --variant is defined by grefel_jax.models.summary (imported above), the same meaning.
flags.DEFINE_integer("batch_size", 32, "Batch size of the bounds.")
flags.DEFINE_list("sizes", ["1024", "2048", "4096"], "Matrix sides N of the peak measurement.")
flags.DEFINE_integer("reps", 5, "Timed calls per size and framework.")
flags.DEFINE_float("target", 1.3, "Speed-up over PyTorch to translate into a time.")
flags.DEFINE_string("vs_torch", None, "A benchmarks/vs_torch.py JSON report to compare with.")
flags.DEFINE_string("output", "benchmarks/results/roofline.json", "JSON output path.")


def _median_seconds(call, reps: int) -> float:
    call()  # warm-up (and compilation)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(n: int, reps: int) -> dict:
    """GFLOP/s of an n x n float32 product in JAX and in PyTorch (2 n^3 FLOPs)."""
    import torch

    torch.set_num_threads(os.cpu_count())
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    ja, jb = jnp.asarray(a), jnp.asarray(b)
    dot = jax.jit(jnp.dot)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    flops = 2.0 * n**3
    with torch.no_grad():
        torch_s = _median_seconds(lambda: torch.mm(ta, tb), reps)
    jax_s = _median_seconds(lambda: dot(ja, jb).block_until_ready(), reps)
    return {"n": n, "jax_gflops": flops / jax_s / 1e9, "torch_gflops": flops / torch_s / 1e9}


def landmark_flops_per_image(variant: str) -> int:
    """Forward FLOPs of the landmark network alone, on the model's (S/2, S/2) input."""
    cfg = make_model_config(variant, "poster", 7).backbone
    net = MobileFaceNet(cfg.dims[0], cfg.mfn_units, jnp.float32, name=names.LANDMARK_NET)
    half = cfg.image_size // 2
    image = jax.ShapeDtypeStruct((1, half, half, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: net.init(jax.random.PRNGKey(0), x), image)
    cost = jax.jit(lambda v, x: net.apply(v, x)).lower(variables, image).cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return int(cost["flops"])


def main(argv):
    del argv
    pressure_before = common.cpu_pressure()
    peaks = [matmul_gflops(int(n), FLAGS.reps) for n in FLAGS.sizes]
    peak = max(max(p["jax_gflops"], p["torch_gflops"]) for p in peaks)
    for p in peaks:
        print(f"matmul {p['n']}: jax {p['jax_gflops']:.0f} GFLOP/s, torch {p['torch_gflops']:.0f}")

    forward = flops_per_image(make_model_config(FLAGS.variant, "poster", 7))
    landmark = landmark_flops_per_image(FLAGS.variant)
    train = 3 * forward - 2 * landmark
    batch = FLAGS.batch_size
    floors = {"infer": batch * forward / (peak * 1e9), "train": batch * train / (peak * 1e9)}
    print(
        f"{FLAGS.variant}: forward {forward / 1e9:.2f} GFLOP/image (landmark net "
        f"{landmark / 1e9:.2f}), train step ~{train / 1e9:.2f} GFLOP/image; at batch {batch} "
        f"and {peak:.0f} GFLOP/s: inference >= {floors['infer']:.2f} s, "
        f"train step >= {floors['train']:.2f} s"
    )

    measured = {}
    if FLAGS.vs_torch:
        report = json.loads(pathlib.Path(FLAGS.vs_torch).read_text())
        if report.get("batch_size") != batch or report.get("variant") != FLAGS.variant:
            sys.exit(f"--vs_torch {FLAGS.vs_torch}: not {FLAGS.variant} at batch {batch}.")
        for kind, key in (("infer", "infer"), ("train", "train_adam_ce")):
            row = report["results"][key]
            torch_s, jax_s = row["torch"]["median_s"], row["jax"]["median_s"]
            allowed = torch_s / FLAGS.target
            measured[kind] = {
                "torch_s": torch_s,
                "jax_s": jax_s,
                "torch_fraction_of_peak": floors[kind] / torch_s,
                "jax_fraction_of_peak": floors[kind] / jax_s,
                "target_s": allowed,
                "target_fraction_of_peak": floors[kind] / allowed,
            }
            m = measured[kind]
            print(
                f"{kind}: PyTorch {torch_s:.2f} s ({m['torch_fraction_of_peak']:.0%} of peak), "
                f"ours {jax_s:.2f} s ({m['jax_fraction_of_peak']:.0%}); {FLAGS.target}x PyTorch "
                f"means {allowed:.2f} s = {m['target_fraction_of_peak']:.0%} of peak"
            )

    out = {
        "benchmark": "roofline",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpu": common.cpu_name(),
        "cores": os.cpu_count(),
        "jax": jax.__version__,
        "variant": FLAGS.variant,
        "batch_size": batch,
        "matmul": peaks,
        "peak_gflops": peak,
        "flops_per_image": {"forward": forward, "landmark_net": landmark, "train_step": train},
        "floor_s": floors,
        "vs_torch": FLAGS.vs_torch,
        "measured": measured,
        "pressure_before": pressure_before,
        "pressure_after": common.cpu_pressure(),
    }
    path = pathlib.Path(FLAGS.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(
        f"peak_gflops={peak:.1f} infer_floor_s={floors['infer']:.3f} "
        f"train_floor_s={floors['train']:.3f}"
    )


if __name__ == "__main__":
    app.run(main)
