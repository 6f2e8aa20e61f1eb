"""IR-50 stages 1-3 in PyTorch, with both checkpoint namings (docs/model.md §1b,
docs/checkpoints.md §6b).

* `naming="stages"`: POSTER++'s `Backbone(50, 0.0, 'ir')`, units in `body1/body2/body3`
  (docs/state_dict_keys.md §A under `ir_back.`).
* `naming="body"`: the original face.evoLVe / POSTER V1 layout, all units in one Sequential
  `body` (docs/state_dict_keys.md §C); `stage4_units > 0` adds the 512-channel fourth stage that a
  full face.evoLVe `ir50.pth` carries as `body.21+` (never used by POSTER++).

Both register `input_layer`, then the `output_layer`, then the units, as the official
classes do, so that state_dict order matches too. `forward` returns the three stage maps, as
POSTER++ uses the trunk; `embed` runs every unit (the fourth stage included) and
`output_layer`, face.evoLVe's `Backbone.forward`: the identity embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BottleneckIR(nn.Module):
    """`bottleneck_IR(in, depth, stride)`: `(B, in, H, W) -> (B, depth, H/s, W/s)`.

    res = BN -> Conv3x3 -> PReLU -> Conv3x3(stride) -> BN; shortcut = MaxPool2d(1, s) when the
    width is unchanged, else Conv1x1(stride) -> BN; output res + shortcut (no activation).
    """

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth)
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def _stage_units(in_channel: int, depth: int, units: int) -> list[BottleneckIR]:
    return [
        BottleneckIR(in_channel if i == 0 else depth, depth, 2 if i == 0 else 1)
        for i in range(units)
    ]


class IR50Backbone(nn.Module):
    """IR-50 trunk. Input `(B, 3, S, S)` (S = 224), resized to `internal_size` by nearest.

    Returns the three stage maps `(B, d0, s/2, s/2)`, `(B, d1, s/4, s/4)`, `(B, d2, s/8, s/8)`
    with s = `internal_size` (112): (B,64,56,56), (B,128,28,28), (B,256,14,14) in the paper.

    Args:
      dims: stage widths (64, 128, 256).
      units: units per stage (3, 4, 14).
      internal_size: side the image is resized to (112).
      naming: "stages" (`body1/2/3`, POSTER++) or "body" (one `body`, face.evoLVe).
      stage4_units: with naming="body", extra fourth-stage units (3 in a full IR-50).
      embedding_dim: width of `output_layer`'s Linear and BatchNorm1d (default 2 * dims[2],
        512 in IR-50).
    """

    def __init__(
        self,
        dims: tuple[int, int, int] = (64, 128, 256),
        units: tuple[int, int, int] = (3, 4, 14),
        internal_size: int = 112,
        naming: str = "stages",
        stage4_units: int = 0,
        embedding_dim: int | None = None,
    ):
        super().__init__()
        if naming not in ("stages", "body"):
            raise ValueError(f"naming={naming!r}")
        if stage4_units and naming != "body":
            raise ValueError("stage4_units needs naming='body'")
        self.internal_size = internal_size
        self.units = tuple(units)
        self.naming = naming
        d0, d1, d2 = dims
        out_dim = 2 * d2  # 512: the width of the (removed) fourth stage.
        embedding_dim = embedding_dim or out_dim
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, d0, 3, 1, 1, bias=False), nn.BatchNorm2d(d0), nn.PReLU(d0)
        )
        # Unused by POSTER++; kept so that the keys match the official checkpoints. After the
        # fourth stage the map is internal_size / 16 on a side (7 x 7 at 112).
        spatial = (internal_size // 16) ** 2
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(out_dim),
            nn.Dropout(0.0),
            nn.Flatten(),
            nn.Linear(out_dim * spatial, embedding_dim),
            nn.BatchNorm1d(embedding_dim),
        )
        stage1 = _stage_units(d0, d0, units[0])
        stage2 = _stage_units(d0, d1, units[1])
        stage3 = _stage_units(d1, d2, units[2])
        if naming == "stages":
            self.body1 = nn.Sequential(*stage1)
            self.body2 = nn.Sequential(*stage2)
            self.body3 = nn.Sequential(*stage3)
        else:
            stage4 = _stage_units(d2, out_dim, stage4_units) if stage4_units else []
            self.body = nn.Sequential(*stage1, *stage2, *stage3, *stage4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.interpolate(x, size=self.internal_size)  # nearest, as the official code
        x = self.input_layer(x)
        if self.naming == "stages":
            x1 = self.body1(x)
            x2 = self.body2(x1)
            return x1, x2, self.body3(x2)
        outs = []
        units = list(self.body)
        start = 0
        for n in self.units:
            for unit in units[start : start + n]:
                x = unit(x)
            outs.append(x)
            start += n
        return tuple(outs)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """face.evoLVe's `Backbone.forward` on the resized image: every unit of `body`
        (stages 1-4), then `output_layer`. `(B, 3, S, S) -> (B, embedding_dim)`."""
        if self.naming != "body" or len(self.body) == sum(self.units):
            raise ValueError("embed needs naming='body' and stage4_units > 0")
        x = F.interpolate(x, size=self.internal_size)
        return self.output_layer(self.body(self.input_layer(x)))
