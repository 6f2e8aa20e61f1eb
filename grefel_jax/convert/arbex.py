"""ARBEx checkpoints -> our model with the `arbex_code` head (docs/checkpoints.md §6a).

ARBEx saves three plain state_dicts per best iteration:

* `vit.best.NNNN.pth`: the renamed POSTER++ (`landmark.*`, `ir.*`, `conv`, `convs`,
  `window_module`, `attns`, `ffns`, `embs`, `vit.*`; no POSTER++ head);
* `classifier.best.NNNN.pth`: the MLP `net.{0,4,8,12}` Linear, `net.{2,6,10}` BatchNorm1d;
* `anchors.best.NNNN.pth`: `anchors` (C, K, d).

The `SelfAttn` weights are never saved by ARBEx, so the attention of the head stays at its
initial values (listed as `not_loaded`); an optional fourth file with `Q.*`, `K.*`, `V.*`,
`attn_fn.*` keys (a SelfAttn state_dict) fills it when available.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from grefel_jax.convert.arbex_names import ARBEX_RULES
from grefel_jax.convert.common import (
    Array,
    ConversionError,
    Source,
    describe_keys,
    with_prefix,
)

PARTS = ("vit", "classifier", "anchors", "selfattn")


def arbex_part(state: Mapping[str, Array], file: str) -> str:
    """Which ARBEx file a state_dict is: 'vit', 'classifier', 'anchors' or 'selfattn'."""
    keys = set(state)
    if any(k.startswith(("landmark.path_", "ir.net_")) for k in keys):
        return "vit"
    if keys and all(re.match(r"^net\.\d+\.", k) for k in keys):
        return "classifier"
    if keys == {"anchors"}:
        return "anchors"
    if keys and all(k.startswith(("Q.", "K.", "V.", "attn_fn.")) for k in keys):
        return "selfattn"
    raise ConversionError(
        f"{file}: not an ARBEx vit/classifier/anchors/selfattn file; it looks like "
        f"{describe_keys(keys)}."
    )


def arbex_sources(part: str, state: Mapping[str, Array], file: str) -> dict[str, Source]:
    """Canonical sources: POSTER++ names for 'vit', `<part>.<key>` for the head files."""
    if part == "vit":
        return with_prefix(state, file, ARBEX_RULES)
    return with_prefix(state, file, [], prefix=f"{part}.")


def classifier_sizes(state: Mapping[str, Array], file: str) -> tuple[tuple[int, ...], int]:
    """(hidden widths, num_classes) read from the Linear layers `net.{4i}.weight`."""
    linears = sorted(
        (int(m[1]), v)
        for k, v in state.items()
        if (m := re.match(r"^net\.(\d+)\.weight$", k)) and v.ndim == 2
    )
    if not linears or [i for i, _ in linears] != [4 * j for j in range(len(linears))]:
        raise ConversionError(
            f"{file}: expected ARBEx classifier Linear layers at net.0, net.4, net.8, ... "
            f"(Linear -> ReLU -> BatchNorm1d -> Dropout); found {[i for i, _ in linears]}."
        )
    hidden = tuple(int(v.shape[0]) for _, v in linears[:-1])
    return hidden, int(linears[-1][1].shape[0])
