"""MobileFaceNet landmark checkpoints -> the `face_landback` module (docs/checkpoints.md §6b).

`mobilefacenet_model_best.pth.tar` of pytorch_face_landmark holds its weights under
`state_dict` (POSTER++ loads them strictly); the GDC landmark head `output_layer.*` is dropped
(POSTER++ computes it and throws the result away). ARBEx-named copies (`path_1/2/3`, no GDC
head) are accepted too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from grefel_jax.convert.arbex_names import ARBEX_RULES
from grefel_jax.convert.common import Array, Source, with_prefix, wrong_kind


def mobilefacenet_sources(state: Mapping[str, Array], file: str) -> dict[str, Source]:
    """Canonical (`face_landback.*`) sources of a MobileFaceNet state_dict."""
    keys = list(state)
    if "conv1.conv.weight" in state and "conv_6_sep.conv.weight" in state:
        return with_prefix(state, file, [(r"^", "face_landback.")])
    if "path_1.0.net.0.weight" in state:
        return with_prefix(state, file, ARBEX_RULES, prefix="landmark.")
    raise wrong_kind(file, keys, "MobileFaceNet")


# The whole landmark network, GDC head included, both ways (landmark pretraining,
# `grefel_jax.landmarks`): pytorch_face_landmark names <-> our `face_landback` variables.
# The names differ only in `model.N` (torch Sequential) <-> `model_N`, and in the leaves:
# conv/linear `weight` <-> `kernel` (OIHW <-> HWIO, (out, in) <-> (in, out)), BatchNorm
# `weight` <-> `scale`, `running_mean/var` <-> batch_stats `mean/var`; PReLU keeps `weight`.


def landmark_net_from_state_dict(state: Mapping[str, Array]) -> dict[str, dict]:
    """A pytorch_face_landmark MobileFaceNet state_dict (`mobilefacenet_model_best.pth.tar`'s
    `state_dict`, GDC head included) -> `{'params', 'batch_stats'}` of `LandmarkNet`
    (everything under `face_landback`). `num_batches_tracked` is dropped."""
    params, stats = {}, {}
    for key, value in state.items():
        *module, leaf = key.split(".")
        if leaf == "num_batches_tracked":
            continue
        path = []
        for part in module:  # `.N` joins the name before it: `model.0` -> `model_0`
            if part.isdigit():
                path[-1] = f"{path[-1]}_{part}"
            else:
                path.append(part)
        value = np.asarray(value, np.float32)
        if leaf in ("running_mean", "running_var"):
            stats[("face_landback", *path, leaf[len("running_") :])] = value
        elif leaf == "weight" and value.ndim == 4:
            params[("face_landback", *path, "kernel")] = value.transpose(2, 3, 1, 0)
        elif leaf == "weight" and value.ndim == 2:
            params[("face_landback", *path, "kernel")] = value.T
        elif leaf == "weight" and path[-1] == "bn":
            params[("face_landback", *path, "scale")] = value
        else:  # PReLU `weight`, BatchNorm `bias`
            params[("face_landback", *path, leaf)] = value
    return {"params": unflatten_dict(params), "batch_stats": unflatten_dict(stats)}


def landmark_net_to_state_dict(variables: Mapping[str, Mapping]) -> dict[str, Array]:
    """Inverse of `landmark_net_from_state_dict`, with `num_batches_tracked` = 0 so that
    PyTorch's strict `load_state_dict` accepts it."""
    state = {}
    trees = (("params", variables["params"]), ("stats", variables["batch_stats"]))
    for collection, tree in trees:
        for path, value in flatten_dict(tree["face_landback"]).items():
            *module, leaf = path
            prefix = ".".join(re.sub(r"^model_(\d+)$", r"model.\1", m) for m in module)
            value = np.asarray(value)
            if collection == "stats":
                state[f"{prefix}.running_{leaf}"] = value
                state[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
            elif leaf == "kernel":
                conv = value.ndim == 4
                state[f"{prefix}.weight"] = value.transpose(3, 2, 0, 1) if conv else value.T
            elif leaf == "scale":
                state[f"{prefix}.weight"] = value
            else:
                state[f"{prefix}.{leaf}"] = value
    return state
