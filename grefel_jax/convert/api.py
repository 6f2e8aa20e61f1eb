"""`convert()`: one entry point for every source kind (the CLI is a thin wrapper)."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from grefel_jax.convert import arbex as arbex_lib
from grefel_jax.convert.common import (
    UNUSED_PATTERNS,
    ConversionError,
    expected_shapes,
    fill_variables,
    read_state_dict,
    wrong_kind,
)
from grefel_jax.convert.ir50 import (
    IDENTITY_UNUSED_PATTERNS,
    MARGIN_HEAD,
    identity_expected_shapes,
    identity_image_size,
    identity_sources,
    ir50_sources,
    margin_head_sources,
)
from grefel_jax.convert.mobilefacenet import mobilefacenet_sources
from grefel_jax.convert.poster_v2 import poster_v2_num_classes, poster_v2_sources
from grefel_jax.models import names

KINDS = ("ir50", "ir50_identity", "mobilefacenet", "backbones", "poster_v2", "arbex")
# Head preset used when --head is not given.
DEFAULT_HEADS = {
    "ir50": "grefel",
    "ir50_identity": "grefel",
    "mobilefacenet": "grefel",
    "backbones": "grefel",
    "poster_v2": "poster",
    "arbex": "arbex_code",
}
# Number of --src files per kind: (min, max).
_NUM_FILES = {
    "ir50": (1, 1),
    "ir50_identity": (1, 2),
    "mobilefacenet": (1, 1),
    "backbones": (2, 2),
    "poster_v2": (1, 1),
    "arbex": (1, 4),
}


@dataclasses.dataclass
class Converted:
    """Result of a conversion: variables, their ModelConfig and the conversion record."""

    variables: dict[str, dict]
    model_config: Any
    metadata: dict[str, Any]


def build(
    kind: str,
    sources: Sequence[str | Path],
    *,
    variant: str = "paper",
    head: str | None = None,
    num_classes: int | None = None,
) -> Converted:
    """Reads the official file(s) of `kind` and returns our variables for them.

    Args:
      kind: 'ir50', 'ir50_identity' (face.evoLVe's whole IR-50 for identity pretraining:
        stages 1-4, output_layer and optionally the margin head), 'mobilefacenet',
        'backbones' (an IR-50 file and a MobileFaceNet file, in either order, into one
        checkpoint for `init_from`), 'poster_v2' or 'arbex'.
      sources: the file(s): one for ir50 / mobilefacenet / poster_v2; two for backbones;
        for 'ir50_identity' the `ir50.pth` plus optionally face.evoLVe's head file (any
        order); for 'arbex' the vit file plus optionally the classifier, anchors and SelfAttn
        files (any order).
      variant: model size preset ('paper' for the released weights; 'tiny' for tests).
      head: head preset ('poster', 'grefel', 'arbex_code'); default per kind (poster_v2:
        'poster', arbex: 'arbex_code', backbones: 'grefel'). A head the file does not carry
        gives a partial checkpoint without `head` (initialised at training time).
      num_classes: C; read from the file when it has a classifier, else 7.

    Returns:
      Converted(variables, model_config, metadata). Partial conversions (backbones only)
      hold only the filled top-level modules; `metadata['partial']` says so. For
      'ir50_identity', `metadata['identity']` holds `stage4_units`, `embedding_dim` and
      `num_identities` (0 without a head file).
    """
    if kind not in KINDS:
        raise ConversionError(f"--kind={kind!r}: expected one of {KINDS}.")
    files = [str(s) for s in sources]
    if not files:
        raise ConversionError("--src: give at least one file.")
    repeated = sorted({f for f in files if files.count(f) > 1})
    if repeated:
        raise ConversionError(f"--src: {repeated} given twice.")
    low, high = _NUM_FILES[kind]
    if not low <= len(files) <= high:
        want = str(low) if low == high else f"{low} to {high}"
        raise ConversionError(f"--kind={kind} takes {want} --src file(s), got {len(files)}.")
    states = {f: read_state_dict(f) for f in files}
    return build_from_state_dicts(kind, states, variant=variant, head=head, num_classes=num_classes)


def build_from_state_dicts(
    kind: str,
    states: Mapping[str, Mapping[str, Any]],
    *,
    variant: str = "paper",
    head: str | None = None,
    num_classes: int | None = None,
) -> Converted:
    """`build` on state_dicts already in memory: `{name: {key: numpy array}}`, the names
    standing for the files in messages and in the record (`build` checks the file count)."""
    from grefel_jax.models.config import make_model_config

    if kind not in KINDS:
        raise ConversionError(f"--kind={kind!r}: expected one of {KINDS}.")
    head = head or DEFAULT_HEADS[kind]
    files = list(states)

    allow_missing: tuple[str, ...] = ()
    explicit = None
    extra_unused: dict[str, str] = {}
    expected = None
    unused_patterns = UNUSED_PATTERNS
    identity: dict[str, int] = {}
    if kind == "ir50_identity":
        config, canonical, explicit, expected, identity = _identity_plan(
            states, variant, head, num_classes
        )
        modules = {names.IMAGE_BACKBONE, *([MARGIN_HEAD] if identity["num_identities"] else [])}
        unused_patterns = IDENTITY_UNUSED_PATTERNS
    elif kind in ("ir50", "mobilefacenet", "backbones"):
        config = make_model_config(variant, head, num_classes or 7)
        canonical, modules = {}, set()
        for file in files:
            module, sources = _backbone_sources(kind, states[file], file, config)
            if module in modules:
                raise ConversionError(f"--kind=backbones: two {module} files ({files}).")
            canonical.update(sources)
            modules.add(module)
    elif kind == "poster_v2":
        (file,) = files
        canonical = poster_v2_sources(states[file], file)
        file_classes = poster_v2_num_classes(states[file], file)
        _check_classes(num_classes, file_classes, file)
        config = make_model_config(variant, head, file_classes)
        modules = _top_modules(config)
        if config.head.kind != "poster":
            modules.discard(names.HEAD)
            extra_unused[r"^VIT\.head\."] = f"POSTER++ classifier; the '{head}' head is new"
    else:
        config, canonical, modules, explicit, allow_missing, extra_unused = _arbex_plan(
            states, variant, head, num_classes
        )
    result = fill_variables(
        canonical,
        config,
        fill_modules=modules,
        explicit=explicit,
        allow_missing=allow_missing,
        extra_unused=extra_unused,
        expected=expected,
        unused_patterns=unused_patterns,
    )
    # An identity network is never a whole GReFEL model (margin_head is not GReFEL's).
    partial = bool(identity) or set(modules) != _top_modules(config)
    metadata = {
        "converter": "grefel_jax.convert",
        "kind": kind,
        "sources": files,
        "converted_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "filled_modules": sorted(modules),
        "partial": partial,
        "num_loaded_tensors": len(result.used),
        "unused_source_tensors": result.unused,
        "not_loaded": result.not_loaded,
    }
    if identity:
        # What the identity network around `ir_back` needs (`models.identity.identity_sizes`);
        # num_identities is 0 when no head file was given (`margin_head` not written).
        metadata["identity"] = identity
    return Converted(result.variables, config, metadata)


def convert(
    kind: str,
    sources: Sequence[str | Path],
    out: str | Path,
    *,
    variant: str = "paper",
    head: str | None = None,
    num_classes: int | None = None,
) -> Converted:
    """`build` + `grefel_jax.checkpoints.save_inference_checkpoint(out, ...)`."""
    from grefel_jax.checkpoints import save_inference_checkpoint

    converted = build(kind, sources, variant=variant, head=head, num_classes=num_classes)
    save_inference_checkpoint(
        out, converted.variables, converted.model_config, extra_metadata=converted.metadata
    )
    return converted


def _backbone_sources(kind: str, state, file: str, config) -> tuple[str, dict]:
    """('ir_back' | 'face_landback', canonical sources) of one backbone file."""
    if kind == "ir50":
        return names.IMAGE_BACKBONE, ir50_sources(state, file, config.backbone.ir_units)
    if kind == "mobilefacenet":
        return names.LANDMARK_NET, mobilefacenet_sources(state, file)
    try:
        return names.IMAGE_BACKBONE, ir50_sources(state, file, config.backbone.ir_units)
    except ConversionError:
        pass
    try:
        return names.LANDMARK_NET, mobilefacenet_sources(state, file)
    except ConversionError:
        raise wrong_kind(file, state, "IR-50 or MobileFaceNet") from None


def _identity_plan(states, variant, head, num_classes):
    """(config, canonical sources, explicit head map, expected IdentityNet shapes, identity
    sizes) of `--kind ir50_identity`: the `body.N` backbone file and an optional head file.

    The config is the variant's GReFEL ModelConfig (its backbone is what identity
    pretraining records) at the input size the file's `output_layer` was made for.
    """
    from grefel_jax.models.config import make_model_config

    base = make_model_config(variant, head, num_classes or 7)
    backbones = [f for f, state in states.items() if "input_layer.0.weight" in state]
    heads = [f for f in states if f not in backbones]
    if len(backbones) != 1:
        raise ConversionError(
            f"--kind ir50_identity takes one IR-50 file (and optionally its head file); "
            f"got {len(backbones)} IR-50 files: {backbones or sorted(states)}."
        )
    (file,) = backbones
    config = base
    if "output_layer.3.weight" in states[file]:
        size = identity_image_size(states[file], file, base.backbone.dims)
        if size != base.backbone.image_size:
            config = make_model_config(
                variant, head, num_classes or 7, backbone_overrides={"image_size": size}
            )
    canonical, stage4_units, embedding_dim = identity_sources(
        states[file], file, config.backbone.ir_units
    )
    explicit: dict = {}
    num_identities = 0
    for head_file in heads:
        head_sources, explicit, num_identities = margin_head_sources(
            states[head_file], head_file, embedding_dim
        )
        canonical.update(head_sources)
    # Without a head file the margin head's size is unknown; 1 stands in (it is not filled).
    expected = identity_expected_shapes(
        config.backbone, stage4_units, embedding_dim, num_identities or 1
    )
    sizes = {
        "stage4_units": stage4_units,
        "embedding_dim": embedding_dim,
        "num_identities": num_identities,
    }
    return config, canonical, explicit, expected, sizes


def _top_modules(config) -> set[str]:
    return {path[0] for _, path in expected_shapes(config)}


def _check_classes(requested: int | None, found: int, file: str) -> None:
    if requested is not None and requested != found:
        raise ConversionError(f"--num_classes={requested}, but {file} has {found} classes.")


def _arbex_plan(states, variant, head, num_classes):
    from grefel_jax.convert.arbex_names import head_key_map
    from grefel_jax.models.config import make_model_config

    parts: dict[str, str] = {}
    for file, state in states.items():
        part = arbex_lib.arbex_part(state, file)
        if part in parts:
            raise ConversionError(f"two ARBEx {part} files: {parts[part]} and {file}.")
        parts[part] = file
    if "vit" not in parts:
        raise ConversionError(
            f"--kind=arbex needs the vit.best.NNNN.pth file; got only {sorted(parts)} files."
        )
    overrides: dict[str, Any] = {}
    classes = []
    if "classifier" in parts:
        hidden, c = arbex_lib.classifier_sizes(states[parts["classifier"]], parts["classifier"])
        overrides["mlp_hidden"] = hidden
        classes.append((c, parts["classifier"]))
    if "anchors" in parts:
        anchors = states[parts["anchors"]]["anchors"]
        if anchors.ndim != 3:
            raise ConversionError(
                f"{parts['anchors']}: anchors of shape {anchors.shape}, not (C,K,d)."
            )
        overrides["num_anchors"] = int(anchors.shape[1])
        classes.append((int(anchors.shape[0]), parts["anchors"]))
    if len({c for c, _ in classes}) > 1:
        raise ConversionError(f"the ARBEx files disagree on the class count: {classes}.")
    c = classes[0][0] if classes else (num_classes or 8)
    if classes:
        _check_classes(num_classes, c, classes[0][1])
    canonical = {}
    for part, file in parts.items():
        canonical.update(arbex_lib.arbex_sources(part, states[file], file))
    base = make_model_config(variant, head, c)
    head_is_arbex = base.head.arbex_layout
    extra_unused: dict[str, str] = {}
    explicit = None
    allow_missing: tuple[str, ...] = ()
    has_head_files = "classifier" in parts and "anchors" in parts
    if head_is_arbex and has_head_files:
        config = make_model_config(variant, head, c, head_overrides=overrides)
        modules = _top_modules(config)
        explicit = {
            key: (col, (names.HEAD, *path), transpose)
            for key, (col, path, transpose) in head_key_map(config.head).items()
        }
        if "selfattn" not in parts:
            allow_missing = ("params/head/attention/",)
    else:
        config = base
        modules = _top_modules(config) - {names.HEAD}
        why = (
            f"the '{head}' head differs from ARBEx's"
            if not head_is_arbex
            else "classifier and anchors files are both needed to fill the head"
        )
        for part in ("classifier", "anchors", "selfattn"):
            extra_unused[rf"^{part}\."] = f"ARBEx {part}: {why}"
    return config, canonical, modules, explicit, allow_missing, extra_unused
