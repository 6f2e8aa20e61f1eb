"""ARBEx module names -> canonical POSTER++ names (reference.md §6a.8, state_dict_keys.md §D-F).

ARBEx re-implements POSTER++ with renamed modules. These rules rename the keys of its
`vit.best.NNNN.pth` (and of ARBEx-named IR-50 / MobileFaceNet files, given the `ir.` or
`landmark.` prefix) to the names of the official POSTER++ checkpoint.
"""

from __future__ import annotations

import re

from grefel_jax.convert.common import Rule

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
