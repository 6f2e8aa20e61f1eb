"""`init_from`: merge pretrained (possibly partial) variables into freshly initialised ones."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from etils import epath
from flax.traverse_util import flatten_dict, unflatten_dict

from grefel_jax.checkpoints.inference import load_inference_checkpoint
from grefel_jax.checkpoints.paths import CheckpointError
from grefel_jax.checkpoints.shapes import shape_problems

PyTree = Any

# Subtrees that pretraining workdirs and official files hold but GReFEL does not build: the
# GDC landmark head of a landmark pretraining (computed and thrown away by POSTER++), and the
# fourth IR-50 stage, its embedding layer and the margin head of an identity pretraining
# (dropped by POSTER++). Left out when the model being initialised lacks them.
NOT_IN_GREFEL = (
    re.compile(r"^face_landback/output_layer(/|$)"),
    re.compile(r"^ir_back/body4_\d+(/|$)"),
    re.compile(r"^ir_back/output_layer_\d+(/|$)"),
    re.compile(r"^margin_head(/|$)"),
)
# `init_from` names of the pretrained backbones shipped inside the package
# (grefel_jax/assets/pretrained/<name>, rebuilt by `make pretrained`).
PACKAGED_PREFIX = "package:"


def packaged_dir() -> epath.Path:
    """The folder of the packaged pretrained backbones (grefel_jax/assets/pretrained)."""
    return epath.Path(__file__).parent.parent / "assets" / "pretrained"


def resolve_source(source: str) -> str:
    """A path for an `init_from` source: `package:NAME` -> the packaged backbone NAME."""
    source = str(source).strip()
    if not source.startswith(PACKAGED_PREFIX):
        return source
    name = source[len(PACKAGED_PREFIX) :]
    path = packaged_dir() / name
    if not path.is_dir():
        shipped = sorted(p.name for p in packaged_dir().glob("*") if p.is_dir())
        raise CheckpointError(
            f"init_from={source}: no packaged backbone {name!r}; shipped: {shipped} "
            "(`make pretrained` rebuilds them)."
        )
    return str(path)


def _left_out(key: tuple[str, ...], model_keys) -> bool:
    """Whether `key` is on `NOT_IN_GREFEL` and the model has none of its group. A model that
    builds the group (the identity network's `body4_*`) must match it key for key: a
    fourth stage of 2 units must not load silently into one of 1 unit."""
    path = "/".join(key)
    for pattern in NOT_IN_GREFEL:
        if pattern.match(path):
            return not any(pattern.match("/".join(k)) for k in model_keys)
    return False


def merge_pretrained(
    init_variables: Mapping[str, PyTree], path: str | epath.PathLike
) -> tuple[dict[str, PyTree], list[str]]:
    """Replaces the subtrees of `init_variables` that the checkpoint at `path` holds.

    Args:
      init_variables: freshly initialised `{'params', 'batch_stats'}` (jax or numpy arrays).
      path: an inference checkpoint (possibly partial), a training workdir (a GReFEL
        training, a landmark or an identity pretraining), or `package:NAME`.

    Returns:
      `(variables, loaded_modules)`: the merged variables (numpy for loaded leaves) and the
      sorted top-level module names that were loaded. Subtrees on `NOT_IN_GREFEL` are left
      out when the model has none of their group (GReFEL has no `body4_*`); a model that
      has the group must match it. Every loaded array must match the shape of the array it
      replaces; a mismatch or an unknown key raises CheckpointError naming `path`.
    """
    merged, loaded = _merge(init_variables, resolve_source(str(path)), str(path))
    return merged, sorted({key[0] for _, key in loaded})


def merge_pretrained_sources(
    init_variables: Mapping[str, PyTree], sources
) -> tuple[dict[str, PyTree], dict[str, list[str]]]:
    """`merge_pretrained` of several sources, e.g. an identity and a landmark pretraining.

    Args:
      init_variables: freshly initialised `{'params', 'batch_stats'}`.
      sources: paths (or `package:NAME`), merged in order.

    Returns:
      `(variables, {source: sorted top-level modules it loaded})`.

    Raises:
      CheckpointError: a source fails to load or fit, or two sources hold the same variable
        (the message names both sources and the variable): the result must not depend on
        the order of the list.
    """
    merged = {k: v for k, v in init_variables.items()}
    owner: dict[tuple[str, tuple[str, ...]], str] = {}
    modules: dict[str, list[str]] = {}
    for source in sources:
        merged, loaded = _merge(merged, resolve_source(str(source)), str(source))
        for key in loaded:
            if key in owner:
                raise CheckpointError(
                    f"init_from: {owner[key]} and {source} both hold {key[0]}/"
                    f"{'/'.join(key[1])}; give each module from one source only."
                )
            owner[key] = str(source)
        modules[str(source)] = sorted({key[1][0] for key in loaded})
    return merged, modules


def _merge(init_variables, path: str, name: str):
    """(merged variables, [(collection, key) loaded]) for one source."""
    loaded, _, _ = load_inference_checkpoint(path, check_shapes=False)
    merged = {}
    keys: list[tuple[str, tuple[str, ...]]] = []
    problems = []
    for collection in ("params", "batch_stats"):
        base = flatten_dict(init_variables.get(collection, {}))
        new = flatten_dict(loaded.get(collection, {}))
        new = {k: v for k, v in new.items() if k in base or not _left_out(k, base)}
        collection_problems = shape_problems(new, base, collection)
        problems += collection_problems
        if not collection_problems:
            for key, arr in new.items():
                base[key] = np.asarray(arr, dtype=base[key].dtype)
                keys.append((collection, key))
        merged[collection] = unflatten_dict(base)
    if problems:
        # Most often a config that changed the architecture (a smaller backbone for a quick
        # run) but kept a recipe's pretrained sources: say how to drop them.
        raise CheckpointError(
            f"init_from={name}: the model's architecture differs from this source "
            f"({len(problems)} mismatches: " + "; ".join(problems[:3]) + "); "
            "set --config.init_from='' to train from random weights"
        )
    for collection in init_variables:
        merged.setdefault(collection, init_variables[collection])
    logging.info("init_from %s: loaded modules %s", name, sorted({k[1][0] for k in keys}))
    return merged, keys
