"""Fine-tuned POSTER++ checkpoints (RAF-DB, AffectNet-7/8, CAER-S) -> the whole model.

The released files are `torch.save({'epoch', 'state_dict', 'best_acc', 'recorder1',
'recorder'})` with `module.`-prefixed keys (docs/checkpoints.md §6b); `read_state_dict` strips the
prefix and the safe loader replaces the recorder objects by inert stubs. The keys are already
canonical. Dead parameters (`VIT.patch_embed`, `VIT.eca_block`, `VIT.CON1`, `VIT.IRLinear*`,
`VIT.blocks.i.conv`, both `output_layer`s) are dropped; relative position indices are
recomputed.
"""

from __future__ import annotations

from collections.abc import Mapping

from grefel_jax.convert.common import Array, ConversionError, Source, with_prefix, wrong_kind

HEAD_KEY = "VIT.head.linear.weight"


def poster_v2_sources(state: Mapping[str, Array], file: str) -> dict[str, Source]:
    """Canonical sources of a POSTER++ state_dict (keys unchanged)."""
    keys = list(state)
    if not any(k.startswith("face_landback.") for k in keys) or not any(
        k.startswith("VIT.") for k in keys
    ):
        raise wrong_kind(file, keys, "POSTER++ (pyramid_trans_expr2)")
    return with_prefix(state, file, [])


def poster_v2_num_classes(state: Mapping[str, Array], file: str) -> int:
    if HEAD_KEY not in state or state[HEAD_KEY].ndim != 2:
        raise ConversionError(f"{file}: no {HEAD_KEY} (C, D) to read the class count from.")
    return int(state[HEAD_KEY].shape[0])
