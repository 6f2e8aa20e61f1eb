"""The common base of every training config (POSTER++ recipe, GReFEL head and losses).

Defaults follow the POSTER++ recipe (docs/training.md): SAM (rho 0.05) over Adam, exponential
decay 0.98 per epoch, batch 144, 200 epochs, no weight decay; the head and the losses are the
GReFEL presets (docs/decisions.md). Dataset configs override the data section and the
learning rates through `dataset_config`.

Every config's `get_config(arg)` takes big_vision's argument string: `key=value` pairs
separated by commas (`classes=8,runlocal`). `runlocal` shrinks any recipe to a few steps of
the tiny model, to check a prepared dataset end to end on a laptop.

Every field is overridable from the command line, e.g.
`--config.optim.lr_backbone=1e-5 --config.model.head.num_anchors=8`. A misspelt key, at any
depth, stops with an error that names it.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from grefel_jax.data.config import get_data_config
from grefel_jax.losses import LossConfig
from grefel_jax.models.config import BackboneConfig, HeadConfig

placeholder = ml_collections.config_dict.placeholder


def _override_section(dataclass_type) -> ml_collections.ConfigDict:
    """One typed, unset (None) field per dataclass field: set = override the preset."""
    section = ml_collections.ConfigDict()
    for field in dataclasses.fields(dataclass_type):
        default = field.default
        kind = type(default) if default is not None else int
        if isinstance(default, tuple):
            kind = tuple
        section[field.name] = placeholder(kind)
    return section


def get_base_config() -> ml_collections.ConfigDict:
    """All fields with their POSTER++/GReFEL defaults (RAF-DB learning rate)."""
    config = ml_collections.ConfigDict()
    config.mode = "train_and_eval"  # 'train' | 'eval' | 'train_and_eval'
    config.seed = 0

    # Model: a variant, a head preset, and per-field overrides (None = preset value).
    config.model = ml_collections.ConfigDict()
    config.model.variant = "paper"  # 'paper' | 'tiny'
    config.model.head_preset = "grefel"  # 'grefel' | 'arbex_code' | 'poster' (head + loss)
    config.model.backbone = _override_section(BackboneConfig)
    config.model.head = _override_section(HeadConfig)

    config.data = get_data_config()
    config.final_eval_splits = ()  # extra splits reported with the best checkpoint at the end

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adam"  # 'adam' | 'adamw' | 'sgd'
    config.optim.lr_backbone = 3.5e-5
    config.optim.lr_head = 3.5e-5
    config.optim.lr_anchors = 3.5e-5
    config.optim.schedule = "exponential"  # 'constant' | 'exponential' | 'cosine'
    config.optim.decay_rate = 0.98  # per epoch (torch ExponentialLR(gamma=0.98))
    config.optim.warmup_steps = 0
    config.optim.min_lr_ratio = 0.0  # cosine floor
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.weight_decay = 0.0  # POSTER++ parses 1e-4 but never passes it
    config.optim.momentum = 0.9  # sgd
    config.optim.sam = True
    config.optim.sam_rho = 0.05
    config.optim.sam_adaptive = False
    config.optim.grad_clip_norm = 0.0  # 0 = off
    config.optim.ema_decay = 0.0  # 0 = off

    # Loss settings: None = the head preset's value (losses.LOSS_PRESETS), e.g.
    # `--config.loss.anchor_loss_form=official --config.loss.lambda_center=0.5`.
    config.loss = _override_section(LossConfig)

    # Devices: batch over data x fsdp; params >= fsdp_min_size elements sharded over fsdp.
    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    config.mesh.fsdp_min_size = 2**14
    config.compute_dtype = "float32"  # or 'bfloat16' (params and losses stay float32)

    config.batch_size = 144  # global
    config.eval_batch_size = 256  # global
    config.num_epochs = 200.0
    config.num_train_steps = -1  # > 0 overrides num_epochs

    config.log_every_steps = 50
    config.eval_every_steps = -1  # -1 = once per epoch
    config.checkpoint_every_steps = -1  # -1 = once per epoch
    config.keep_checkpoints = 3  # the last N, plus the best by `best_metric`
    config.best_metric = "primary/accuracy"
    config.async_checkpoints = True
    config.init_from = ""  # converted pretrained weights (checkpoint.merge_pretrained)
    return config


def dataset_config(
    name: str,
    *,
    builder_config: str | None = None,
    eval_split: str = "test",
    lr: float = 3.5e-5,
    sampler: str = "none",
    final_eval_splits: tuple[str, ...] = (),
) -> ml_collections.ConfigDict:
    """The base config for one prepared dataset with one learning rate for every group."""
    config = get_base_config()
    config.data.name = name
    config.data.builder_config = builder_config
    config.data.eval_split = eval_split
    config.data.sampler = sampler
    config.final_eval_splits = tuple(final_eval_splits)
    config.optim.lr_backbone = config.optim.lr_head = config.optim.lr_anchors = lr
    return config


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """big_vision-style `get_config` argument: 'a=1,b=x,flag' -> {a: 1, b: 'x', flag: True}.

    A bare word sets that key to True; a bare value with one default (`'8'` for
    `classes=...`) sets it; unknown keys are an error that names them.
    """
    values = dict(defaults)
    values.setdefault("runlocal", False)
    for part in filter(None, (p.strip() for p in (arg or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep and key not in values:
            positional = [k for k in defaults if k != "runlocal"]
            if len(positional) != 1:
                raise ValueError(f"config argument {part!r}: expected key=value.")
            key, value = positional[0], part
        elif not sep:
            value = "True"
        if key not in values:
            raise ValueError(f"config argument key {key!r}: expected one of {sorted(values)}.")
        default = values[key]
        if isinstance(default, bool):
            values[key] = value.lower() in ("1", "true", "yes", "")
        else:
            values[key] = type(default)(value) if default is not None else value
    return ml_collections.ConfigDict(values)


def apply_runlocal(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few steps of the tiny model on the same data: a laptop check of a recipe."""
    config.model.variant = "tiny"
    config.optim.sam = False
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 10
    config.log_every_steps = 1
    config.eval_every_steps = 10
    config.checkpoint_every_steps = 10
    return config


def landmark_pretrain_config(name: str, builder_config: str | None) -> ml_collections.ConfigDict:
    """The base of `grefel_jax.landmarks.pretrain` recipes: MobileFaceNet + GDC head on the
    `landmarks` feature of one prepared dataset.

    The sections mean what they mean in training (model variant and backbone overrides,
    data and augmentation, optimizer, mesh, run length, checkpoints); every parameter is in
    the `backbone` optimizer group (`optim.lr_backbone`). `init_from` may name a converted
    MobileFaceNet to start from. `landmarks` holds the loss and the reported split.
    """
    config = get_base_config()
    config.data.name = name
    config.data.builder_config = builder_config
    config.data.augment.random_erasing_p = 0.0  # erased points stay targets: off by default
    config.best_metric = "nme"  # kept: the checkpoint with the lowest validation NME
    config.landmarks = ml_collections.ConfigDict()
    config.landmarks.loss = "wing"  # 'wing' | 'smooth_l1', on crop-unit coordinates
    config.landmarks.wing_w = 0.1  # the paper's 10 px on a ~100 px crop
    config.landmarks.wing_epsilon = 0.02
    config.landmarks.smooth_l1_beta = 0.01
    config.landmarks.report_split = "test"  # held out: W/landmarks_eval.json and .png
    return config


def identity_pretrain_config(name: str, builder_config: str | None) -> ml_collections.ConfigDict:
    """The base of `python -m grefel_jax.pretrain identity` recipes: IR-50 + fourth stage +
    embedding + margin head on one prepared identity dataset (`synthetic_identities`, or a
    user's `identity_folder`).

    The sections mean what they mean in training (model variant and backbone overrides, data
    and augmentation, optimizer, mesh, run length, checkpoints); the backbone is in the
    `backbone` optimizer group (`optim.lr_backbone`), the margin head in `head`
    (`optim.lr_head`). `init_from` may name a converted face.evoLVe `ir50.pth` to start
    from. `identity` holds the margin loss, the embedding and the verification protocol.
    """
    config = get_base_config()
    config.data.name = name
    config.data.builder_config = builder_config
    config.data.eval_split = "validation"  # held-out identities: the best checkpoint
    config.data.augment.random_erasing_p = 0.0
    config.best_metric = "verification_accuracy"  # kept: the best on validation identities
    config.identity = ml_collections.ConfigDict()
    config.identity.loss = "cosface"  # 'cosface' | 'arcface' (grefel_jax.identity.losses)
    config.identity.scale = 30.0  # s
    config.identity.margin = 0.35  # m (CosFace: cosine units; ArcFace: radians, e.g. 0.5)
    config.identity.margin_warmup_steps = 0  # m rises from 0 over these steps
    # Fourth stage and embedding: None = the variant's IDENTITY_SIZES (tiny: 1 unit, 128-d;
    # paper: 3 units, 512-d, face.evoLVe's IR-50).
    config.identity.stage4_units = placeholder(int)
    config.identity.embedding_dim = placeholder(int)
    config.identity.embedding_dropout = 0.0
    config.identity.flip_test = True  # embeddings of the image plus its mirror image
    config.identity.pairs_per_fold = 300  # LFW: 10 folds of 300 same + 300 different pairs
    config.identity.report_split = "test"  # held out: W/identity_eval.json and .png
    return config
