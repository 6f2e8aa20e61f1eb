"""ARBEx module names -> canonical POSTER++ names (docs/checkpoints.md §6a.8,
docs/state_dict_keys.md §D-F).

ARBEx re-implements POSTER++ with renamed modules. These rules rename the keys of its
`vit.best.NNNN.pth` (and of ARBEx-named IR-50 / MobileFaceNet files, given the `ir.` or
`landmark.` prefix) to the names of the official POSTER++ checkpoint.
"""

from __future__ import annotations

import re

from grefel_jax.convert.common import Rule
from grefel_jax.models.config import HeadConfig

_CONV_BLOCK = ("conv", "bn", "prelu")  # ConvBlock.net.{0,1,2}
_DEPTH_WISE = ("conv", "conv_dw", "project")  # DepthWise.net.{0,1,2}

# (path_n, index in path_n) -> POSTER++ MobileFaceNet block and its kind.
_LANDMARK_BLOCKS = {
    ("1", "0"): ("conv1", "conv"),
    ("1", "1"): ("conv2_dw", "conv"),
    ("1", "2"): ("conv_23", "dw"),
    ("1", "3"): ("conv_3", "res"),
    ("2", "0"): ("conv_34", "dw"),
    ("2", "1"): ("conv_4", "res"),
    ("3", "0"): ("conv_45", "dw"),
    ("3", "1"): ("conv_5", "res"),
    ("3", "2"): ("conv_6_sep", "conv"),
}


def _landmark(match: re.Match) -> str:
    block, kind = _LANDMARK_BLOCKS.get((match["path"], match["idx"]), (None, None))
    rest = match["rest"]
    patterns = {
        "conv": r"(?P<k>\d)\.(?P<leaf>\w+)$",
        "dw": r"(?P<j>\d)\.net\.(?P<k>\d)\.(?P<leaf>\w+)$",
        "res": r"(?P<i>\d+)\.net\.(?P<j>\d)\.net\.(?P<k>\d)\.(?P<leaf>\w+)$",
    }
    m = re.match(patterns[kind], rest) if kind else None
    if m is None:
        return match.group(0)  # Unknown layout: left as is, reported as unknown later.
    part = f"{_CONV_BLOCK[int(m['k'])]}.{m['leaf']}" if int(m["k"]) < 3 else None
    if part is None or (kind != "conv" and int(m["j"]) > 2):
        return match.group(0)
    if kind == "dw":
        part = f"{_DEPTH_WISE[int(m['j'])]}.{part}"
    elif kind == "res":
        part = f"model.{m['i']}.{_DEPTH_WISE[int(m['j'])]}.{part}"
    return f"face_landback.{block}.{part}"


def _plus_one(template: str):
    return lambda m: template.format(i=int(m[1]) + 1, rest=m[2] if m.lastindex >= 2 else "")


ARBEX_RULES: tuple[Rule, ...] = (
    (r"^landmark\.path_(?P<path>\d)\.(?P<idx>\d+)\.net\.(?P<rest>.*)$", _landmark),
    (r"^ir\.input_layer\.", "ir_back.input_layer."),
    (r"^ir\.net_(\d)\.net\.(\d+)\.res\.", r"ir_back.body\1.\2.res_layer."),
    (r"^ir\.net_(\d)\.net\.(\d+)\.shortcut\.", r"ir_back.body\1.\2.shortcut_layer."),
    (r"^conv\.", "last_face_conv."),
    (r"^convs\.(\d)\.(.*)$", _plus_one("conv{i}.{rest}")),
    (r"^window_module\.(\d)\.(.*)$", _plus_one("window{i}.{rest}")),
    (r"^attns\.(\d)\.table$", _plus_one("attn{i}.relative_position_bias_table")),
    (r"^attns\.(\d)\.index_relative$", _plus_one("attn{i}.relative_position_index")),
    (r"^attns\.(\d)\.linear\.(.*)$", _plus_one("attn{i}.proj.{rest}")),
    (r"^attns\.(\d)\.(qkv\..*)$", _plus_one("attn{i}.{rest}")),
    (r"^ffns\.(\d)\.gamma_(\d)$", lambda m: f"ffn{int(m[1]) + 1}.gamma{m[2]}"),
    (r"^ffns\.(\d)\.mlp\.0\.(.*)$", _plus_one("ffn{i}.mlp.fc1.{rest}")),
    (r"^ffns\.(\d)\.mlp\.3\.(.*)$", _plus_one("ffn{i}.mlp.fc2.{rest}")),
    (r"^ffns\.(\d)\.(norm\..*)$", _plus_one("ffn{i}.{rest}")),
    (r"^embs\.0\.(\d)\.", r"embed_q.\1."),
    (r"^embs\.1\.", "embed_k.0."),
    (r"^embs\.2\.proj\.", "embed_v.proj."),
    (r"^vit\.", "VIT."),
)


# The official ARBEx head in this GReFELHead's variables:
#
#   classifier.net.{4i}.weight/bias      -> params classifier/fc{i}/kernel (transposed)/bias
#   classifier.net.{4i+2}.weight/bias    -> params classifier/bn{i}/scale/bias
#   classifier.net.{4i+2}.running_mean/var -> batch_stats classifier/bn{i}/mean/var
#   classifier.net.{4n}.weight/bias      -> params classifier/fc{n}/kernel (T)/bias  (n hidden)
#   anchors.anchors                      -> params anchors
#   selfattn.{Q,K,V}.weight/bias         -> params attention/{Q,K,V}/kernel (T)/bias
#   selfattn.attn_fn.in_proj_weight      -> params attention/attn_fn/in_proj/kernel (transposed:
#                                           (3C, C) -> (C, 3C); columns [0:C] = q, [C:2C] = k,
#                                           [2C:3C] = v, the row blocks of PyTorch's weight)
#   selfattn.attn_fn.in_proj_bias        -> params attention/attn_fn/in_proj/bias
#   selfattn.attn_fn.out_proj.weight/bias -> params attention/attn_fn/out_proj/kernel (T)/bias
#
# (`num_batches_tracked` has no counterpart; ARBEx never saves `selfattn.*`, docs/checkpoints.md.)


def head_key_map(config: HeadConfig) -> dict[str, tuple[str, tuple[str, ...], bool]]:
    """Where each official ARBEx head tensor goes in this GReFELHead's variables.

    Args:
      config: a HeadConfig with reduction_dim None/0 and attention='batch' (the `arbex_code`
        preset): ARBEx has neither a reduction layer nor per-sample attention.

    Returns:
      {torch key: (collection, flax path, transpose)} for the keys of reference
      docs/state_dict_keys.md §F with prefixes `classifier.`, `anchors.`, `selfattn.`; `transpose`
      says the 2-D tensor must be transposed (Linear weight -> Dense kernel).
      `num_batches_tracked` is omitted (no counterpart).
    """
    if not config.arbex_layout:
        raise ValueError(
            "head_key_map: the ARBEx head has no reduction and batch attention; need "
            "model.head.kind='grefel', reduction_dim=None and attention='batch' (preset "
            f"'arbex_code'), got kind={config.kind!r}, reduction_dim={config.reduction_dim}, "
            f"attention={config.attention!r}."
        )
    mapping: dict[str, tuple[str, tuple[str, ...], bool]] = {}
    n = len(config.mlp_hidden)
    for i in range(n + 1):
        fc = f"classifier.net.{4 * i}"
        mapping[f"{fc}.weight"] = ("params", ("classifier", f"fc{i}", "kernel"), True)
        mapping[f"{fc}.bias"] = ("params", ("classifier", f"fc{i}", "bias"), False)
        if i < n:
            bn = f"classifier.net.{4 * i + 2}"
            mapping[f"{bn}.weight"] = ("params", ("classifier", f"bn{i}", "scale"), False)
            mapping[f"{bn}.bias"] = ("params", ("classifier", f"bn{i}", "bias"), False)
            mapping[f"{bn}.running_mean"] = ("batch_stats", ("classifier", f"bn{i}", "mean"), False)
            mapping[f"{bn}.running_var"] = ("batch_stats", ("classifier", f"bn{i}", "var"), False)
    mapping["anchors.anchors"] = ("params", ("anchors",), False)
    for name in ("Q", "K", "V"):
        mapping[f"selfattn.{name}.weight"] = ("params", ("attention", name, "kernel"), True)
        mapping[f"selfattn.{name}.bias"] = ("params", ("attention", name, "bias"), False)
    attn = ("attention", "attn_fn")
    mapping["selfattn.attn_fn.in_proj_weight"] = ("params", (*attn, "in_proj", "kernel"), True)
    mapping["selfattn.attn_fn.in_proj_bias"] = ("params", (*attn, "in_proj", "bias"), False)
    mapping["selfattn.attn_fn.out_proj.weight"] = ("params", (*attn, "out_proj", "kernel"), True)
    mapping["selfattn.attn_fn.out_proj.bias"] = ("params", (*attn, "out_proj", "bias"), False)
    return mapping
