"""MobileFaceNet landmark checkpoints -> the `face_landback` module (docs/checkpoints.md §6b).

`mobilefacenet_model_best.pth.tar` of pytorch_face_landmark holds its weights under
`state_dict` (POSTER++ loads them strictly); the GDC landmark head `output_layer.*` is dropped
(POSTER++ computes it and throws the result away). ARBEx-named copies (`path_1/2/3`, no GDC
head) are accepted too.
"""

from __future__ import annotations

from collections.abc import Mapping

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
