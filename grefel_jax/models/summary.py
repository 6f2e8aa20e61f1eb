"""Parameter and FLOP summary of a model variant, without running it.

    python -m grefel_jax.models.summary --variant paper --head poster --num_classes 7

Prints the trainable-parameter count of every top-level module (BatchNorm running statistics
are state, not parameters, and are not counted), the total, and the forward FLOPs per image
from XLA's cost analysis of the lowered (uncompiled) program. The last line is machine
readable: `total_params=<int> flops_per_image=<int>`.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from absl import app, flags

from grefel_jax.models.config import HEAD_PRESETS, VARIANTS, ModelConfig, make_model_config
from grefel_jax.models.grefel import GReFEL, init_variables

_VARIANT = flags.DEFINE_enum("variant", "paper", sorted(VARIANTS), "Model size variant.")
_HEAD = flags.DEFINE_enum("head", "grefel", sorted(HEAD_PRESETS), "Head preset.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 7, "Number of classes C.")


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Parameters per top-level module (`{'VIT': 15472896, ...}`), from shapes only."""
    model = GReFEL(config)
    shapes = jax.eval_shape(lambda rng: init_variables(model, rng), jax.random.PRNGKey(0))
    return {
        name: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(subtree))
        for name, subtree in shapes["params"].items()
    }


def flops_per_image(config: ModelConfig) -> int:
    """Forward FLOPs of one `(1, S, S, 3)` image in eval mode, from XLA's cost analysis."""
    model = GReFEL(config)
    variables = jax.eval_shape(lambda rng: init_variables(model, rng), jax.random.PRNGKey(0))
    size = config.backbone.image_size
    image = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False)["probs"])
    cost = forward.lower(variables, image).cost_analysis()
    # Older jax returns a list with one dict per computation.
    if isinstance(cost, list | tuple):
        cost = cost[0]
    return int(cost["flops"])


def summary_lines(config: ModelConfig) -> list[str]:
    """The printed report, one string per line, ending with the machine-readable line."""
    counts = parameter_counts(config)
    total = sum(counts.values())
    flops = flops_per_image(config)
    width = max(len(name) for name in counts)
    lines = [f"{name:<{width}}  {count:>12,}" for name, count in sorted(counts.items())]
    lines += [
        f"{'total':<{width}}  {total:>12,}",
        f"forward GFLOPs per image (XLA cost analysis): {flops / 1e9:.3f}",
        f"total_params={total} flops_per_image={flops}",
    ]
    return lines


def main(argv):
    del argv
    config = make_model_config(_VARIANT.value, _HEAD.value, _NUM_CLASSES.value)
    print(f"variant={_VARIANT.value} head={_HEAD.value} num_classes={_NUM_CLASSES.value}")
    print(f"image_size={config.backbone.image_size}")
    for line in summary_lines(config):
        print(line)


if __name__ == "__main__":
    from grefel_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
