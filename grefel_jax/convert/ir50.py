"""IR-50 backbone checkpoints <-> the `ir_back` module (docs/checkpoints.md §6b, §6f).

Accepted namings (`--kind ir50`, GReFEL's three stages):
* face.evoLVe / POSTER V1 `ir50.pth`: `input_layer.*`, `body.N.*`, `output_layer.*`. Units
  are assigned to the three stages by the model's unit counts (paper: `body.0-2` -> body1,
  `body.3-6` -> body2, `body.7-20` -> body3); later units (the 512-channel fourth stage) and
  `output_layer` are dropped.
* POSTER++ `body1/body2/body3` naming (a renamed `new_ir50.pth`).
* ARBEx `net_1/net_2/net_3` naming (`pretrained/ir50.pth` of ARBEx).

The whole face.evoLVe identity network (`--kind ir50_identity`, `identity_sources`), both
ways: the `body.N` file with its fourth stage and `output_layer` fills the `IdentityNet`'s
`ir_back` completely (units past the third stage -> `body4_{N - sum(ir_units)}`,
`output_layer.0/3/4` -> `output_layer_0/3/4`), and a face.evoLVe head file fills
`margin_head/kernel (E, N)`: ArcFace / CosFace / SphereFace save `weight (N, E)` (it is
transposed), Am_softmax / CurricularFace save `kernel (E, N)` (copied). `output_layer`'s
Linear sees the stage-4 map flattened in PyTorch's (C, H, W) order, and our `IR50`
flattens in that order too, so its weight is only transposed, never permuted.
`identity_to_state_dicts` is the inverse (`python -m grefel_jax.convert.export_ir50`).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Mapping

import numpy as np

from grefel_jax.convert.arbex_names import ARBEX_RULES
from grefel_jax.convert.common import (
    UNUSED_PATTERNS,
    Array,
    ConversionError,
    FlatKey,
    Source,
    flatten,
    with_prefix,
    wrong_kind,
)

# The identity network uses the fourth stage and `output_layer`: not "unused" there.
IDENTITY_UNUSED_PATTERNS = tuple(
    (pattern, reason) for pattern, reason in UNUSED_PATTERNS if not pattern.startswith(r"^ir_back")
)
MARGIN_HEAD = "margin_head"  # = grefel_jax.models.identity.MARGIN_HEAD (no model import here)


def ir50_sources(
    state: Mapping[str, Array], file: str, ir_units: tuple[int, int, int]
) -> dict[str, Source]:
    """Canonical (`ir_back.*`) sources of an IR-50 state_dict in any of the three namings."""
    keys = list(state)
    if "input_layer.0.weight" not in state:
        raise wrong_kind(file, keys, "IR-50")
    if any(k.startswith("body.") for k in keys):
        return _body_sources(state, file, ir_units, stage4=False)
    if any(k.startswith("net_1.") for k in keys):
        return with_prefix(state, file, ARBEX_RULES, prefix="ir.")
    if any(k.startswith("body1.") for k in keys):
        return with_prefix(state, file, [(r"^", "ir_back.")])
    raise wrong_kind(file, keys, "IR-50")


def _body_sources(state, file, ir_units, *, stage4: bool) -> dict[str, Source]:
    bounds = [sum(ir_units[:s]) for s in range(4)]  # [0, u1, u1+u2, u1+u2+u3]

    def unit(m: re.Match) -> str:
        n = int(m[1])
        for stage in range(3):
            if bounds[stage] <= n < bounds[stage + 1]:
                return f"ir_back.body{stage + 1}.{n - bounds[stage]}."
        if stage4:
            return f"ir_back.body4.{n - bounds[3]}."
        return f"ir_back.stage4.{n}."  # on UNUSED_PATTERNS: dropped by name

    return with_prefix(state, file, [(r"^body\.(\d+)\.", unit), (r"^", "ir_back.")])


def identity_sources(
    state: Mapping[str, Array], file: str, ir_units: tuple[int, int, int]
) -> tuple[dict[str, Source], int, int]:
    """Canonical sources of a full face.evoLVe IR-50 file for the identity network.

    Args:
      state: the `body.N` state_dict (input_layer, every unit, output_layer).
      file: its path, for messages.
      ir_units: the model's units of stages 1-3; the units past them form stage 4.

    Returns:
      `(sources, stage4_units, embedding_dim)`: `ir_back.*` canonical sources, the number of
      fourth-stage units in the file and E (the rows of `output_layer.3.weight`).
    """
    keys = list(state)
    if "input_layer.0.weight" not in state:
        raise wrong_kind(file, keys, "IR-50")
    lacks = [
        what
        for what, present in (
            ("`body.N` units", any(k.startswith("body.") for k in keys)),
            ("`output_layer`", "output_layer.3.weight" in state),
        )
        if not present
    ]
    if lacks:
        raise ConversionError(
            f"{file}: has no {' and no '.join(lacks)}; --kind ir50_identity needs face.evoLVe's "
            "whole IR-50 (`input_layer`, every unit as `body.N`, `output_layer`). POSTER++ / "
            "ARBEx copies hold stages 1-3 only: use --kind ir50."
        )
    units = sorted({int(m[1]) for k in keys if (m := re.match(r"body\.(\d+)\.", k))})
    if units != list(range(len(units))):
        raise ConversionError(f"{file}: the `body.N` units are not numbered 0..{len(units) - 1}.")
    stage4_units = len(units) - sum(ir_units)
    if stage4_units < 1:
        raise ConversionError(
            f"{file}: {len(units)} units, but the model's stages 1-3 take {sum(ir_units)} "
            f"(ir_units={tuple(ir_units)}): no fourth stage left for the identity network "
            "(wrong --variant?)."
        )
    weight = state["output_layer.3.weight"]
    if np.ndim(weight) != 2:
        raise ConversionError(f"{file}: output_layer.3.weight of shape {np.shape(weight)}.")
    sources = _body_sources(state, file, ir_units, stage4=True)
    return sources, stage4_units, int(np.shape(weight)[0])


def identity_image_size(state: Mapping[str, Array], file: str, dims: tuple[int, int, int]) -> int:
    """S, the model input side that `output_layer.3.weight (E, C * s * s)` was made for.

    The fourth stage (C = 2 * dims[2] channels) ends on an `s x s` map with s = S / 32 (the
    input is sub-sampled by two, then each stage halves it): face.evoLVe's 112-pixel IR-50
    has s = 7, so S = 224 (the paper's); the 64-pixel tiny recipe has s = 2. The Linear is
    the only variable that depends on S, so the file itself says which S it belongs to.
    """
    shape = np.shape(state["output_layer.3.weight"])
    if len(shape) != 2:
        raise ConversionError(f"{file}: output_layer.3.weight of shape {shape}, not (E, C*s*s).")
    in_features = int(shape[1])
    channels = 2 * dims[2]
    side = int(round((in_features / channels) ** 0.5))
    if side < 1 or channels * side * side != in_features:
        raise ConversionError(
            f"{file}: output_layer.3.weight has {in_features} inputs, not {channels} channels "
            f"(2 * dims[2] of the model) times a square map: wrong --variant?"
        )
    return 32 * side


def margin_head_sources(
    state: Mapping[str, Array], file: str, embedding_dim: int
) -> tuple[dict[str, Source], dict[str, tuple[str, tuple[str, ...], bool]], int]:
    """Canonical `margin_head.*` sources of a face.evoLVe head file (`Head_*.pth`).

    ArcFace, CosFace and SphereFace hold `weight (N, E)` (used as `F.linear(normalize(x),
    normalize(weight))`, one row per identity); Am_softmax and CurricularFace hold
    `kernel (E, N)` (columns normalised), our layout.

    Returns:
      `(sources, explicit, num_identities)`; `explicit` maps a `weight` to
      `params/margin_head/kernel` transposed (for `fill_variables`).
    """
    keys = set(state)
    if keys == {"weight", "bias"}:
        raise ConversionError(
            f"{file}: a face.evoLVe Softmax head (weight and bias) is a plain classifier, not "
            "an angular margin head; only ArcFace / CosFace / SphereFace (`weight`) and "
            "Am_softmax / CurricularFace (`kernel`) heads convert."
        )
    if keys not in ({"weight"}, {"kernel"}):
        raise wrong_kind(file, keys, "face.evoLVe margin head")
    (key,) = keys
    value = state[key]
    # `weight` is (N, E); `kernel` is (E, N): the embedding axis must hold E.
    e_axis = 1 if key == "weight" else 0
    if np.ndim(value) != 2 or np.shape(value)[e_axis] != embedding_dim:
        layout = "(N, E)" if key == "weight" else "(E, N)"
        raise ConversionError(
            f"{file}: `{key}` of shape {np.shape(value)}, expected {layout} with "
            f"E = {embedding_dim} (the backbone's embedding width)."
        )
    canonical = f"{MARGIN_HEAD}.{key}"
    explicit = {}
    if key == "weight":
        explicit[canonical] = ("params", (MARGIN_HEAD, "kernel"), True)
    sources = {canonical: Source(value, file, key)}
    return sources, explicit, int(np.shape(value)[1 - e_axis])


def identity_expected_shapes(
    backbone, stage4_units: int, embedding_dim: int, num_identities: int
) -> dict[FlatKey, tuple[int, ...]]:
    """`{(collection, path): shape}` of every `IdentityNet` variable (traced, no compute)."""
    import jax
    import jax.numpy as jnp

    from grefel_jax.models.identity import IdentityHeadConfig, IdentityNet

    head = IdentityHeadConfig(
        stage4_units=stage4_units, embedding_dim=embedding_dim, num_identities=num_identities
    )
    model = IdentityNet(backbone, head)
    size = backbone.image_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    out = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in flatten(dict(shapes.get(collection, {}))).items():
            out[(collection, path)] = tuple(leaf.shape)
    return out


# Order of a face.evoLVe `Backbone.state_dict()`: modules in registration order
# (input_layer, output_layer, body; in a unit shortcut_layer before res_layer), leaves in
# PyTorch's order. POSTER++'s (commented-out) renaming to `body1/2/3` zips its own
# state_dict with the file's by position, so the order is part of the format.
_SECTIONS = {"input_layer": 0, "output_layer": 1, "body": 2}
_SUBLAYERS = {"shortcut_layer": 0, "res_layer": 1}
_LEAVES = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}


def _torch_order(key: str) -> tuple:
    parts = key.split(".")
    if parts[0] == "body":  # body.N.sublayer.k.leaf
        n, sub, k, leaf = parts[1:]
        return (_SECTIONS["body"], int(n), _SUBLAYERS[sub], int(k), _LEAVES[leaf])
    section, k, leaf = parts  # input_layer.k.leaf / output_layer.k.leaf
    return (_SECTIONS[section], -1, -1, int(k), _LEAVES[leaf])


def _torch_module(module: tuple[str, ...], unit_number: Mapping[str, int]) -> str:
    """Our `ir_back` module path -> its face.evoLVe module name."""
    head, *rest = module
    if head in unit_number:  # body{s}_{i} -> body.N
        names = [f"body.{unit_number[head]}"]
    else:
        names = []
        rest = list(module)
    for part in rest:
        m = re.fullmatch(r"(input_layer|output_layer|res_layer|shortcut_layer)_(\d+)", part)
        if m is None:
            raise ConversionError(f"ir_back/{'/'.join(module)}: not a face.evoLVe IR-50 module.")
        names.append(f"{m[1]}.{m[2]}")
    return ".".join(names)


def identity_to_state_dicts(
    variables: Mapping[str, Mapping], *, head_layout: str = "weight"
) -> tuple[dict[str, Array], dict[str, Array] | None]:
    """Our identity network's variables -> face.evoLVe's state_dicts (numpy, no torch).

    Args:
      variables: `{'params', 'batch_stats'}` holding `ir_back` with stages 1-4
        (`body{1..4}_{i}`) and `output_layer_{0,3,4}`, and optionally `margin_head`.
      head_layout: 'weight' (ArcFace / CosFace / SphereFace: `weight (N, E)`) or 'kernel'
        (Am_softmax / CurricularFace: `kernel (E, N)`).

    Returns:
      `(backbone, head)`: `backbone` in the order of face.evoLVe's `Backbone.state_dict()`
      (`input_layer.*`, `output_layer.*`, `body.0..`), Conv weights OIHW, Linear weights
      (out, in), BatchNorm `weight/bias/running_mean/running_var` and `num_batches_tracked`
      = 0 (int64; our BatchNorm keeps no step count); `head` = `{head_layout: ...}` or None
      without `margin_head`. float32 arrays as stored (no cast), so the round trip is exact.
    """
    if head_layout not in ("weight", "kernel"):
        raise ConversionError(f"head_layout={head_layout!r}: expected 'weight' or 'kernel'.")
    params = variables["params"].get("ir_back", {})
    stats = variables["batch_stats"].get("ir_back", {})
    units = []
    for name in params:
        m = re.fullmatch(r"body([1-4])_(\d+)", name)
        if m:
            units.append((int(m[1]), int(m[2]), name))
    for stage in (1, 2, 3, 4):
        found = sorted(i for s, i, _ in units if s == stage)
        if not found or found != list(range(len(found))):
            raise ConversionError(
                f"ir_back: stage {stage} units {found}, expected body{stage}_0..N-1; only the "
                "identity network (IR-50 with its fourth stage and output_layer) exports as "
                "face.evoLVe's ir50.pth."
            )
    unit_number = {name: n for n, (_, _, name) in enumerate(sorted(units))}
    state: dict[str, Array] = {}
    for path, value in flatten(dict(params)).items():
        *module, leaf = path
        prefix = _torch_module(tuple(module), unit_number)
        value = np.asarray(value)
        if leaf == "kernel" and value.ndim == 4:  # HWIO -> OIHW
            state[f"{prefix}.weight"] = value.transpose(3, 2, 0, 1)
        elif leaf == "kernel" and value.ndim == 2:  # (in, out) -> (out, in)
            state[f"{prefix}.weight"] = value.T
        elif leaf in ("scale", "weight"):  # BatchNorm scale, PReLU slopes
            state[f"{prefix}.weight"] = value
        elif leaf == "bias":
            state[f"{prefix}.bias"] = value
        else:
            raise ConversionError(f"params/ir_back/{'/'.join(path)}: unknown leaf {leaf!r}.")
    for path, value in flatten(dict(stats)).items():
        *module, leaf = path
        if leaf not in ("mean", "var"):
            raise ConversionError(f"batch_stats/ir_back/{'/'.join(path)}: unknown statistic.")
        prefix = _torch_module(tuple(module), unit_number)
        state[f"{prefix}.running_{leaf}"] = np.asarray(value)
        state[f"{prefix}.num_batches_tracked"] = np.zeros((), np.int64)
    for needed in ("output_layer.3.weight", "output_layer.4.running_mean"):
        if needed not in state:
            raise ConversionError(
                f"ir_back has no {needed.rsplit('.', 2)[0].replace('.', '_')}: only the "
                "identity network exports as face.evoLVe's ir50.pth."
            )
    backbone = collections.OrderedDict((k, state[k]) for k in sorted(state, key=_torch_order))
    head = None
    if MARGIN_HEAD in variables["params"]:
        kernel = np.asarray(variables["params"][MARGIN_HEAD]["kernel"])
        head = {head_layout: kernel.T if head_layout == "weight" else kernel}
    return backbone, head
