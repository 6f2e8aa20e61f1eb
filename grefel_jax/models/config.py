"""Model configuration: one frozen dataclass for the backbone, one for the head, and presets.

The architecture is parametric in widths, depths and input size so that one code path serves
the exact POSTER++ dimensions (`paper`) and small CPU variants (`tiny`). Everything that the
official code hard-codes is a field here, with the official value as the `paper` value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

from grefel_jax.reliability import CORRECTIONS

# POSTER++'s ViT: Linear weights trunc-normal(std 0.01) at width 768 (`_init_vit_weights`).
OFFICIAL_VIT_INIT_STD = 0.01
OFFICIAL_VIT_DIM = 768
# Values of BackboneConfig.landmark_queries.
LANDMARK_QUERIES = ("network", "constant")


def _check_ranges(obj, where: str, positive=(), non_negative=(), at_least_one=()) -> None:
    """Raises ValueError naming `where.field` for the first field outside its range; tuple
    fields are checked element by element, None values are skipped."""
    for names_, test, rule in (
        (positive, lambda v: v > 0, "> 0"),
        (non_negative, lambda v: v >= 0, ">= 0"),
        (at_least_one, lambda v: v >= 1, ">= 1"),
    ):
        for name in names_:
            value = getattr(obj, name)
            values = value if isinstance(value, (tuple, list)) else (value,)
            if value is not None and not all(
                isinstance(v, (int, float)) and test(v) for v in values
            ):
                each = " (each)" if isinstance(value, (tuple, list)) else ""
                raise ValueError(f"{where}.{name}={value!r} must be {rule}{each}.")


@dataclasses.dataclass(frozen=True)
class BackboneConfig:
    """Sizes of the POSTER++ feature extractor (docs/model.md §1).

    Attributes:
      image_size: side of the square input image (224 in the paper). The backbones see
        `image_size // 2` after the `x[:, ::2, ::2]` sub-sampling; it must be divisible by 32.
      dims: channels of the three scales (64, 128, 256). IR-50 stage widths, the window
        attention widths and the MobileFaceNet widths all follow from these.
      ir_units: bottleneck units per IR-50 stage (3, 4, 14).
      mfn_units: residual blocks in MobileFaceNet conv_3 / conv_4 / conv_5 (4, 6, 2).
      window_heads: attention heads per scale (2, 4, 8): head dim 32 in the paper.
      drop_path_max: the largest DropPath rate; scales use linspace(0, max, 5)[:3].
      layer_scale_init: initial value of the FFN layer-scale gammas (1e-5).
      vit_dim: ViT width (768). vit_depth: number of blocks (2). vit_heads: heads (8).
      vit_mlp_ratio: MLP hidden = ratio * vit_dim (4).
      vit_init_std: std of the ViT's Linear weights. None (default) = the official 0.01 at
        width 768, scaled by sqrt(768 / vit_dim) at other widths, so that every width starts
        with the same signal through the blocks (docs/numerics.md); a number = that std at
        any width (0.01 = the official constant, whatever the width).
      freeze_image_backbone: stop gradients into IR-50 (ARBEx); the landmark network is always
        frozen.
      landmark_queries: what the window cross-attention attends from: 'network' (POSTER++:
        the landmark network's three feature maps) or 'constant' (an ablation: the three
        maps are replaced by zeros, so the queries are the same at every position and for
        every face: zero at the first two scales, the bias of `last_face_conv` at the third;
        no landmark information reaches the model. The landmark network and all parameters
        stay, so checkpoints load under either value).
    """

    image_size: int = 224
    dims: tuple[int, int, int] = (64, 128, 256)
    ir_units: tuple[int, int, int] = (3, 4, 14)
    mfn_units: tuple[int, int, int] = (4, 6, 2)
    window_heads: tuple[int, int, int] = (2, 4, 8)
    drop_path_max: float = 0.5
    layer_scale_init: float = 1e-5
    vit_dim: int = 768
    vit_depth: int = 2
    vit_heads: int = 8
    vit_mlp_ratio: int = 4
    vit_init_std: float | None = None
    freeze_image_backbone: bool = False
    landmark_queries: Literal["network", "constant"] = "network"

    def __post_init__(self):
        _check_ranges(
            self,
            "model.backbone",
            positive=("image_size", "dims", "ir_units", "window_heads", "vit_dim", "vit_heads"),
            non_negative=("mfn_units", "vit_depth", "layer_scale_init"),
            at_least_one=("vit_mlp_ratio",),
        )
        if not 0.0 <= self.drop_path_max < 1.0:
            raise ValueError(
                f"model.backbone.drop_path_max={self.drop_path_max} must be in [0, 1)."
            )
        if self.vit_init_std is not None and not self.vit_init_std > 0:
            raise ValueError(
                f"model.backbone.vit_init_std={self.vit_init_std} must be > 0 (or None)."
            )
        if self.landmark_queries not in LANDMARK_QUERIES:
            raise ValueError(
                f"model.backbone.landmark_queries={self.landmark_queries!r}: expected one of "
                f"{LANDMARK_QUERIES}."
            )
        if self.image_size % 32:
            raise ValueError(f"model.image_size={self.image_size} must be divisible by 32.")
        if self.dims[1] != 2 * self.dims[0]:
            raise ValueError(
                f"model.dims={self.dims}: MobileFaceNet doubles its width once, so dims[1] "
                "must equal 2 * dims[0]."
            )
        for dim, heads in zip(self.dims, self.window_heads):
            if dim % heads:
                raise ValueError(
                    f"model.dims {self.dims} not divisible by heads {self.window_heads}"
                )
        if self.vit_dim % self.vit_heads:
            raise ValueError(f"model.vit_dim={self.vit_dim} not divisible by vit_heads.")

    @property
    def vit_dense_init_std(self) -> float:
        """The ViT Linear init std in use (0.01 at the paper's width 768)."""
        if self.vit_init_std is not None:
            return float(self.vit_init_std)
        return OFFICIAL_VIT_INIT_STD * math.sqrt(OFFICIAL_VIT_DIM / self.vit_dim)

    @property
    def internal_size(self) -> int:
        """Side of the image the backbones see (112 in the paper)."""
        return self.image_size // 2

    @property
    def window_sizes(self) -> tuple[int, int, int]:
        """Feature-map side at each scale = window side (28, 14, 7): one window per image."""
        s = self.internal_size
        return (s // 4, s // 8, s // 16)


@dataclasses.dataclass(frozen=True)
class HeadConfig:
    """The classification head on the ViT embedding.

    Attributes:
      kind: 'poster' (one Linear, as POSTER++) or 'grefel' (reliability balancing, §2).
      num_classes: C.
      reduction_dim: Linear reduction of the embedding before the head (GReFEL figure: 128);
        None or 0 keeps the raw embedding (ARBEx code).
      mlp_hidden: hidden widths of the primary MLP (ARBEx: 384, 192, 96), each
        Linear -> ReLU -> BatchNorm -> Dropout.
      mlp_dropout: dropout rate in the primary MLP (0.5).
      classifier_init: init of the MLP's last Linear: 'torch' (PyTorch's default, the
        official code) or 'zeros' (GReFEL default here: from scratch, a randomly initialised
        last layer behind dropout kept the tiny model at chance; docs/numerics.md).
      temperature: T in p = softmax(logits / T).
      num_anchors: K anchors per class.
      delta: δ in softmax(-distance / δ).
      anchor_init: 'normal' (std `anchor_init_std`) or 'zeros' (ARBEx code).
      anchor_init_std: standard deviation of the normal anchor init.
      attention: 'per_sample' (GReFEL: multi-head self-attention within each sample) or
        'batch' (ARBEx code: single-head attention across the batch axis).
      attention_heads: heads of the per-sample attention.
      attention_tokens: number of tokens the embedding is split into for per-sample attention.
      correction: the correction r in q_corr = c_p p + (1 - c_p) r: 'both' (GReFEL: the
        confidence-weighted mix of the anchor and attention corrections), 'anchors' (r = g)
        or 'attention' (r = m). The last two are ablations (docs/robustness.md); every value
        builds the same parameters, so a checkpoint loads under any of them.
    """

    kind: Literal["poster", "grefel"] = "grefel"
    num_classes: int = 7
    reduction_dim: int | None = 128
    mlp_hidden: tuple[int, ...] = (384, 192, 96)
    mlp_dropout: float = 0.5
    classifier_init: Literal["torch", "zeros"] = "zeros"
    temperature: float = 1.0
    num_anchors: int = 10
    delta: float = 1.0
    anchor_init: Literal["normal", "zeros"] = "normal"
    anchor_init_std: float = 0.1
    attention: Literal["per_sample", "batch"] = "per_sample"
    attention_heads: int = 4
    attention_tokens: int = 8
    correction: Literal["both", "anchors", "attention"] = "both"

    def __post_init__(self):
        if self.kind not in ("poster", "grefel"):
            raise ValueError(f"model.head.kind={self.kind!r}: expected 'poster' or 'grefel'.")
        if self.classifier_init not in ("torch", "zeros"):
            raise ValueError(
                f"model.head.classifier_init={self.classifier_init!r}: 'torch' or 'zeros'."
            )
        if not 0.0 <= self.mlp_dropout < 1.0:
            raise ValueError(f"model.head.mlp_dropout={self.mlp_dropout} must be in [0, 1).")
        if self.anchor_init not in ("normal", "zeros"):
            raise ValueError(f"model.head.anchor_init={self.anchor_init!r}: 'normal' or 'zeros'.")
        if self.attention not in ("per_sample", "batch"):
            raise ValueError(f"model.head.attention={self.attention!r}: 'per_sample' or 'batch'.")
        if self.correction not in CORRECTIONS:
            raise ValueError(
                f"model.head.correction={self.correction!r}: expected one of {CORRECTIONS}."
            )
        if self.num_classes < 2:
            raise ValueError(f"model.head.num_classes={self.num_classes} must be >= 2.")
        _check_ranges(
            self,
            "model.head",
            positive=(
                "mlp_hidden",
                "temperature",
                "num_anchors",
                "delta",
                "attention_heads",
                "attention_tokens",
            ),
            non_negative=("reduction_dim", "anchor_init_std"),
        )

    @property
    def batch_dependent(self) -> bool:
        """True for ARBEx's attention across the batch: a sample's corrected output depends
        on the other samples of its batch (padding a batch changes real results)."""
        return self.kind == "grefel" and self.attention == "batch"

    @property
    def arbex_layout(self) -> bool:
        """The parameter layout of the official ARBEx head: no reduction, batch attention."""
        return self.batch_dependent and not self.reduction_dim


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A whole GReFEL model: backbone sizes + head."""

    backbone: BackboneConfig = BackboneConfig()
    head: HeadConfig = HeadConfig()

    def __post_init__(self):
        head = self.head
        if head.kind == "grefel" and head.attention == "per_sample":
            # The per-sample attention splits the head embedding into tokens and heads; the
            # head checks this too, but only when the model is traced (after compiling).
            dim = head.reduction_dim or self.backbone.vit_dim
            if dim % head.attention_tokens or (dim // head.attention_tokens) % head.attention_heads:
                raise ValueError(
                    f"model.head.attention_tokens={head.attention_tokens} and "
                    f"attention_heads={head.attention_heads}: the head embedding dim {dim} "
                    "(model.head.reduction_dim, or model.backbone.vit_dim when it is None/0) "
                    "must be divisible by attention_tokens, and dim / attention_tokens by "
                    "attention_heads."
                )


# Exact POSTER++ dimensions.
PAPER_BACKBONE = BackboneConfig()

# Same topology, small enough for CPU work: a batch-64 train step well under a second on
# 2 cores. 96x96 input -> 48x48 inside -> windows of 12, 6 and 3.
TINY_BACKBONE = BackboneConfig(
    image_size=96,
    dims=(16, 32, 64),
    ir_units=(1, 1, 2),
    mfn_units=(1, 1, 1),
    window_heads=(2, 4, 8),
    vit_dim=64,
    vit_depth=2,
    vit_heads=4,
    vit_mlp_ratio=4,
)

VARIANTS: dict[str, BackboneConfig] = {"paper": PAPER_BACKBONE, "tiny": TINY_BACKBONE}

# Head sizes per variant, applied before the head preset and the caller's overrides. `tiny`
# keeps the head narrower than its 64-d ViT: a 32-d reduction, an MLP of 64 and 32 units,
# per-sample attention over 4 tokens of 8 dims with 2 heads.
HEAD_SIZES: dict[str, dict[str, Any]] = {
    "paper": {},
    "tiny": dict(reduction_dim=32, mlp_hidden=(64, 32), attention_tokens=4, attention_heads=2),
}

# Head presets. `grefel` is the default of docs/decisions.md; `arbex_code` reproduces the
# official ARBEx code exactly; `poster` is POSTER++'s single Linear. The loss settings that go
# with each preset are `losses.LOSS_PRESETS`.
HEAD_PRESETS: dict[str, dict[str, Any]] = {
    "grefel": {},
    "arbex_code": dict(
        kind="grefel",
        reduction_dim=None,
        num_anchors=1,
        anchor_init="zeros",
        attention="batch",
        classifier_init="torch",
    ),
    "poster": dict(kind="poster"),
}


def make_model_config(
    variant: str = "paper",
    head: str = "grefel",
    num_classes: int = 7,
    backbone_overrides: Mapping[str, Any] | None = None,
    head_overrides: Mapping[str, Any] | None = None,
) -> ModelConfig:
    """Builds a ModelConfig from a variant name, a head preset and overrides.

    Head fields come from, in order: the HeadConfig defaults, the variant's `HEAD_SIZES`,
    the head preset, `num_classes`, then `head_overrides`.

    Args:
      variant: 'paper' or 'tiny'.
      head: 'grefel', 'arbex_code' or 'poster'.
      num_classes: C.
      backbone_overrides / head_overrides: field -> value; unknown fields are an error that
        names the field.
    """
    if variant not in VARIANTS:
        raise ValueError(f"model.variant={variant!r}: expected one of {sorted(VARIANTS)}.")
    if head not in HEAD_PRESETS:
        raise ValueError(f"model.head_preset={head!r}: expected one of {sorted(HEAD_PRESETS)}.")
    backbone = _replace_checked(VARIANTS[variant], backbone_overrides or {}, "model.backbone")
    head_fields = {
        **HEAD_SIZES[variant],
        **HEAD_PRESETS[head],
        "num_classes": num_classes,
        **(head_overrides or {}),
    }
    head_cfg = _replace_checked(HeadConfig(), head_fields, "model.head")
    return ModelConfig(backbone=backbone, head=head_cfg)


def _replace_checked(obj, overrides: Mapping[str, Any], where: str):
    names = {f.name for f in dataclasses.fields(obj)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; valid fields are {sorted(names)}.")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(obj, **values)


def model_config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """JSON-ready dict of a ModelConfig (tuples become lists)."""
    return dataclasses.asdict(config)


def model_config_from_dict(values: Mapping[str, Any]) -> ModelConfig:
    """Inverse of `model_config_to_dict`; unknown keys are an error that names them."""
    unknown = sorted(set(values) - {"backbone", "head"})
    if unknown:
        raise ValueError(f"model config: unknown section(s) {unknown}.")
    backbone = _replace_checked(BackboneConfig(), values.get("backbone", {}), "model.backbone")
    head = _replace_checked(HeadConfig(), values.get("head", {}), "model.head")
    return ModelConfig(backbone=backbone, head=head)
