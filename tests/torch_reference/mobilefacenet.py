"""MobileFaceNet landmark net in PyTorch (docs/model.md §1a), POSTER++ / pytorch_face_landmark
naming (docs/state_dict_keys.md §B; §A under `face_landback.`).

Width w = `width` (64): expansions are 2w/4w/8w (128/256/512) as in the official net, and
`conv_6_sep` outputs 8w channels. The GDC landmark head (`output_layer`) is built and run, as
in POSTER++, whose forward computes it and throws the result away.
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBlock(nn.Module):
    """`Conv_block`: Conv (no bias) -> BN -> per-channel PReLU; `Linear_block` without PReLU."""

    def __init__(self, cin, cout, kernel=1, stride=1, padding=0, groups=1, prelu=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if prelu:
            self.prelu = nn.PReLU(cout)
        self.has_prelu = prelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.has_prelu else x


class DepthWise(nn.Module):
    """`Depth_Wise(in, out, groups=G, stride)`: 1x1 in->G, 3x3 dw(G) stride s, 1x1 G->out."""

    def __init__(self, cin, cout, groups, stride=2, residual=False):
        super().__init__()
        self.conv = ConvBlock(cin, groups, 1)
        self.conv_dw = ConvBlock(groups, groups, 3, stride, 1, groups=groups)
        self.project = ConvBlock(groups, cout, 1, prelu=False)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class Residual(nn.Module):
    """`Residual(c, num_block, groups)`: residual DepthWise units under `.model`."""

    def __init__(self, c, num_block, groups):
        super().__init__()
        self.model = nn.Sequential(
            *[DepthWise(c, c, groups, stride=1, residual=True) for _ in range(num_block)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GDC(nn.Module):
    """Landmark head: 7x7 depthwise Linear_block -> Linear (no bias) -> BatchNorm1d."""

    def __init__(self, channels, embedding_size, kernel):
        super().__init__()
        self.conv_6_dw = ConvBlock(channels, channels, kernel, groups=channels, prelu=False)
        self.conv_6_flatten = nn.Flatten()
        self.linear = nn.Linear(channels, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.linear(self.conv_6_flatten(self.conv_6_dw(x))))


class MobileFaceNet(nn.Module):
    """Input `(B, 3, S, S)` (S = 112); returns conv_3, conv_4 and conv_6_sep maps:
    `(B, w, S/4, S/4)`, `(B, 2w, S/8, S/8)`, `(B, 8w, S/16, S/16)`.

    `forward` also stores the GDC landmark output in `self.last_landmarks` (B, 136) when the
    head exists, so that a test can check it runs.
    """

    def __init__(
        self,
        width: int = 64,
        units: tuple[int, int, int] = (4, 6, 2),
        embedding_size: int = 136,
        input_size: int = 112,
        gdc: bool = True,
    ):
        super().__init__()
        w = width
        self.conv1 = ConvBlock(3, w, 3, 2, 1)
        self.conv2_dw = ConvBlock(w, w, 3, 1, 1, groups=w)
        self.conv_23 = DepthWise(w, w, 2 * w, stride=2)
        self.conv_3 = Residual(w, units[0], 2 * w)
        self.conv_34 = DepthWise(w, 2 * w, 4 * w, stride=2)
        self.conv_4 = Residual(2 * w, units[1], 4 * w)
        self.conv_45 = DepthWise(2 * w, 2 * w, 8 * w, stride=2)
        self.conv_5 = Residual(2 * w, units[2], 4 * w)
        self.conv_6_sep = ConvBlock(2 * w, 8 * w, 1)
        if gdc:
            self.output_layer = GDC(8 * w, embedding_size, input_size // 16)
        self.has_gdc = gdc
        self.last_landmarks = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.conv_23(self.conv2_dw(self.conv1(x)))
        out1 = self.conv_3(x)
        out2 = self.conv_4(self.conv_34(out1))
        out3 = self.conv_6_sep(self.conv_5(self.conv_45(out2)))
        if self.has_gdc:
            self.last_landmarks = self.output_layer(out3)
        return out1, out2, out3
