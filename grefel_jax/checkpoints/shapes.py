"""Shape checks of checkpoint variables against a ModelConfig (traced, nothing computed)."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax.traverse_util import flatten_dict

from grefel_jax.checkpoints.paths import CheckpointError
from grefel_jax.models.config import ModelConfig

PyTree = Any


def expected_variable_shapes(model_config: ModelConfig) -> dict[str, PyTree]:
    """`{'params', 'batch_stats'}` of `jax.ShapeDtypeStruct` for a ModelConfig (no compute).

    Tracing the paper-size model takes seconds, and loading, converting and checking a
    checkpoint ask for the same config's shapes more than once: they are traced once per
    config and process; each call gets its own copy of the dicts.
    """
    return jax.tree.map(lambda s: s, _traced_shapes(model_config))


@functools.lru_cache(maxsize=8)
def _traced_shapes(model_config: ModelConfig) -> dict[str, PyTree]:
    from grefel_jax.models import GReFEL  # Local: the model imports are heavy.

    model = GReFEL(config=model_config)
    size = model_config.backbone.image_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
    rngs = {"params": jax.random.key(0), "dropout": jax.random.key(1)}
    shapes = jax.eval_shape(lambda r, x: model.init(r, x, train=False), rngs, images)
    return {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})}


def shape_problems(
    got: Mapping[tuple, Any], want: Mapping[tuple, Any], collection: str
) -> list[str]:
    """One line per key of `got` that `want` lacks or holds with another shape.

    Args:
      got / want: flattened (`flax.traverse_util.flatten_dict`) arrays or ShapeDtypeStructs.
      collection: 'params' or 'batch_stats', for the messages.
    """
    problems = []
    for key, arr in got.items():
        name = f"{collection}/{'/'.join(key)}"
        if key not in want:
            problems.append(f"{name}: not in the model")
        elif tuple(arr.shape) != tuple(want[key].shape):
            problems.append(
                f"{name}: shape {tuple(arr.shape)}, model expects {tuple(want[key].shape)}"
            )
    return problems


def check_variable_shapes(
    variables: Mapping[str, PyTree], model_config: ModelConfig, *, where: str
) -> None:
    """Raises CheckpointError naming `where` and the first mismatching arrays.

    Only the modules present in `variables` are checked, so partial checkpoints pass when
    what they hold fits.
    """
    expected = expected_variable_shapes(model_config)
    problems = []
    for collection in ("params", "batch_stats"):
        got = flatten_dict(variables.get(collection, {}))
        want = flatten_dict(expected.get(collection, {}))
        present_modules = {k[0] for k in got}
        problems += shape_problems(got, want, collection)
        for key in want:
            if key[0] in present_modules and key not in got:
                problems.append(f"{collection}/{'/'.join(key)}: missing")
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise CheckpointError(f"{where}: variables do not match the model config:\n  {shown}{more}")
