"""Config -> objects: the one module that interprets an `ml_collections` run config.

Training, evaluation, prediction, the study and the benchmarks call these functions and
then work with typed, validated objects (ModelConfig, LossConfig, RunLength,
TrainerSettings, LoopSettings, a dtype), never with the config's fields. A misspelt or
invalid field fails here, naming its key. Two sections go on whole to the module that owns
their keys: `config.data` to the data package (`data/config.py` lists them; the training
setup opens the dataset once, `data.source.open_training_set`), and the optimizer's keys of
`config.optim` to `optim.make_optimizer` (through `TrainerSettings.optimizer`). The
pretraining tasks read their own sections (`config.landmarks`, `config.identity`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from grefel_jax.losses import LossConfig, make_loss_config
from grefel_jax.models import GReFEL, ModelConfig, make_model_config

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _set_fields(section: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an override section that were set (None = keep the preset's value)."""
    return {k: v for k, v in section.items() if v is not None}


def model_config(config, num_classes: int) -> ModelConfig:
    """ModelConfig from `config.model`: variant, head preset, per-field overrides.

    `config.model.head.num_classes`, when set, wins over the dataset's class count.
    """
    head = _set_fields(config.model.head)
    num_classes = int(head.pop("num_classes", num_classes))
    return make_model_config(
        variant=config.model.variant,
        head=config.model.head_preset,
        num_classes=num_classes,
        backbone_overrides=_set_fields(config.model.backbone),
        head_overrides=head,
    )


def check_config(config) -> None:
    """Builds what this module reads from a run config, to fail on a bad value as the config
    is read (command lines call it from `cli.parse_flags`), before data, workdir or
    compilation: the model (BackboneConfig / HeadConfig check every field's range and name
    the key), the loss and the compute dtype.

    The class count is the dataset's, unknown here: `model.head.num_classes` when set, else
    a placeholder 7 (only `num_classes >= 2` depends on it).

    Raises:
      ValueError: one line naming the config key.
    """
    head = config.model.head
    num_classes = head.num_classes if "num_classes" in head and head.num_classes else 7
    model_config(config, num_classes)
    if "loss" in config:
        loss_config(config)
    if "compute_dtype" in config:
        compute_dtype(config)
    for key in ("batch_size", "eval_batch_size"):
        if key in config and config[key] is not None and config[key] <= 0:
            raise ValueError(f"config.{key}={config[key]} must be positive.")
    if "data" in config and "folds" in config.data:
        from grefel_jax.data import folds

        folds.check(config.data.folds)


def loss_config(config) -> LossConfig:
    """LossConfig from `config.loss`: the head preset's settings, then the fields set."""
    return make_loss_config(config.model.head_preset, _set_fields(config.loss))


def compute_dtype(config):
    """The model's compute dtype (`config.compute_dtype`); parameters and losses stay float32."""
    name = config.compute_dtype
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"config.compute_dtype={name!r}: expected {sorted(COMPUTE_DTYPES)}.")
    return COMPUTE_DTYPES[name]


def make_model(model_config: ModelConfig, dtype=jnp.float32) -> GReFEL:
    """THE model constructor: the Linen module for `model_config` computing in `dtype`."""
    return GReFEL(config=model_config, dtype=dtype)


@dataclasses.dataclass(frozen=True)
class RunLength:
    """How long a run is and how often it logs, evaluates and saves, in steps.

    Attributes:
      steps_per_epoch: global batches per pass over the training split (at least 1).
      total_steps: the run's length (also T of the trust ramp).
      log_every, eval_every, checkpoint_every: periods; a config value <= 0 means one epoch.
    """

    steps_per_epoch: int
    total_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int


def run_length(config, train_size: int) -> RunLength:
    """RunLength from the config and the training split's size.

    `num_train_steps > 0` fixes the length; otherwise `num_epochs` epochs.
    """
    if config.batch_size <= 0:
        raise ValueError(f"config.batch_size={config.batch_size} must be positive.")
    steps_per_epoch = max(1, int(train_size) // int(config.batch_size))
    if config.num_train_steps > 0:
        total = int(config.num_train_steps)
    elif config.num_epochs > 0:
        total = int(round(config.num_epochs * steps_per_epoch))
    else:
        raise ValueError("Set config.num_train_steps or config.num_epochs to a positive value.")

    def period(value) -> int:
        return int(value) if value > 0 else steps_per_epoch

    return RunLength(
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        log_every=max(1, int(config.log_every_steps)),
        eval_every=period(config.eval_every_steps),
        checkpoint_every=period(config.checkpoint_every_steps),
    )


@dataclasses.dataclass(frozen=True)
class TrainerSettings:
    """What a trainer (`trainer.build_trainer` and the pretraining trainers) reads of a run
    config besides the model, the loss and the run length.

    Attributes:
      batch_size: the global batch.
      compute_dtype: the model's compute dtype.
      optimizer: the `config.optim` keys, for `optim.make_optimizer` (it reads the
        optimizer's own: name, learning rate per group, schedule, clipping).
      sam_rho: SAM radius; 0 = SAM off.
      sam_adaptive: ASAM instead of SAM.
      ema_decay: EMA decay of the weights; 0 = no EMA.
      fsdp_min_size: arrays with fewer elements stay replicated (`sharding.param_shardings`).
    """

    batch_size: int
    compute_dtype: Any
    optimizer: Mapping[str, Any]
    sam_rho: float
    sam_adaptive: bool
    ema_decay: float
    fsdp_min_size: int


def trainer_settings(config) -> TrainerSettings:
    """TrainerSettings of a run config (GReFEL training or a pretraining)."""
    if config.batch_size <= 0:
        raise ValueError(f"config.batch_size={config.batch_size} must be positive.")
    optim = config.optim
    return TrainerSettings(
        batch_size=int(config.batch_size),
        compute_dtype=compute_dtype(config),
        optimizer=dict(optim.items()),
        sam_rho=float(optim.sam_rho) if optim.sam else 0.0,
        sam_adaptive=bool(optim.sam_adaptive),
        ema_decay=float(optim.ema_decay),
        fsdp_min_size=int(config.mesh.fsdp_min_size),
    )


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """What the training loop (`grefel_jax.loop`) reads of the config.

    Attributes:
      seed: the run seed (initial weights, dropout, data order).
      batch_size: the global batch.
      keep_checkpoints: the last N checkpoints kept (plus the best).
      async_checkpoints: save in the background.
      init_from: pretrained sources merged into a fresh state, in order (`init_from_sources`).
    """

    seed: int
    batch_size: int
    keep_checkpoints: int
    async_checkpoints: bool
    init_from: tuple[str, ...]


def init_from_sources(value) -> tuple[str, ...]:
    """`config.init_from` as a tuple: '' = none; several sources are separated by commas
    (`runs/identity,runs/landmarks`); `package:NAME` names a packaged backbone."""
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        parts = [str(v) for v in value]
    else:
        parts = str(value).split(",")
    return tuple(p.strip() for p in parts if p.strip())


def loop_settings(config) -> LoopSettings:
    """LoopSettings of a run config (GReFEL training or a pretraining)."""
    if config.keep_checkpoints < 1:
        raise ValueError(f"config.keep_checkpoints={config.keep_checkpoints} must be >= 1.")
    if config.batch_size <= 0:
        raise ValueError(f"config.batch_size={config.batch_size} must be positive.")
    return LoopSettings(
        seed=int(config.seed),
        batch_size=int(config.batch_size),
        keep_checkpoints=int(config.keep_checkpoints),
        async_checkpoints=bool(config.async_checkpoints),
        init_from=init_from_sources(config.init_from),
    )
