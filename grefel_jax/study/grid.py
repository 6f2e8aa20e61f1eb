"""What a study runs: heads, presets, and one `RunSpec` per training run.

A run is fully named by its spec (`RunSpec.name`, also its sub-workdir), so a re-run study
finds the runs it already finished. Presets are sized for 2 CPU cores at the demo's size
(`smoke`, `default`) or for an accelerator at the config's own length (`full`); see
docs/robustness.md for what each measures and what it cost.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Head name -> config overrides. `grefel_k<K>` is the GReFEL preset with K anchors per class.
# The ablations switch one part of the GReFEL head off at a time (docs/robustness.md).
HEADS: dict[str, dict[str, Any]] = {
    "poster": {"model.head_preset": "poster"},
    "grefel_k1": {"model.head_preset": "grefel", "model.head.num_anchors": 1},
    "grefel_k5": {"model.head_preset": "grefel", "model.head.num_anchors": 5},
    "grefel_k10": {"model.head_preset": "grefel", "model.head.num_anchors": 10},
    "arbex_code": {"model.head_preset": "arbex_code"},
    "grefel_k10_no_anchor_loss": {
        "model.head_preset": "grefel",
        "model.head.num_anchors": 10,
        "loss.lambda_anchor": 0.0,
    },
    "grefel_k10_no_dropout": {
        "model.head_preset": "grefel",
        "model.head.num_anchors": 10,
        "model.head.mlp_dropout": 0.0,
    },
    "grefel_k10_no_center_loss": {
        "model.head_preset": "grefel",
        "model.head.num_anchors": 10,
        "loss.lambda_center": 0.0,
    },
    # Which correction q_corr leans on (both = the method), and the trust schedule of q_final.
    "grefel_k10_anchors_only": {
        "model.head_preset": "grefel",
        "model.head.num_anchors": 10,
        "model.head.correction": "anchors",
    },
    "grefel_k10_attention_only": {
        "model.head_preset": "grefel",
        "model.head.num_anchors": 10,
        "model.head.correction": "attention",
    },
    "grefel_k10_trust_none": {
        "model.head_preset": "grefel",
        "model.head.num_anchors": 10,
        "loss.trust": "none",
    },
    "grefel_k10_trust_full": {
        "model.head_preset": "grefel",
        "model.head.num_anchors": 10,
        "loss.trust": "full",
    },
}

# Class-imbalance remedies -> config overrides (the GReFEL presets weight the loss by default,
# so 'none' switches that off).
BALANCING: dict[str, dict[str, Any]] = {
    "none": {"data.sampler": "none", "loss.class_weighting": False},
    "sampler": {"data.sampler": "inverse_frequency", "loss.class_weighting": False},
    "class_weights": {"data.sampler": "none", "loss.class_weighting": True},
}

# steps=None: the config's own run length (num_train_steps / num_epochs).
_NOISE_DEFAULT = dict(
    rates=(0.0, 0.1, 0.2, 0.3),
    heads=("poster", "grefel_k1", "grefel_k5", "grefel_k10", "arbex_code"),
    seeds=(0, 1, 2),
    steps=800,
)
_IMBALANCE_DEFAULT = dict(
    ratios=(1.0, 10.0, 50.0),
    balancing=("none", "sampler", "class_weights"),
    heads=("poster", "grefel_k10"),
    seeds=(0, 1, 2),
    steps=800,
)
# `full` is the `default` grid at the config's own length (steps=None).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "noise": {
        "smoke": dict(rates=(0.0, 0.3), heads=("poster", "grefel_k10"), seeds=(0,), steps=600),
        "default": _NOISE_DEFAULT,
        "full": {**_NOISE_DEFAULT, "steps": None},
    },
    "imbalance": {
        "smoke": dict(
            ratios=(1.0, 50.0),
            balancing=("none", "sampler"),
            heads=("grefel_k10",),
            seeds=(0,),
            steps=600,
        ),
        "default": _IMBALANCE_DEFAULT,
        "full": {**_IMBALANCE_DEFAULT, "steps": None},
    },
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of a study.

    Attributes:
      head: a key of HEADS.
      seed: run seed (initialisation, data order) and label-noise seed.
      steps: training steps, or None for the config's own length.
      noise: symmetric label-noise rate r (0 = clean), unless `label_file` is set.
      label_file: a file of given training labels (config.data.label_noise.file).
      ratio: class-imbalance ratio (1 = the whole training split).
      balancing: a key of BALANCING, or '' to keep the config's own setting.
    """

    head: str
    seed: int
    steps: int | None
    noise: float = 0.0
    label_file: str = ""
    ratio: float = 1.0
    balancing: str = ""

    @property
    def name(self) -> str:
        """The run's sub-workdir name, unique within a study."""
        parts = [self.head]
        if self.label_file:
            from pathlib import Path

            parts.append(f"labels-{Path(self.label_file).stem}")
        else:
            parts.append(f"noise{round(self.noise * 100):02d}")
        if self.ratio != 1.0 or self.balancing:
            parts.append(f"ratio{self.ratio:g}")
        if self.balancing:
            parts.append(self.balancing)
        parts.append(f"seed{self.seed}")
        if self.steps is not None:  # presets differ in length: never mix their runs
            parts.append(f"steps{self.steps}")
        return "_".join(parts)

    def overrides(self) -> dict[str, Any]:
        """Dotted config key -> value for this run (on top of the study's config)."""
        values: dict[str, Any] = dict(HEADS[self.head])
        values["seed"] = self.seed
        values["data.label_noise.rate"] = float(self.noise)
        values["data.label_noise.kind"] = "symmetric"
        values["data.label_noise.seed"] = self.seed
        values["data.label_noise.file"] = self.label_file
        values["data.imbalance.ratio"] = float(self.ratio)
        if self.balancing:
            values.update(BALANCING[self.balancing])
        if self.steps is not None:
            values["num_train_steps"] = int(self.steps)
        return values


def noise_grid(*, rates, heads, seeds, steps, label_files=()) -> list[RunSpec]:
    """Runs of a label-noise study: rates (and label files) x heads x seeds."""
    levels = [dict(noise=float(r)) for r in rates] + [dict(label_file=f) for f in label_files]
    return [
        RunSpec(head=h, seed=int(s), steps=steps, **level)
        for level in levels
        for h in heads
        for s in seeds
    ]


def imbalance_grid(*, ratios, balancing, heads, seeds, steps) -> list[RunSpec]:
    """Runs of a class-imbalance study: ratios x remedies x heads x seeds."""
    return [
        RunSpec(head=h, seed=int(s), steps=steps, ratio=float(r), balancing=b)
        for r in ratios
        for b in balancing
        for h in heads
        for s in seeds
    ]


def check_names(heads=(), balancing=()) -> None:
    """Raises ValueError naming an unknown head or balancing remedy."""
    for head in heads:
        if head not in HEADS:
            raise ValueError(f"--heads: unknown head {head!r}; expected some of {list(HEADS)}.")
    for remedy in balancing:
        if remedy not in BALANCING:
            raise ValueError(
                f"--balancing: unknown remedy {remedy!r}; expected some of {list(BALANCING)}."
            )
