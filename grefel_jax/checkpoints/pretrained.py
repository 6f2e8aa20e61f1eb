"""`init_from`: merge pretrained (possibly partial) variables into freshly initialised ones."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath
from flax.traverse_util import flatten_dict, unflatten_dict

from grefel_jax.checkpoints.inference import load_inference_checkpoint
from grefel_jax.checkpoints.paths import CheckpointError
from grefel_jax.checkpoints.shapes import shape_problems

PyTree = Any

# Subtrees that pretrained checkpoints may hold but GReFEL does not build: the GDC landmark
# head of a landmark-pretraining workdir (`grefel_jax.landmarks.pretrain`), computed and
# thrown away by POSTER++. Left out when they are not in the model.
NOT_IN_GREFEL = (("face_landback", "output_layer"),)


def merge_pretrained(
    init_variables: Mapping[str, PyTree], path: str | epath.PathLike
) -> tuple[dict[str, PyTree], list[str]]:
    """Replaces the subtrees of `init_variables` that the checkpoint at `path` holds.

    Args:
      init_variables: freshly initialised `{'params', 'batch_stats'}` (jax or numpy arrays).
      path: an inference checkpoint (possibly partial) or a training workdir.

    Returns:
      `(variables, loaded_modules)`: the merged variables (numpy for loaded leaves) and the
      sorted top-level module names that were loaded. Subtrees on `NOT_IN_GREFEL` that the
      model lacks (a pretrained landmark head) are left out. Every loaded array must match the shape
      of the array it replaces; a mismatch or an unknown key raises CheckpointError naming
      `path`.
    """
    loaded, _, _ = load_inference_checkpoint(path, check_shapes=False)
    merged = {}
    modules: set[str] = set()
    problems = []
    for collection in ("params", "batch_stats"):
        base = flatten_dict(init_variables.get(collection, {}))
        new = flatten_dict(loaded.get(collection, {}))
        new = {
            k: v
            for k, v in new.items()
            if k in base or not any(k[: len(p)] == p for p in NOT_IN_GREFEL)
        }
        collection_problems = shape_problems(new, base, collection)
        problems += collection_problems
        if not collection_problems:
            for key, arr in new.items():
                base[key] = np.asarray(arr, dtype=base[key].dtype)
                modules.add(key[0])
        merged[collection] = unflatten_dict(base)
    if problems:
        raise CheckpointError(f"init_from={path}: " + "; ".join(problems[:10]))
    for collection in init_variables:
        merged.setdefault(collection, init_variables[collection])
    logging.info("init_from %s: loaded modules %s", path, sorted(modules))
    return merged, sorted(modules)
