"""Shared machinery of the converters: state_dict extraction, name mapping, strict filling.

Every converter first renames its source keys to **canonical names**: the PyTorch names of
the POSTER++ model (docs/state_dict_keys.md §A, without `module.`), e.g.
`ir_back.body2.0.res_layer.1.weight`. `fill_variables` then maps each canonical name to our
Flax variables (docs/checkpoints.md §6c):

  `a.N.b`                  -> module path `a_N/b` (`VIT.blocks.0` -> `VIT/blocks_0`)
  `embed_q.N` / `embed_k.N` -> `embed_q/conv_N` / `embed_k/conv_N`
  `VIT.head.linear`        -> `head/linear` (our heads are outside the ViT)
  `weight` (4-D conv, OIHW) -> `kernel` (HWIO), depthwise `(C,1,kh,kw)` -> `(kh,kw,1,C)`
  `weight` (2-D Linear)    -> `kernel` transposed
  `weight` (1-D)           -> `scale` (BatchNorm, LayerNorm) or `weight` (per-channel PReLU)
  `running_mean/var`       -> `batch_stats` `mean` / `var`
  other leaves             -> same name (`gamma1`, `relative_position_bias_table`, ...)

and is strict: every target must exist with the exact shape; every variable of the modules
being filled must receive a value; every source key must be used or be on the list of known
unused official parameters (`UNUSED_PATTERNS`), otherwise the conversion stops and names the
keys. `relative_position_index` buffers are not loaded: the model recomputes them, and the
file's copy is checked against the recomputed index.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from grefel_jax.convert.safe_load import load_torch_checkpoint

Array = np.ndarray
FlatKey = tuple[str, tuple[str, ...]]  # (collection, path)


class ConversionError(ValueError):
    """A source file that does not fit the requested conversion; the message says why."""


# Official parameters that exist in the released files but that no forward pass uses.
UNUSED_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"\.num_batches_tracked$", "BatchNorm step counter"),
    (r"^ir_back\.output_layer\.", "IR-50 output_layer (never run by POSTER++)"),
    (r"^ir_back\.stage4\.", "IR-50 fourth stage (removed in POSTER++)"),
    (r"^face_landback\.output_layer\.", "MobileFaceNet GDC landmark head (output discarded)"),
    (r"^VIT\.(patch_embed|CON1|IRLinear1|IRLinear2|eca_block)\.", "dead ViT parameter"),
    (r"^VIT\.blocks\.\d+\.conv\.", "dead ViT parameter (blocks.i.conv)"),
)


@dataclasses.dataclass
class Source:
    """One tensor of a source file: its canonical name, the file and the original key."""

    value: Array
    file: str
    key: str


@dataclasses.dataclass
class FillResult:
    """What `fill_variables` produced and what it skipped.

    Attributes:
      variables: `{'params': nested dict, 'batch_stats': nested dict}` of float32 numpy.
      used: original `file:key` of every loaded tensor.
      unused: `file:key -> reason` for source tensors deliberately not loaded.
      not_loaded: `collection/path` of model variables left for initialisation (allowed).
    """

    variables: dict[str, dict]
    used: list[str]
    unused: dict[str, str]
    not_loaded: list[str]


def read_state_dict(path: str | Path) -> dict[str, Array]:
    """Loads a checkpoint safely and returns its flat `{key: array}` state_dict.

    Accepts a plain state_dict, or a dict holding one under `state_dict` (POSTER++,
    pytorch_face_landmark) or `model`. A `module.` (DataParallel) prefix on every key is
    removed.
    """
    obj = load_torch_checkpoint(path)
    state = _find_state_dict(obj)
    if state is None:
        top = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise ConversionError(f"{path}: no state_dict of tensors found (top level: {top}).")
    keys = list(state)
    if keys and all(k.startswith("module.") for k in keys):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return dict(state)


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, np.ndarray) for v in obj.values())
    )


def _find_state_dict(obj: Any) -> Mapping[str, Array] | None:
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for name in ("state_dict", "model", "model_state_dict"):
            if _is_state_dict(obj.get(name)):
                return obj[name]
    return None


def describe_keys(keys: Iterable[str]) -> str:
    """A short guess of which official file a set of state_dict keys comes from."""
    keys = set(keys)
    has = lambda prefix: any(k.startswith(prefix) for k in keys)  # noqa: E731
    if has("face_landback.") or has("VIT."):
        return "a POSTER++ model checkpoint (use --kind poster_v2)"
    if has("landmark.path_") or has("ir.net_") or has("window_module."):
        return "an ARBEx vit.best.*.pth file (use --kind arbex)"
    if keys and all(k.startswith("net.") for k in keys):
        return "an ARBEx classifier.best.*.pth file (use --kind arbex)"
    if keys == {"anchors"}:
        return "an ARBEx anchors.best.*.pth file (use --kind arbex)"
    if has("attn_fn.") and has("Q."):
        return "an ARBEx SelfAttn state_dict (use --kind arbex)"
    if "input_layer.0.weight" in keys and (has("body.") or has("body1.") or has("net_1.")):
        if has("body.") and has("output_layer."):
            return (
                "an IR-50 backbone checkpoint (use --kind ir50, or --kind ir50_identity for "
                "the whole face.evoLVe identity network)"
            )
        return "an IR-50 backbone checkpoint (use --kind ir50)"
    if keys in ({"weight"}, {"kernel"}):
        return "a face.evoLVe margin head (use --kind ir50_identity with its backbone file)"
    if has("conv_23.") or has("conv_6_sep.") or has("path_1."):
        return "a MobileFaceNet landmark checkpoint (use --kind mobilefacenet)"
    sample = ", ".join(sorted(keys)[:5])
    return f"an unknown model (first keys: {sample})"


def wrong_kind(path: str | Path, keys: Iterable[str], kind: str) -> ConversionError:
    """The error for a file that is not of `kind`, naming what it looks like."""
    return ConversionError(f"{path}: not a {kind} file; it looks like {describe_keys(keys)}.")


Rule = tuple[str, str | Callable[[re.Match], str]]


def rename(key: str, rules: Sequence[Rule]) -> str:
    """Applies the first matching `(regex, replacement)` rule of `rules` to `key`.

    A replacement is a `re.sub` template or a function of the match.
    """
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return key


def unused_reason(
    canonical: str, patterns: Sequence[tuple[str, str]] = UNUSED_PATTERNS
) -> str | None:
    for pattern, reason in patterns:
        if re.search(pattern, canonical):
            return reason
    return None


# Nested dict <-> {path tuple: leaf}; flax's helpers, re-exported under the names used here.
flatten = traverse_util.flatten_dict
unflatten = traverse_util.unflatten_dict


def expected_shapes(model_config) -> dict[FlatKey, tuple[int, ...]]:
    """`{(collection, path): shape}` of every variable of the model (no compute)."""
    from grefel_jax.checkpoints import expected_variable_shapes

    shapes = expected_variable_shapes(model_config)
    out = {}
    for collection in ("params", "batch_stats"):
        for path, leaf in flatten(shapes.get(collection, {})).items():
            out[(collection, path)] = tuple(leaf.shape)
    return out


def _module_path(canonical: str) -> tuple[tuple[str, ...], str]:
    name = canonical
    name = re.sub(r"^VIT\.head\.", "head.", name)
    name = re.sub(r"^(embed_[qk])\.(\d+)\.", r"\1.conv_\2.", name)
    name = re.sub(r"\.(\d+)(?=\.)", r"_\1", name)
    *module, leaf = name.split(".")
    return tuple(module), leaf


def flax_target(
    canonical: str, expected: Mapping[FlatKey, tuple[int, ...]]
) -> tuple[FlatKey, str] | None:
    """`((collection, path), transform)` for a canonical name, or None if the model lacks it.

    `transform` is 'conv' (OIHW -> HWIO), 'linear' (transpose) or 'copy'.
    """
    module, leaf = _module_path(canonical)
    if leaf == "running_mean":
        candidates = [(("batch_stats", module + ("mean",)), "copy")]
    elif leaf == "running_var":
        candidates = [(("batch_stats", module + ("var",)), "copy")]
    elif leaf == "weight":
        candidates = [
            (("params", module + ("kernel",)), "kernel"),
            (("params", module + ("scale",)), "copy"),
            (("params", module + ("weight",)), "copy"),
        ]
    else:
        candidates = [(("params", module + (leaf,)), "copy")]
    for target, transform in candidates:
        if target in expected:
            return target, transform
    return None


def transform_value(value: Array, transform: str) -> Array:
    value = np.asarray(value)
    if transform == "kernel":
        if value.ndim == 4:  # Conv (O, I/groups, kh, kw) -> (kh, kw, I/groups, O).
            return value.transpose(2, 3, 1, 0)
        if value.ndim == 2:  # Linear (out, in) -> Dense (in, out).
            return value.T
        raise ConversionError(f"a kernel with {value.ndim} dims {value.shape}")
    if transform == "linear":
        return value.T
    return value


def fill_variables(
    sources: Mapping[str, Source],
    model_config,
    *,
    fill_modules: Iterable[str],
    explicit: Mapping[str, tuple[str, tuple[str, ...], bool]] | None = None,
    allow_missing: Iterable[str] = (),
    extra_unused: Mapping[str, str] | None = None,
    expected: Mapping[FlatKey, tuple[int, ...]] | None = None,
    unused_patterns: Sequence[tuple[str, str]] = UNUSED_PATTERNS,
) -> FillResult:
    """Builds the Flax variables of `fill_modules` from canonical-named sources, strictly.

    Args:
      sources: canonical name -> Source.
      model_config: the ModelConfig whose variables are filled.
      fill_modules: top-level module names to fill completely (e.g. {'ir_back'}).
      explicit: canonical name -> (collection, full flax path, transpose) overriding the
        generic rules (the ARBEx head map).
      allow_missing: `collection/path` prefixes that may stay unfilled (left to init).
      extra_unused: canonical name regex -> reason, beyond `unused_patterns`.
      expected: `{(collection, path): shape}` of the model being filled, when it is not
        the GReFEL model of `model_config` (the identity network of `--kind ir50_identity`:
        `ir_back` with its fourth stage and `output_layer`, and `margin_head`).
      unused_patterns: (canonical regex, reason) of the known unused official tensors;
        `UNUSED_PATTERNS` unless the model being filled uses some of them.

    Raises:
      ConversionError naming every unknown source key, missing variable or shape mismatch.
    """
    from grefel_jax.models.window_attention import relative_position_index

    if expected is None:
        expected = expected_shapes(model_config)
    fill_modules = set(fill_modules)
    explicit = dict(explicit or {})
    filled: dict[FlatKey, Array] = {}
    used, unused, unknown, problems = [], {}, [], []
    for canonical, src in sources.items():
        where = f"{src.file}:{src.key}"
        reason = unused_reason(canonical, unused_patterns)
        for pattern, why in (extra_unused or {}).items():
            if reason is None and re.search(pattern, canonical):
                reason = why
        if reason:
            unused[where] = reason
            continue
        if canonical.endswith("relative_position_index"):
            value = np.asarray(src.value)
            window = int(round(np.sqrt(value.shape[0]))) if value.ndim == 2 else 0
            if window < 1 or not np.array_equal(value, relative_position_index(window)):
                problems.append(f"{where}: differs from the standard Swin index; not convertible")
            unused[where] = "recomputed by the model (checked equal)"
            continue
        if canonical in explicit:
            collection, path, transpose = explicit[canonical]
            target, transform = (collection, path), ("linear" if transpose else "copy")
            if target not in expected:
                unknown.append(f"{where} (-> {collection}/{'/'.join(path)})")
                continue
        else:
            found = flax_target(canonical, expected)
            if found is None:
                unknown.append(where)
                continue
            target, transform = found
        if target[1][0] not in fill_modules:
            unknown.append(f"{where} (-> {target[0]}/{'/'.join(target[1])}, not being filled)")
            continue
        value = transform_value(src.value, transform)
        want = expected[target]
        if tuple(value.shape) != want:
            problems.append(
                f"{where}: shape {tuple(np.shape(src.value))} -> {tuple(value.shape)}, model "
                f"variable {target[0]}/{'/'.join(target[1])} has {want}"
            )
            continue
        if target in filled:
            problems.append(f"{where}: {target[0]}/{'/'.join(target[1])} filled twice")
            continue
        filled[target] = np.asarray(value, dtype=np.float32)
        used.append(where)

    allow = tuple(allow_missing)
    not_loaded, missing = [], []
    for target in expected:
        if target[1][0] in fill_modules and target not in filled:
            name = f"{target[0]}/{'/'.join(target[1])}"
            (not_loaded if name.startswith(allow) else missing).append(name)
    messages = []
    if unknown:
        messages.append(
            f"{len(unknown)} source tensor(s) neither used by the model nor on the list of "
            "known unused official parameters:\n    " + "\n    ".join(unknown[:20])
        )
    if missing:
        messages.append(
            f"{len(missing)} model variable(s) not filled by the source:\n    "
            + "\n    ".join(missing[:20])
        )
    if problems:
        messages.append("\n    ".join(["mismatches:"] + problems[:20]))
    if messages:
        raise ConversionError(
            "conversion failed (model variant and sizes: "
            f"{_describe_config(model_config)}):\n  " + "\n  ".join(messages)
        )
    variables = {"params": {}, "batch_stats": {}}
    for collection in variables:
        variables[collection] = unflatten(
            {path: v for (c, path), v in filled.items() if c == collection}
        )
    return FillResult(variables, used, unused, not_loaded)


def _describe_config(model_config) -> str:
    b, h = model_config.backbone, model_config.head
    return (
        f"image_size={b.image_size}, dims={b.dims}, ir_units={b.ir_units}, "
        f"mfn_units={b.mfn_units}, vit_dim={b.vit_dim}, head={h.kind}, "
        f"num_classes={h.num_classes}"
    )


def with_prefix(
    state: Mapping[str, Array], file: str, rules: Sequence[Rule], prefix: str = ""
) -> dict[str, Source]:
    """Canonical sources from a state_dict: `prefix + key`, then the first matching rule."""
    out = {}
    for key, value in state.items():
        canonical = rename(prefix + key, rules)
        if canonical in out:
            raise ConversionError(f"{file}: two keys map to {canonical}")
        out[canonical] = Source(value, file, key)
    return out
