"""Training loop: read top to bottom.

1. Mesh, data iterators, model and optimizer from the config.
2. Initial state, sharded by rule (replicated or FSDP), optionally `init_from` pretrained
   weights, or restored from the newest checkpoint of the workdir (automatic resume).
3. The loop: host-local batch -> global array -> jitted `train_step` (buffers donated);
   a console line every `log_every_steps`, evaluation every `eval_every_steps`, a checkpoint
   every `checkpoint_every_steps` (async; kept: the last N and the best by eval accuracy).
4. SIGTERM (or an orbax preemption notice) saves a checkpoint and returns cleanly.

The step functions (`train_step`, `eval_step`) are pure: state and batch in, state and
metrics out; everything they need besides arrays is bound with functools.partial.
"""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from grefel_jax import checkpoint as ckpt_lib
from grefel_jax import logging_utils, losses, optim, reliability, sharding
from grefel_jax.models import GReFEL, ModelConfig, make_model_config
from grefel_jax.train_state import TrainState

PyTree = Any


# --------------------------------------------------------------------------------------------
# Config -> objects.
# --------------------------------------------------------------------------------------------


def model_config_from(config: ml_collections.ConfigDict, num_classes: int) -> ModelConfig:
    """ModelConfig from `config.model` (variant, head preset, per-field overrides)."""
    overrides = {
        section: {k: v for k, v in config.model[section].items() if v is not None}
        for section in ("backbone", "head")
    }
    head_overrides = overrides["head"]
    num_classes = int(head_overrides.pop("num_classes", num_classes))
    return make_model_config(
        variant=config.model.variant,
        head=config.model.head_preset,
        num_classes=num_classes,
        backbone_overrides=overrides["backbone"],
        head_overrides=head_overrides,
    )


def compute_dtype(config: ml_collections.ConfigDict):
    """The model's compute dtype; parameters and losses stay float32."""
    names = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
    if config.compute_dtype not in names:
        raise ValueError(
            f"config.compute_dtype={config.compute_dtype!r}: expected {sorted(names)}."
        )
    return names[config.compute_dtype]


def make_model(config: ml_collections.ConfigDict, model_config: ModelConfig) -> GReFEL:
    """The Linen module with the configured compute dtype."""
    return GReFEL(config=model_config, dtype=compute_dtype(config))


def loss_kwargs(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Keyword arguments of `losses.total_loss` from `config.loss`."""
    return dict(
        label_smoothing=float(config.loss.label_smoothing),
        lambda_ce=float(config.loss.lambda_ce),
        lambda_anchor=float(config.loss.lambda_anchor),
        lambda_center=float(config.loss.lambda_center),
        anchor_loss_form=config.loss.anchor_loss_form,
        anchor_margin=float(config.loss.anchor_margin),
    )


def training_length(config: ml_collections.ConfigDict, train_size: int) -> tuple[int, int]:
    """(steps_per_epoch, total_steps): `num_train_steps` if > 0, else `num_epochs` epochs."""
    steps_per_epoch = max(1, train_size // config.batch_size)
    if config.num_train_steps > 0:
        return steps_per_epoch, int(config.num_train_steps)
    if config.num_epochs <= 0:
        raise ValueError("Set config.num_train_steps or config.num_epochs to a positive value.")
    return steps_per_epoch, int(round(config.num_epochs * steps_per_epoch))


def every(value: int, steps_per_epoch: int) -> int:
    """A period in steps: `value` if > 0, else one epoch."""
    return int(value) if value > 0 else steps_per_epoch


# --------------------------------------------------------------------------------------------
# Initial state.
# --------------------------------------------------------------------------------------------


def init_state(
    rng: jax.Array,
    *,
    model: GReFEL,
    tx: optax.GradientTransformation,
    use_ema: bool,
) -> TrainState:
    """Fresh TrainState (meant to run under jit with sharded outputs)."""
    params_rng, dropout_rng, state_rng = jax.random.split(rng, 3)
    size = model.config.backbone.image_size
    images = jnp.zeros((1, size, size, 3), jnp.float32)
    variables = model.init({"params": params_rng, "dropout": dropout_rng}, images, train=False)
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(params),
        ema_params=params if use_ema else None,
        rng=jax.random.key_data(state_rng),
    )


# --------------------------------------------------------------------------------------------
# Step functions (pure).
# --------------------------------------------------------------------------------------------


def train_step(
    state: TrainState,
    batch: Mapping[str, jax.Array],
    *,
    model: GReFEL,
    tx: optax.GradientTransformation,
    trainable: PyTree,
    total_steps: int,
    class_weights: jax.Array | None,
    loss_config: Mapping[str, Any],
    sam_rho: float,
    sam_adaptive: bool,
    ema_decay: float,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update.

    Args:
      state: the TrainState.
      batch: `image (B, S, S, 3) float32`, `label (B,) int32`.
      model, tx: the Linen module and the optax optimizer.
      trainable: bool tree (False for frozen parameters: no gradient, no perturbation).
      total_steps: T of the trust ramp tau = step / T.
      class_weights: (C,) float32 or None.
      loss_config: keyword arguments of `losses.total_loss`.
      sam_rho: SAM radius; 0 turns SAM off (one forward/backward).
      sam_adaptive: ASAM.
      ema_decay: EMA decay; ignored when `state.ema_params` is None.

    Returns:
      (new state, metrics): `loss`, `loss_cls`, `loss_anchor`, `loss_center`, `tau`,
      `accuracy` (primary prediction vs the training label), `grad_norm`.
    """
    dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    tau = reliability.trust_ramp(state.step, total_steps)

    def loss_fn(params):
        outputs, updated = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            batch["image"],
            train=True,
            rngs={"dropout": dropout_rng},
            mutable=["batch_stats"],
        )
        loss, metrics = losses.total_loss(
            outputs, batch["label"], tau=tau, class_weights=class_weights, **loss_config
        )
        metrics["accuracy"] = jnp.mean(
            (jnp.argmax(outputs["probs"], axis=-1) == batch["label"]).astype(jnp.float32)
        )
        return loss, (metrics, updated.get("batch_stats", {}))

    def grad_fn(params):
        (_, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, aux

    if sam_rho > 0:
        grads, (metrics, batch_stats), _ = optim.sam_gradients(
            grad_fn, state.params, rho=sam_rho, adaptive=sam_adaptive, mask=trainable
        )
    else:
        grads, (metrics, batch_stats) = grad_fn(state.params)
        grads = optim.mask_frozen(grads, trainable)
    metrics["grad_norm"] = optim.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
        ema_params = optim.ema_update(ema_params, params, ema_decay, state.step)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        ema_params=ema_params,
    )
    return new_state, metrics


# --------------------------------------------------------------------------------------------
# Preemption.
# --------------------------------------------------------------------------------------------


class StopSignal:
    """Turns SIGTERM into a flag that the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # Not the main thread: no handler, no flag.
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint and stopping.")
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False


# --------------------------------------------------------------------------------------------
# The loop.
# --------------------------------------------------------------------------------------------


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    evaluate_during_training: bool = True,
    step_callback: Callable[[int, TrainState, dict], None] | None = None,
) -> TrainState:
    """Trains (resuming from `workdir` if it holds a checkpoint), evaluating on the way.

    Args:
      config: the full config (configs/*.py).
      workdir: checkpoints, logs and eval reports go here.
      evaluate_during_training: evaluate every `eval_every_steps` and at the end
        (mode train_and_eval) or not (mode train).
      step_callback: called after every step with (step, state, host-local batch); for
        tests and custom monitoring.

    Returns:
      The final TrainState.
    """
    from grefel_jax import evaluate as eval_lib
    from grefel_jax.data import pipeline

    # The dataset check comes first: an unprepared dataset fails before anything is written.
    info = pipeline.dataset_info(config.data)
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    logging_utils.write_run_info(workdir, config)
    mesh = sharding.make_mesh(config.mesh)
    sharding.check_batch_size(config.batch_size, mesh)

    # Data.
    train_size = int(info.split_sizes[config.data.train_split])
    steps_per_epoch, total_steps = training_length(config, train_size)
    train_iter = pipeline.make_train_iterator(
        config.data,
        image_size=_image_size(config, info.num_classes),
        global_batch_size=config.batch_size,
        seed=config.seed,
    )

    # Model, optimizer, shardings.
    model_config = model_config_from(config, info.num_classes)
    model = make_model(config, model_config)
    ckpt_lib.write_model_config(workdir, model_config)
    abstract_params = jax.eval_shape(
        lambda: init_state(jax.random.key(0), model=model, tx=optax.identity(), use_ema=False)
    ).params
    labels = optim.param_labels(
        abstract_params, freeze_image_backbone=model_config.backbone.freeze_image_backbone
    )
    trainable = optim.trainable_mask(labels)
    tx, schedules = optim.make_optimizer(
        config.optim, labels, steps_per_epoch=steps_per_epoch, total_steps=total_steps
    )
    use_ema = config.optim.ema_decay > 0
    init_fn = functools.partial(init_state, model=model, tx=tx, use_ema=use_ema)
    rng = jax.random.key(config.seed)
    abstract_state = jax.eval_shape(init_fn, rng)
    state_shardings = sharding.param_shardings(
        abstract_state, mesh, fsdp_min_size=config.mesh.fsdp_min_size
    )
    _log_parameter_counts(abstract_state.params, labels)

    # Initial state: resume > init_from > fresh.
    checkpointer = ckpt_lib.TrainCheckpointer(
        workdir,
        keep=config.keep_checkpoints,
        best_metric=config.best_metric if evaluate_during_training else None,
        async_save=config.async_checkpoints,
    )
    if checkpointer.latest_step() is not None:
        state = _restore(checkpointer, abstract_state, state_shardings, train_iter)
        logging.info("Resumed from %s at step %d.", checkpointer.directory, int(state.step))
    else:
        state = jax.jit(init_fn, out_shardings=state_shardings)(rng)
        if config.init_from:
            state = _load_pretrained(state, config.init_from, state_shardings)

    class_weights = None
    if config.loss.class_weighting:
        class_weights = jnp.asarray(pipeline.class_weights(config.data), jnp.float32)
    step_fn = functools.partial(
        train_step,
        model=model,
        tx=tx,
        trainable=trainable,
        total_steps=total_steps,
        class_weights=class_weights,
        loss_config=loss_kwargs(config),
        sam_rho=float(config.optim.sam_rho) if config.optim.sam else 0.0,
        sam_adaptive=bool(config.optim.sam_adaptive),
        ema_decay=float(config.optim.ema_decay),
    )
    replicated = sharding.replicated(mesh)
    batch_shardings = {k: sharding.batch_sharding(mesh) for k in ("image", "label")}
    jit_train_step = jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, replicated),
        donate_argnums=(0,),
    )
    evaluator = None
    if evaluate_during_training:
        evaluator = eval_lib.Evaluator(
            model,
            config.data,
            split=config.data.eval_split,
            mesh=mesh,
            global_batch_size=config.eval_batch_size,
            image_size=model_config.backbone.image_size,
            class_names=info.class_names,
        )

    writer = logging_utils.MetricWriter(workdir)
    start_step = int(state.step)
    progress = logging_utils.ProgressLogger(total_steps, config.batch_size, start_step)
    log_every = max(1, int(config.log_every_steps))
    eval_every = every(config.eval_every_steps, steps_per_epoch)
    ckpt_every = every(config.checkpoint_every_steps, steps_per_epoch)
    logging.info(
        "Training %d steps (%d per epoch, global batch %d) on mesh %s from step %d.",
        total_steps,
        steps_per_epoch,
        config.batch_size,
        dict(mesh.shape),
        start_step,
    )

    pending_metrics: list[dict[str, jax.Array]] = []
    last_eval: dict[str, float] | None = None
    step = start_step
    with StopSignal() as stop:
        while step < total_steps:
            host_batch = next(train_iter)
            batch = sharding.host_local_to_global(
                {"image": host_batch["image"], "label": host_batch["label"]}, mesh
            )
            state, metrics = jit_train_step(state, batch)
            step += 1
            pending_metrics.append(metrics)
            if step_callback is not None:
                step_callback(step, state, host_batch)
            if step == start_step + 1:
                progress.reset_timer(step)  # Leave compilation out of the rates.

            if step % log_every == 0 or step == total_steps:
                averaged = _average(pending_metrics)
                pending_metrics = []
                rates = progress.rates(step)
                for group, schedule in schedules.items():
                    averaged[f"lr_{group}"] = float(schedule(step - 1))
                progress.line(step, averaged, rates)
                writer.write_scalars(step, {**averaged, **rates}, split="train")

            last_eval = None
            if evaluator is not None and (step % eval_every == 0 or step == total_steps):
                summary = evaluator.run(state.eval_variables())
                last_eval = ckpt_lib_metrics(summary)
                writer.write_scalars(step, last_eval, split=config.data.eval_split)
                eval_lib.log_summary(summary, config.data.eval_split, step)
                progress.reset_timer(step)

            preempted = _any_host(stop.requested) or checkpointer.reached_preemption(step)
            if step % ckpt_every == 0 or step == total_steps or preempted or last_eval:
                checkpointer.save(
                    step,
                    state.model_tree(),
                    state.train_tree(),
                    model_config,
                    data_iterator=train_iter,
                    metrics=last_eval,
                    force=True,
                )
            if preempted:
                logging.warning("Stopped at step %d; the checkpoint resumes from here.", step)
                break

    checkpointer.close()
    if evaluator is not None and step == total_steps:
        # Final reports with the best checkpoint's weights (eval_<split>.json + PNGs).
        for split in dict.fromkeys([config.data.eval_split, *config.final_eval_splits]):
            eval_lib.evaluate_workdir(
                config, str(workdir), split=split, mesh=mesh, writer=writer, step=step
            )
    writer.close()
    return state


def ckpt_lib_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """Scalar eval metrics (what keep-best and TensorBoard need)."""
    from grefel_jax import metrics as metrics_lib

    return metrics_lib.scalar_metrics(summary)


def _any_host(flag: bool) -> bool:
    """True if any process set `flag`; every host must stop and save at the same step."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def _image_size(config: ml_collections.ConfigDict, num_classes: int) -> int:
    return model_config_from(config, num_classes).backbone.image_size


def _average(metrics: list[dict[str, jax.Array]]) -> dict[str, float]:
    stacked = jax.device_get(metrics)
    return {k: float(np.mean([m[k] for m in stacked])) for k in stacked[0]}


def _restore(checkpointer, abstract_state, state_shardings, train_iter) -> TrainState:
    def with_sharding(x, s):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)

    target = jax.tree.map(with_sharding, abstract_state, state_shardings)
    model, train = checkpointer.restore(target.model_tree(), target.train_tree(), train_iter)
    return TrainState.from_trees(model, train)


def _load_pretrained(state: TrainState, path: str, state_shardings: TrainState) -> TrainState:
    current = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    merged, modules = ckpt_lib.merge_pretrained(current, path)
    logging.info("init_from %s: loaded %s.", path, ", ".join(modules) or "nothing")
    params = jax.device_put(merged["params"], state_shardings.params)
    batch_stats = jax.device_put(merged["batch_stats"], state_shardings.batch_stats)
    ema = None if state.ema_params is None else jax.device_put(params, state_shardings.ema_params)
    return state.replace(params=params, batch_stats=batch_stats, ema_params=ema)


def _log_parameter_counts(params: PyTree, labels: PyTree) -> None:
    counts: dict[str, int] = {}
    for p, lab in zip(jax.tree.leaves(params), jax.tree.leaves(labels)):
        counts[lab] = counts.get(lab, 0) + int(np.prod(p.shape))
    logging.info("Parameters by group: %s (total %d).", counts, sum(counts.values()))
