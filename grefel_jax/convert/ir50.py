"""IR-50 backbone checkpoints -> the `ir_back` module (docs/checkpoints.md §6b).

Accepted namings:
* face.evoLVe / POSTER V1 `ir50.pth`: `input_layer.*`, `body.N.*`, `output_layer.*`. Units
  are assigned to the three stages by the model's unit counts (paper: `body.0-2` -> body1,
  `body.3-6` -> body2, `body.7-20` -> body3); later units (the 512-channel fourth stage) and
  `output_layer` are dropped.
* POSTER++ `body1/body2/body3` naming (a renamed `new_ir50.pth`).
* ARBEx `net_1/net_2/net_3` naming (`pretrained/ir50.pth` of ARBEx).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from grefel_jax.convert.arbex_names import ARBEX_RULES
from grefel_jax.convert.common import Array, Source, with_prefix, wrong_kind


def ir50_sources(
    state: Mapping[str, Array], file: str, ir_units: tuple[int, int, int]
) -> dict[str, Source]:
    """Canonical (`ir_back.*`) sources of an IR-50 state_dict in any of the three namings."""
    keys = list(state)
    if "input_layer.0.weight" not in state:
        raise wrong_kind(file, keys, "IR-50")
    if any(k.startswith("body.") for k in keys):
        bounds = [sum(ir_units[:s]) for s in range(4)]  # [0, u1, u1+u2, u1+u2+u3]

        def unit(m: re.Match) -> str:
            n = int(m[1])
            for stage in range(3):
                if bounds[stage] <= n < bounds[stage + 1]:
                    return f"ir_back.body{stage + 1}.{n - bounds[stage]}."
            return f"ir_back.stage4.{n}."

        rules = [(r"^body\.(\d+)\.", unit), (r"^", "ir_back.")]
        return with_prefix(state, file, rules)
    if any(k.startswith("net_1.") for k in keys):
        return with_prefix(state, file, ARBEX_RULES, prefix="ir.")
    if any(k.startswith("body1.") for k in keys):
        return with_prefix(state, file, [(r"^", "ir_back.")])
    raise wrong_kind(file, keys, "IR-50")
