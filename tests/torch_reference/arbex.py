"""ARBEx's re-implementation of POSTER++ and its head in PyTorch (docs/model.md §1f,
docs/reliability.md §2, docs/checkpoints.md §6a; docs/state_dict_keys.md §D, §E, §F).

Same graph as `poster.PosterV2`, renamed modules: `landmark.path_*`, `ir.net_*`, `conv`,
`convs`, `window_module`, `attns.i.{table,index_relative,qkv,linear}`,
`ffns.i.{gamma_1,gamma_2,mlp.0,mlp.3,norm}`, `embs`, `vit` (no `head`, no `eca_block`).
The head: `classifier` (MLP with BatchNorm), `anchors` (C, K, d) and `selfattn` (Q/K/V +
single-head `nn.MultiheadAttention` that reads a 2-D (B, C) input as a sequence of length B).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .poster import PatchEmbed, VisionTransformer, Window, _to_query, relative_position_index


def _conv_bn(cin, cout, kernel=1, stride=1, padding=0, groups=1, prelu=True):
    layers = [
        nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if prelu:
        layers.append(nn.PReLU(cout))
    return layers


class ConvBlock(nn.Module):
    """`ConvBlock` / `LinearBlock`: `.net` = Conv -> BN (-> PReLU)."""

    def __init__(self, cin, cout, kernel=1, stride=1, padding=0, groups=1, prelu=True):
        super().__init__()
        self.net = nn.Sequential(*_conv_bn(cin, cout, kernel, stride, padding, groups, prelu))

    def forward(self, x):
        return self.net(x)


class DepthWise(nn.Module):
    """`.net` = ConvBlock 1x1 in->G, ConvBlock 3x3 dw stride s, LinearBlock 1x1 G->out."""

    def __init__(self, cin, cout, groups, stride=2, residual=False):
        super().__init__()
        self.residual = residual
        self.net = nn.Sequential(
            ConvBlock(cin, groups),
            ConvBlock(groups, groups, 3, stride, 1, groups=groups),
            ConvBlock(groups, cout, prelu=False),
        )

    def forward(self, x):
        y = self.net(x)
        return x + y if self.residual else y


class Residual(nn.Module):
    def __init__(self, c, blocks, groups):
        super().__init__()
        self.net = nn.Sequential(
            *[DepthWise(c, c, groups, stride=1, residual=True) for _ in range(blocks)]
        )

    def forward(self, x):
        return self.net(x)


class ArbexMobileFaceNet(nn.Module):
    """ARBEx MobileFaceNet (no GDC head): `path_1/2/3` return the three query maps."""

    def __init__(self, width: int = 64, units: tuple[int, int, int] = (4, 6, 2)):
        super().__init__()
        w = width
        self.path_1 = nn.Sequential(
            ConvBlock(3, w, 3, 2, 1),
            ConvBlock(w, w, 3, 1, 1, groups=w),
            DepthWise(w, w, 2 * w, stride=2),
            Residual(w, units[0], 2 * w),
        )
        self.path_2 = nn.Sequential(
            DepthWise(w, 2 * w, 4 * w, stride=2), Residual(2 * w, units[1], 4 * w)
        )
        self.path_3 = nn.Sequential(
            DepthWise(2 * w, 2 * w, 8 * w, stride=2),
            Residual(2 * w, units[2], 4 * w),
            ConvBlock(2 * w, 8 * w),
        )

    def forward(self, x):
        o1 = self.path_1(x)
        o2 = self.path_2(o1)
        return [o1, o2, self.path_3(o2)]


class Bottleneck(nn.Module):
    """ARBEx `Bottleneck` = `bottleneck_IR` with `shortcut` / `res` names."""

    def __init__(self, cin, depth, stride):
        super().__init__()
        if cin == depth:
            self.shortcut = nn.MaxPool2d(1, stride)
        else:
            self.shortcut = nn.Sequential(*_conv_bn(cin, depth, 1, stride, prelu=False))
        self.res = nn.Sequential(
            nn.BatchNorm2d(cin),
            nn.Conv2d(cin, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
        )

    def forward(self, x):
        return self.res(x) + self.shortcut(x)


class IRStage(nn.Module):
    def __init__(self, cin, depth, units):
        super().__init__()
        self.net = nn.Sequential(
            *[Bottleneck(cin if i == 0 else depth, depth, 2 if i == 0 else 1) for i in range(units)]
        )

    def forward(self, x):
        return self.net(x)


class ArbexIR50(nn.Module):
    """ARBEx IR50: `input_layer`, `net_1/2/3`; no `output_layer`. Resizes to `internal_size`."""

    def __init__(self, dims=(64, 128, 256), units=(3, 4, 14), internal_size: int = 112):
        super().__init__()
        d0, d1, d2 = dims
        self.internal_size = internal_size
        self.input_layer = nn.Sequential(*_conv_bn(3, d0, 3, 1, 1))
        self.net_1 = IRStage(d0, d0, units[0])
        self.net_2 = IRStage(d0, d1, units[1])
        self.net_3 = IRStage(d1, d2, units[2])

    def forward(self, x):
        x = self.input_layer(F.interpolate(x, size=self.internal_size))
        o1 = self.net_1(x)
        o2 = self.net_2(o1)
        return o1, o2, self.net_3(o2)


class GlobalWindowAttention(nn.Module):
    """POSTER++ `WindowAttentionGlobal` with ARBEx names (`table`, `index_relative`, `linear`)."""

    def __init__(self, dim, heads, window):
        super().__init__()
        self.heads = heads
        self.window = window
        self.scale = (dim // heads) ** -0.5
        self.table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("index_relative", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 2, bias=True)
        self.linear = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.table, std=0.02)

    def forward(self, x, q):
        b_, n, c = x.shape
        hd = c // self.heads
        kv = self.qkv(x).reshape(b_, n, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        q = q.repeat(1, b_ // q.shape[0], 1, 1, 1).reshape(b_, self.heads, n, hd)
        attn = (q * self.scale) @ kv[0].transpose(-2, -1)
        n2 = self.window**2
        bias = self.table[self.index_relative.view(-1)].view(n2, n2, -1).permute(2, 0, 1)
        attn = (attn + bias.unsqueeze(0)).softmax(dim=-1)
        return self.linear((attn @ kv[1]).transpose(1, 2).reshape(b_, n, c))


class FeedForward(nn.Module):
    """ARBEx `FeedForward`: gamma_1/2, `mlp` = Sequential(Linear, GELU, Drop, Linear, Drop)."""

    def __init__(self, dim, window, layer_scale=1e-5, ratio=4):
        super().__init__()
        self.window = window
        self.gamma_1 = nn.Parameter(layer_scale * torch.ones(dim))
        self.gamma_2 = nn.Parameter(layer_scale * torch.ones(dim))
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * ratio),
            nn.GELU(),
            nn.Dropout(0.0),
            nn.Linear(dim * ratio, dim),
            nn.Dropout(0.0),
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, windows, shortcut):
        b, h, w, _ = shortcut.shape
        s = self.window
        x = windows.view(b, h // s, w // s, s, s, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, -1)
        x = self.gamma_1 * x + shortcut
        return x + self.gamma_2 * self.mlp(self.norm(x))


class ArbexPosterV2(nn.Module):
    """ARBEx `PosterV2` (saved as `vit.best.NNNN.pth`): `(B, 3, S, S)` -> embedding `(B, D)`."""

    def __init__(
        self,
        image_size: int = 224,
        dims=(64, 128, 256),
        ir_units=(3, 4, 14),
        mfn_units=(4, 6, 2),
        window_heads=(2, 4, 8),
        vit_dim: int = 768,
        vit_depth: int = 2,
        vit_heads: int = 8,
        mlp_ratio: int = 4,
        layer_scale: float = 1e-5,
    ):
        super().__init__()
        s = image_size // 2
        self.internal_size = s
        windows = (s // 4, s // 8, s // 16)
        self.heads = tuple(window_heads)
        d0, d1, d2 = dims
        self.landmark = ArbexMobileFaceNet(d0, mfn_units)
        self.ir = ArbexIR50(dims, ir_units, s)
        self.conv = nn.Conv2d(8 * d0, d2, 3, padding=1)
        self.convs = nn.ModuleList([nn.Conv2d(d, d, 3, 2, 1) for d in dims])
        self.window_module = nn.ModuleList([Window(w, d) for w, d in zip(windows, dims)])
        self.attns = nn.ModuleList(
            [GlobalWindowAttention(d, h, w) for d, h, w in zip(dims, window_heads, windows)]
        )
        self.ffns = nn.ModuleList(
            [FeedForward(d, w, layer_scale, mlp_ratio) for d, w in zip(dims, windows)]
        )
        self.embs = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(d0, vit_dim, 3, 2, 1), nn.Conv2d(vit_dim, vit_dim, 3, 2, 1)
                ),
                nn.Conv2d(d1, vit_dim, 3, 2, 1),
                PatchEmbed(d2, vit_dim),
            ]
        )
        self.vit = VisionTransformer(
            3 * windows[2] ** 2,
            vit_dim,
            vit_depth,
            vit_heads,
            mlp_ratio,
            branch_dim=d2,
            with_head=False,
        )

    def features(self, x):
        f = {}
        xf = self.landmark(F.interpolate(x, size=self.internal_size))
        xf[-1] = self.conv(xf[-1])
        f["face1"], f["face2"], f["face3"] = xf
        qs = [_to_query(t, h) for t, h in zip(xf, self.heads)]
        irs = self.ir(x)
        f["ir1"], f["ir2"], f["ir3"] = irs
        outs = []
        for i in range(3):
            windows, shortcut = self.window_module[i](self.convs[i](irs[i]))
            o = self.ffns[i](self.attns[i](windows, qs[i]), shortcut)
            f[f"o{i + 1}"] = o
            outs.append(o.permute(0, 3, 1, 2))
        tokens = torch.cat(
            [
                self.embs[0](outs[0]).flatten(2).transpose(1, 2),
                self.embs[1](outs[1]).flatten(2).transpose(1, 2),
                self.embs[2](outs[2]),
            ],
            dim=1,
        )
        f["tokens"] = tokens
        f["embedding"] = self.vit(tokens)
        return f

    def forward(self, x):
        return self.features(x)["embedding"]


class ArbexClassifier(nn.Module):
    """`ClassificationHead(size_in, C, size_hidden, dropout, batch_norm=True)`.

    `.net` = [Linear, ReLU, BatchNorm1d, Dropout] per hidden width, then Linear(h, C).
    """

    def __init__(self, size_in=768, num_classes=8, hidden=(384, 192, 96), dropout=0.5):
        super().__init__()
        layers = []
        for h in hidden:
            layers += [nn.Linear(size_in, h), nn.ReLU(), nn.BatchNorm1d(h), nn.Dropout(dropout)]
            size_in = h
        layers.append(nn.Linear(size_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class ArbexAnchors(nn.Module):
    """`Anchors`: parameter `anchors` (C, K, d), zeros; forward gives distances (B, C, K)."""

    def __init__(self, size_emb=768, num_classes=8, num_anchors=10):
        super().__init__()
        self.anchors = nn.Parameter(torch.zeros(num_classes, num_anchors, size_emb))

    def forward(self, x):
        return ((self.anchors.unsqueeze(0) - x[:, None, None, :]) ** 2).sum(-1).sqrt()


class ArbexSelfAttn(nn.Module):
    """`SelfAttn`: Q/K/V Linear(d, C*K_att) + single-head MHA across the batch axis.

    `(B, d) -> (B, C)`: softmax over the last axis, then summed over the K_att slots.
    """

    def __init__(self, n_anchors=1, n_classes=8, size_emb=768, nhead=1):
        super().__init__()
        self.n_classes = n_classes
        self.n_anchors = n_anchors
        size_out = n_classes * n_anchors
        self.Q = nn.Linear(size_emb, size_out)
        self.K = nn.Linear(size_emb, size_out)
        self.V = nn.Linear(size_emb, size_out)
        self.attn_fn = nn.MultiheadAttention(size_out, num_heads=nhead)

    def forward(self, x):
        scores, _ = self.attn_fn(self.Q(x), self.K(x), self.V(x))
        scores = torch.softmax(scores, -1)
        return scores.view(-1, self.n_classes, self.n_anchors).sum(-1)


class ArbexModel(nn.Module):
    """Container of the four ARBEx parts in train.py's order (docs/state_dict_keys.md §F)."""

    def __init__(self, num_classes=8, num_anchors=10, hidden=(384, 192, 96), **poster_kwargs):
        super().__init__()
        self.vit = ArbexPosterV2(**poster_kwargs)
        d = poster_kwargs.get("vit_dim", 768)
        self.classifier = ArbexClassifier(d, num_classes, hidden)
        self.anchors = ArbexAnchors(d, num_classes, num_anchors)
        self.selfattn = ArbexSelfAttn(1, num_classes, d)

    def forward(self, x):
        e = self.vit(x)
        return {
            "embedding": e,
            "logits": self.classifier(e),
            "distances": self.anchors(e),
            "attention": self.selfattn(e),
        }
