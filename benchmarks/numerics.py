r"""The two numerical facts behind the full GReFEL head training from scratch (docs/numerics.md).

  python benchmarks/numerics.py --output benchmarks/results/numerics.json

1. **Signal at initialisation.** The batch standard deviation of the fusion ViT's output (the
   SE-gated CLS token the head reads), averaged over its dimensions, at `paper` size and at
   `tiny` size with the official fixed Linear init std 0.01 and with the width-scaled std
   (`model.backbone.vit_init_std=None`, 0.01 * sqrt(768 / vit_dim)). A readout whose spread
   is small against its mean gives the head nearly the same input for every face.
2. **Gradient under data parallelism.** The relative difference ||g_n - g_1|| / ||g_1|| of the
   full loss gradient (GReFEL head, all losses at tau = 0.5) when the same batch is split over
   n = 2 and 8 devices instead of one, with BatchNorm/LayerNorm variances computed in two passes
   (what the model does) and in one pass (Flax's default E[x^2] - E[x]^2), for both inits.

Random normal images, random labels, batch 32, float32, CPU (the script asks XLA for 8 host
devices itself). Nothing here is timed: the numbers are the same on a slow or a fast machine
up to float32 rounding of the reduction order.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import contextlib  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402

import flax.linen.normalization as flax_norm  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from grefel_jax import losses, settings  # noqa: E402
from grefel_jax.models import init_variables, make_model_config  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch_size", 32, "Batch size (divisible by 8).")
flags.DEFINE_bool("paper", True, "Also measure the init signal at paper size (slow on CPU).")
flags.DEFINE_string("output", "benchmarks/results/numerics.json", "JSON output path.")

INITS = {"fixed_0.01": 0.01, "width_scaled": None}


@contextlib.contextmanager
def one_pass_variance():
    """Makes every Flax BatchNorm/LayerNorm use the one-pass variance E[x^2] - E[x]^2."""
    original = flax_norm._compute_stats

    def patched(*args, **kwargs):
        kwargs["use_fast_variance"] = True
        return original(*args, **kwargs)

    flax_norm._compute_stats = patched
    try:
        yield
    finally:
        flax_norm._compute_stats = original


def _inputs(image_size: int, num_classes: int, batch_size: int):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch_size, image_size, image_size, 3)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=batch_size).astype(np.int32)
    return jnp.asarray(images), jnp.asarray(labels)


def readout_std(variant: str, backbone_overrides: dict | None = None) -> float:
    """Mean over dimensions of the batch std of the ViT output `embedding (B, vit_dim)`, for
    8 random images `(8, S, S, 3)` float32."""
    model_config = make_model_config(
        variant=variant, num_classes=7, backbone_overrides=backbone_overrides
    )
    model = settings.make_model(model_config)
    variables = init_variables(model, jax.random.key(0))
    images, _ = _inputs(model_config.backbone.image_size, 7, 8)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False, features_only=True))
    embedding = np.asarray(apply(variables, images)["embedding"], np.float64)
    return float(embedding.std(axis=0).mean())


def gradient_split_difference(vit_init_std, devices: int, one_pass: bool) -> float:
    """||g_n - g_1|| / ||g_1|| for the tiny model's full-loss gradient, n = `devices`."""
    model_config = make_model_config(
        variant="tiny", num_classes=7, backbone_overrides={"vit_init_std": vit_init_std}
    )
    model = settings.make_model(model_config)
    loss_config = losses.make_loss_config("grefel", {})
    variables = init_variables(model, jax.random.key(0))
    images, labels = _inputs(model_config.backbone.image_size, 7, FLAGS.batch_size)

    def loss_fn(params, images, labels):
        outputs, _ = model.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            images,
            train=True,
            rngs={"dropout": jax.random.key(1)},
            mutable=["batch_stats"],
        )
        loss, _ = losses.total_loss(
            outputs, labels, tau=0.5, config=loss_config, head_kind=model_config.head.kind
        )
        return loss

    def gradient(num_devices: int):
        mesh = jax.sharding.Mesh(np.array(jax.devices()[:num_devices]), ("data",))
        batch = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        grad = jax.jit(
            jax.grad(loss_fn),
            in_shardings=(replicated, batch, batch),
            out_shardings=replicated,
        )
        return jax.tree.leaves(grad(variables["params"], images, labels))

    with one_pass_variance() if one_pass else contextlib.nullcontext():
        single, split = gradient(1), gradient(devices)
    g1 = np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in single])
    gn = np.concatenate([np.ravel(np.asarray(g, np.float64)) for g in split])
    return float(np.linalg.norm(gn - g1) / np.linalg.norm(g1))


def _cpu_model() -> str:
    """The CPU's model name (Linux), else the platform's machine type."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv):
    del argv
    result = {
        "machine": f"{_cpu_model()}, {os.cpu_count()} cores",
        "jax": jax.__version__,
        "batch_size": FLAGS.batch_size,
        "readout_std": {},
        "gradient_split_rel_diff": {},
    }
    if FLAGS.paper:
        result["readout_std"]["paper"] = readout_std("paper")
    for name, std in INITS.items():
        result["readout_std"][f"tiny_{name}"] = readout_std("tiny", {"vit_init_std": std})
    for name, std in INITS.items():
        for variance in ("one_pass", "two_pass"):
            for devices in (2, 8):
                key = f"tiny_{name}_{variance}_{devices}dev"
                value = gradient_split_difference(std, devices, variance == "one_pass")
                result["gradient_split_rel_diff"][key] = value
                print(f"{key}: {value:.2e}", flush=True)
    print(json.dumps(result, indent=2))
    out = pathlib.Path(FLAGS.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
