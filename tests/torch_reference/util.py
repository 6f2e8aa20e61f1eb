"""Helpers for the PyTorch reference modules: random weights and size mapping."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fills every floating parameter and buffer with seeded random values, in place.

    The official inits hide bugs (LayerNorm = 1/0, layer-scale gammas 1e-5, BN stats 0/1,
    bias tables std 0.02), so parity tests use values of order one everywhere: weights
    N(0, 1/fan_in), BN/LN scales and running variances U(0.5, 1.5), biases and running means
    N(0, 0.1), PReLU slopes U(0, 0.5), gammas U(0.5, 1.5), bias tables / tokens N(0, 0.5).
    Integer buffers (relative-position indices, num_batches_tracked) are left alone.
    """
    g = torch.Generator().manual_seed(seed)

    def normal(shape, std):
        return torch.randn(shape, generator=g) * std

    def uniform(shape, lo, hi):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "running_var":
                new = uniform(t.shape, 0.5, 1.5)
            elif leaf == "running_mean":
                new = normal(t.shape, 0.1)
            elif leaf in ("relative_position_bias_table", "table", "cls_token", "pos_embed"):
                new = normal(t.shape, 0.5)
            elif leaf in ("gamma1", "gamma2", "gamma_1", "gamma_2"):
                new = uniform(t.shape, 0.5, 1.5)
            elif leaf == "anchors":
                new = normal(t.shape, 1.0)
            elif t.ndim >= 2:
                fan_in = t[0].numel()
                new = normal(t.shape, fan_in**-0.5)
            elif _is_prelu(module, name):
                new = uniform(t.shape, 0.0, 0.5)
            elif leaf == "weight":
                new = uniform(t.shape, 0.5, 1.5)
            else:
                new = normal(t.shape, 0.1)
            t.copy_(new.to(t.dtype))
    return module


def _is_prelu(root: nn.Module, name: str) -> bool:
    path = name.rsplit(".", 1)[0]
    try:
        return isinstance(root.get_submodule(path), nn.PReLU)
    except AttributeError:
        return False


def sizes_from_backbone_config(backbone: Any) -> dict[str, Any]:
    """Constructor kwargs of `PosterV2` / `ArbexPosterV2` from a `BackboneConfig`."""
    return dict(
        image_size=backbone.image_size,
        dims=tuple(backbone.dims),
        ir_units=tuple(backbone.ir_units),
        mfn_units=tuple(backbone.mfn_units),
        window_heads=tuple(backbone.window_heads),
        vit_dim=backbone.vit_dim,
        vit_depth=backbone.vit_depth,
        vit_heads=backbone.vit_heads,
        mlp_ratio=backbone.vit_mlp_ratio,
        layer_scale=backbone.layer_scale_init,
    )
