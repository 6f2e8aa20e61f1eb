"""POSTER++ (`pyramid_trans_expr2`) in PyTorch, from docs/model.md §1
(docs/state_dict_keys.md §A).

The module names, the registration order and the dead parameters (`VIT.patch_embed`,
`VIT.eca_block`, `VIT.CON1`, `VIT.IRLinear1/2`, `VIT.blocks.i.conv`, the backbones'
`output_layer`s) are those of the official class, so that `state_dict()` has the 747 keys of
the released checkpoints. All sizes are arguments; the defaults are the paper's.

`PosterV2.features(x)` returns the intermediate tensors that the parity tests compare;
`forward(x)` returns the logits like the official module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ir50 import IR50Backbone
from .mobilefacenet import MobileFaceNet


def relative_position_index(window: int) -> torch.Tensor:
    """Swin relative-position index `(w*w, w*w)` int64 from an 'ij' meshgrid."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += window - 1
    rel[:, :, 1] += window - 1
    rel[:, :, 0] *= 2 * window - 1
    return rel.sum(-1)


class Window(nn.Module):
    """`window`: channels-last + LayerNorm(eps 1e-5); one window per image.

    `(B, C, H, W) -> windows (B*nW, w*w, C), shortcut (B, H, W, C)`.
    """

    def __init__(self, window: int, dim: int):
        super().__init__()
        self.window = window
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.norm(x.permute(0, 2, 3, 1))
        b, h, w, c = x.shape
        s = self.window
        windows = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5)
        return windows.reshape(-1, s * s, c), x


class WindowAttentionGlobal(nn.Module):
    """Cross-attention: landmark queries (no projection), K/V from `qkv` Linear(dim, 2*dim).

    `x (B_, N, C)`, `q_global (B, 1, heads, N, C/heads)` -> `(B_, N, C)`.
    """

    def __init__(self, dim: int, num_heads: int, window: int):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim / num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * window - 1) ** 2, num_heads)
        )
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = nn.Linear(dim, dim * 2, bias=True)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, q_global):
        b_, n, c = x.shape
        hd = c // self.num_heads
        kv = self.qkv(x).reshape(b_, n, 2, self.num_heads, hd).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        q = q_global.repeat(1, b_ // q_global.shape[0], 1, 1, 1).reshape(b_, self.num_heads, n, hd)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        n2 = self.window * self.window
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn = attn + bias.view(n2, n2, -1).permute(2, 0, 1).unsqueeze(0)
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b_, n, c)
        return self.proj(x)


class Mlp(nn.Module):
    """timm Mlp: fc1 -> exact GELU -> fc2 (dropout 0)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class FeedForward(nn.Module):
    """`feedforward`: layer-scale residual MLP around the window-attention output.

    `attn_windows (B*nW, w*w, C)`, `shortcut (B, H, W, C)` -> `(B, H, W, C)`. DropPath is
    the identity in eval mode, so it is not built.
    """

    def __init__(self, dim: int, window: int, layer_scale: float = 1e-5, mlp_ratio: int = 4):
        super().__init__()
        self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
        self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))
        self.window = window
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.norm = nn.LayerNorm(dim)

    def forward(self, attn_windows, shortcut):
        b, h, w, _ = shortcut.shape
        s = self.window
        x = attn_windows.view(b, h // s, w // s, s, s, -1).permute(0, 1, 3, 2, 4, 5)
        x = shortcut + self.gamma1 * x.reshape(b, h, w, -1)
        return x + self.gamma2 * self.mlp(self.norm(x))


class PatchEmbed(nn.Module):
    """1x1 conv to tokens: `(B, C, H, W) -> (B, H*W, D)`."""

    def __init__(self, in_c: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=1)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class SEBlock(nn.Module):
    """`SE_block`: x * sigmoid(linear2(relu(linear1(x))))."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear1 = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, x):
        return x * torch.sigmoid(self.linear2(torch.relu(self.linear1(x))))


class EcaBlock(nn.Module):
    """Dead `eca_block` of the official ViT (channel=196 -> Conv1d kernel 5)."""

    def __init__(self, channel: int = 196):
        super().__init__()
        k = int(abs((math.log(channel, 2) + 1) / 2))
        k = k if k % 2 else k + 1
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, bias=False)


class Attention(nn.Module):
    """ViT attention: `qkv` Linear(D, 3D, bias), `num_heads` heads, `proj` Linear(D, D)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm block (LN eps 1e-6). `conv` (Conv1d over tokens) is dead, as officially."""

    def __init__(self, dim: int, tokens: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.conv = nn.Conv1d(tokens + 1, tokens + 1, 1)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ClassificationHead(nn.Module):
    """POSTER++ head: one Linear."""

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.linear(x)


class VisionTransformer(nn.Module):
    """The fusion ViT: CLS + pos_embed, `depth` blocks, LN, CLS token, SE gate, head.

    `(B, T, D) -> embedding (B, D)` via `embed`, logits via `forward`. With `with_head=False`
    (ARBEx) there is no `head` and no `eca_block`.
    """

    def __init__(
        self,
        tokens: int = 147,
        embed_dim: int = 768,
        depth: int = 2,
        num_heads: int = 8,
        mlp_ratio: int = 4,
        num_classes: int = 7,
        branch_dim: int = 256,
        with_head: bool = True,
    ):
        super().__init__()
        d = embed_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, d))
        self.se_block = SEBlock(d)
        self.patch_embed = PatchEmbed(branch_dim, d)  # dead
        if with_head:
            self.head = ClassificationHead(d, num_classes)
            self.eca_block = EcaBlock()  # dead
        self.with_head = with_head
        self.CON1 = nn.Conv2d(branch_dim, d, kernel_size=1, bias=False)  # dead
        self.IRLinear1 = nn.Linear(4 * branch_dim, d)  # dead
        self.IRLinear2 = nn.Linear(d, 2 * branch_dim)  # dead
        self.blocks = nn.Sequential(*[Block(d, tokens, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(d, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def embed(self, x):
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.se_block(x[:, 0])

    def forward(self, x):
        e = self.embed(x)
        return self.head(e) if self.with_head else e


def _to_query(x, heads):
    """`(B, C, H, W)` landmark map -> `(B, 1, heads, H*W, C/heads)`, no projection."""
    x = x.permute(0, 2, 3, 1)
    b, h, w, c = x.shape
    return x.reshape(b, 1, h * w, heads, c // heads).permute(0, 1, 3, 2, 4)


class PosterV2(nn.Module):
    """`pyramid_trans_expr2`. Input `(B, 3, S, S)` ImageNet-normalised (S = 224).

    Args (defaults = paper): num_classes; image_size S; dims (64,128,256); ir_units
    (3,4,14); mfn_units (4,6,2); window_heads (2,4,8); vit_dim 768; vit_depth 2; vit_heads 8;
    mlp_ratio 4; layer_scale 1e-5 (initial FFN gammas).
    """

    def __init__(
        self,
        num_classes: int = 7,
        image_size: int = 224,
        dims: tuple[int, int, int] = (64, 128, 256),
        ir_units: tuple[int, int, int] = (3, 4, 14),
        mfn_units: tuple[int, int, int] = (4, 6, 2),
        window_heads: tuple[int, int, int] = (2, 4, 8),
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
        self.window_heads = tuple(window_heads)
        tokens = 3 * windows[2] ** 2
        d0, d1, d2 = dims
        self.face_landback = MobileFaceNet(d0, mfn_units, 136, s, gdc=True)
        self.VIT = VisionTransformer(
            tokens, vit_dim, vit_depth, vit_heads, mlp_ratio, num_classes, branch_dim=d2
        )
        self.ir_back = IR50Backbone(dims, ir_units, s, naming="stages")
        for i, (d, h, w) in enumerate(zip(dims, window_heads, windows), start=1):
            setattr(self, f"attn{i}", WindowAttentionGlobal(d, h, w))
        for i, (d, w) in enumerate(zip(dims, windows), start=1):
            setattr(self, f"window{i}", Window(w, d))
        for i, d in enumerate(dims, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(d, d, kernel_size=3, stride=2, padding=1))
        for i, (d, w) in enumerate(zip(dims, windows), start=1):
            setattr(self, f"ffn{i}", FeedForward(d, w, layer_scale, mlp_ratio))
        self.last_face_conv = nn.Conv2d(8 * d0, d2, kernel_size=3, padding=1)
        self.embed_q = nn.Sequential(
            nn.Conv2d(d0, vit_dim, 3, 2, 1), nn.Conv2d(vit_dim, vit_dim, 3, 2, 1)
        )
        self.embed_k = nn.Sequential(nn.Conv2d(d1, vit_dim, 3, 2, 1))
        self.embed_v = PatchEmbed(d2, vit_dim)
        for p in self.face_landback.parameters():
            p.requires_grad = False

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All intermediate tensors, NCHW maps except `o*` (B,H,W,C) and tokens (B,T,D)."""
        f = {}
        f1, f2, f3 = self.face_landback(F.interpolate(x, size=self.internal_size))
        f["face1"], f["face2"], f["face3_raw"] = f1, f2, f3
        f3 = self.last_face_conv(f3)
        f["face3"] = f3
        qs = [_to_query(t, h) for t, h in zip((f1, f2, f3), self.window_heads)]
        irs = self.ir_back(x)
        f["ir1"], f["ir2"], f["ir3"] = irs
        outs = []
        for i, (ir, q) in enumerate(zip(irs, qs), start=1):
            y = getattr(self, f"conv{i}")(ir)
            windows, shortcut = getattr(self, f"window{i}")(y)
            o = getattr(self, f"attn{i}")(windows, q)
            o = getattr(self, f"ffn{i}")(o, shortcut)
            f[f"o{i}"] = o
            outs.append(o.permute(0, 3, 1, 2))
        tokens = torch.cat(
            [
                self.embed_q(outs[0]).flatten(2).transpose(1, 2),
                self.embed_k(outs[1]).flatten(2).transpose(1, 2),
                self.embed_v(outs[2]),
            ],
            dim=1,
        )
        f["tokens"] = tokens
        f["embedding"] = self.VIT.embed(tokens)
        f["logits"] = self.VIT.head(f["embedding"])
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)["logits"]
