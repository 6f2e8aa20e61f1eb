"""What a study runs: heads, presets, and one `RunSpec` per training run.

A run is fully named by its spec (`RunSpec.name`, also its sub-workdir), so a re-run study
finds the runs it already finished, and presets that share a run (the clean runs of
`symmetric` and `pairs`, the `smoke` runs) train it once when they share a workdir.

The 2-core presets train in one regime (`REGIME`): from the config's pretrained backbones, on
a fixed subset of the training split (its first `train_records` records) for `steps` steps, so
that each record is seen about 24 times (epochs), enough for the plain head to memorise wrong
labels, and each preset fits 90 minutes on 2 cores. `full` is the whole grid at the config's
own length on the whole split, for an accelerator. The choice and its cost arithmetic:
docs/robustness.md section 2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

# Head name -> config overrides. `grefel` is the GReFEL preset as shipped (its K, the paper's
# trust ramp); `grefel_trust_full` the same with the trust τ = 1 from step 0; `grefel_k<K>` the
# preset with K anchors per class. The ablations switch one part of the GReFEL head off at a
# time (docs/robustness.md).
HEADS: dict[str, dict[str, Any]] = {
    "poster": {"model.head_preset": "poster"},
    "grefel": {"model.head_preset": "grefel"},
    "grefel_trust_full": {"model.head_preset": "grefel", "loss.trust": "full"},
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

# The 2-core regime of the real-regime presets (docs/robustness.md section 2): 1,000 steps
# (what the pretrained demo model needs to approach its clean plateau: 0.84-0.87 test accuracy
# at steps 900-1,200 of the demo recipe) over a fixed subset of the first 1,400 training
# records, i.e. 1,000 x 32 / 1,400 = 22.9 epochs, the epochs of the run in which issue 27 saw
# the plain head memorise (6,000 steps x 32 / 8,400 records); test accuracy every 125 steps.
STEPS_2CORE = 1000
RECORDS_2CORE = 1400
EVAL_EVERY_2CORE = 125
REGIME = dict(steps=STEPS_2CORE, train_records=RECORDS_2CORE, eval_every=EVAL_EVERY_2CORE)
NOISE_LEVELS = (0.0, 0.1, 0.2, 0.3, 0.4)
NOISY_LEVELS = NOISE_LEVELS[1:]
NOISE_HEADS = ("poster", "grefel", "grefel_trust_full", "arbex_code")
ANCHOR_HEADS = ("grefel_k1", "grefel_k5")  # K = 10 is `grefel` (the preset's K)
SEEDS = (0, 1, 2)
# The issue-11 grid (800 steps on the whole split, evaluated at the end only): kept so that
# earlier commands still run; it is too short for the plain head to memorise.
_NOISE_SHORT = dict(
    rates=(0.0, 0.1, 0.2, 0.3),
    kinds=("symmetric",),
    heads=("poster", "grefel_k1", "grefel_k5", "grefel_k10", "arbex_code"),
    seeds=SEEDS,
    steps=800,
)
_IMBALANCE_SHORT = dict(
    ratios=(1.0, 10.0, 50.0),
    balancing=("none", "sampler", "class_weights"),
    heads=("poster", "grefel_k10"),
    seeds=SEEDS,
    steps=800,
)
# The imbalance presets train on the long-tailed subsets of the whole split (no fixed subset:
# the tail classes of a 1,400-record subset would keep 4 records at ratio 50).
_IMBALANCE_REAL = dict(
    ratios=(1.0, 10.0, 50.0),
    balancing=("none", "sampler", "class_weights"),
    seeds=SEEDS,
    steps=STEPS_2CORE,
    eval_every=EVAL_EVERY_2CORE,
)


def _noise(rates, kinds, heads, seeds=SEEDS):
    return dict(rates=rates, kinds=kinds, heads=heads, seeds=seeds, **REGIME)


# Preset name -> grid axes (and run settings). The grid is split into presets of at
# most 30 runs (about 60 minutes on 2 quiet cores, 95 at the load measured; docs/robustness.md).
# Presets of one workdir share runs: the clean runs are the same for both kinds, `smoke`'s runs
# are `symmetric`'s.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "noise": {
        "smoke": _noise((0.0, 0.3), ("symmetric",), ("poster", "grefel"), seeds=(0,)),
        "symmetric": _noise(NOISE_LEVELS, ("symmetric",), ("poster", "grefel")),
        "symmetric2": _noise(NOISE_LEVELS, ("symmetric",), ("grefel_trust_full", "arbex_code")),
        "pairs": _noise(NOISE_LEVELS, ("pairs",), ("poster", "grefel")),
        "pairs2": _noise(NOISE_LEVELS, ("pairs",), ("grefel_trust_full", "arbex_code")),
        "anchors": _noise(NOISE_LEVELS, ("symmetric",), ANCHOR_HEADS),
        "anchors_pairs": _noise(NOISE_LEVELS, ("pairs",), ANCHOR_HEADS),
        # The whole grid at the config's own length on the whole split (an accelerator).
        "full": dict(
            rates=NOISE_LEVELS,
            kinds=("symmetric", "pairs"),
            heads=NOISE_HEADS + ANCHOR_HEADS,
            seeds=SEEDS,
            steps=None,
            train_records=None,
            eval_every=None,
        ),
        "default": _NOISE_SHORT,
    },
    "imbalance": {
        "smoke": dict(
            ratios=(1.0, 50.0),
            balancing=("none", "sampler"),
            heads=("grefel",),
            seeds=(0,),
            steps=STEPS_2CORE,
            eval_every=EVAL_EVERY_2CORE,
        ),
        "imbalance": dict(heads=("poster",), **_IMBALANCE_REAL),
        "imbalance_grefel": dict(heads=("grefel",), **_IMBALANCE_REAL),
        "imbalance_trust": dict(heads=("grefel_trust_full",), **_IMBALANCE_REAL),
        "full": dict(heads=NOISE_HEADS, **{**_IMBALANCE_REAL, "steps": None, "eval_every": None}),
        "default": _IMBALANCE_SHORT,
    },
}
NOISE_KINDS = ("symmetric", "pairs")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One training run of a study.

    Attributes:
      head: a key of HEADS.
      seed: run seed (initialisation, data order) and label-noise seed.
      steps: training steps, or None for the config's own length.
      noise: label-noise rate r (0 = clean), unless `label_file` is set.
      kind: the label noise's kind, 'symmetric' or 'pairs' (data.label_noise.kind); a clean
        run (noise 0) is the same run for both and its name leaves the kind out.
      label_file: a file of given training labels (config.data.label_noise.file).
      ratio: class-imbalance ratio (1 = the whole training split).
      balancing: a key of BALANCING, or '' to keep the config's own setting.
      init_from: the run's `config.init_from` (comma-separated sources, `package:NAME` or
        workdirs; '' = random weights), or None to keep the config's own (and leave it out
        of the name).
      train_records: train on the first N records of the training split (None: all of it).
      eval_every: test-split evaluation period in steps (None: the config's
        eval_every_steps).
    """

    head: str
    seed: int
    steps: int | None
    noise: float = 0.0
    kind: str = "symmetric"
    label_file: str = ""
    ratio: float = 1.0
    balancing: str = ""
    init_from: str | None = None
    train_records: int | None = None
    eval_every: int | None = None

    def __post_init__(self):
        if self.init_from is not None:  # one spelling per initialisation (names, rows)
            object.__setattr__(self, "init_from", normalise_init(self.init_from))

    @property
    def name(self) -> str:
        """The run's sub-workdir name, unique within a study."""
        parts = [self.head]
        if self.label_file:
            from pathlib import Path

            parts.append(f"labels-{Path(self.label_file).stem}")
        elif self.noise > 0 and self.kind != "symmetric":
            parts.append(f"{self.kind}{round(self.noise * 100):02d}")
        else:  # symmetric keeps the name of the studies before kinds existed
            parts.append(f"noise{round(self.noise * 100):02d}")
        if self.ratio != 1.0 or self.balancing:
            parts.append(f"ratio{self.ratio:g}")
        if self.balancing:
            parts.append(self.balancing)
        parts.append(f"seed{self.seed}")
        if self.steps is not None:  # presets differ in length: never mix their runs
            parts.append(f"steps{self.steps}")
        if self.train_records is not None:
            parts.append(f"train{self.train_records}")
        if self.init_from is not None:
            parts.append(init_tag(self.init_from))
        return "_".join(parts)

    def overrides(self) -> dict[str, Any]:
        """Dotted config key -> value for this run (on top of the study's config)."""
        values: dict[str, Any] = dict(HEADS[self.head])
        values["seed"] = self.seed
        values["data.label_noise.rate"] = float(self.noise)
        values["data.label_noise.kind"] = self.kind
        values["data.label_noise.seed"] = self.seed
        values["data.label_noise.file"] = self.label_file
        values["data.imbalance.ratio"] = float(self.ratio)
        if self.balancing:
            values.update(BALANCING[self.balancing])
        if self.steps is not None:
            values["num_train_steps"] = int(self.steps)
        if self.init_from is not None:
            values["init_from"] = self.init_from
        if self.eval_every is not None:
            values["eval_every_steps"] = int(self.eval_every)
        return values


def normalise_init(value) -> str:
    """`config.init_from` (a string or a sequence of sources) as one comma-separated string."""
    from grefel_jax import settings

    return ",".join(settings.init_from_sources(value))


def init_tag(init_from: str) -> str:
    """A short, stable name part for a run's initialisation: `random` for '', else `init`
    and 6 hex digits of a hash of the normalised sources (the row keeps the sources)."""
    import hashlib

    sources = normalise_init(init_from)
    if not sources:
        return "random"
    return "init" + hashlib.sha256(sources.encode()).hexdigest()[:6]


def noise_grid(
    *,
    rates,
    heads,
    seeds,
    steps,
    kinds=("symmetric",),
    label_files=(),
    init_from=None,
    train_records=None,
    eval_every=None,
) -> list[RunSpec]:
    """Runs of a label-noise study: (kinds x rates, and label files) x heads x seeds.

    A clean rate (0) gives one run per head and seed whatever the kinds (it is the same run).
    """
    levels = []
    for rate in rates:
        for kind in kinds if float(rate) > 0 else kinds[:1]:
            levels.append(dict(noise=float(rate), kind=kind))
    levels += [dict(label_file=f) for f in label_files]
    common = dict(
        steps=steps, init_from=init_from, train_records=train_records, eval_every=eval_every
    )
    return [
        RunSpec(head=h, seed=int(s), **common, **level)
        for level in levels
        for h in heads
        for s in seeds
    ]


def imbalance_grid(
    *, ratios, balancing, heads, seeds, steps, init_from=None, eval_every=None
) -> list[RunSpec]:
    """Runs of a class-imbalance study: ratios x remedies x heads x seeds (whole split)."""
    return [
        RunSpec(
            head=h,
            seed=int(s),
            steps=steps,
            ratio=float(r),
            balancing=b,
            init_from=init_from,
            eval_every=eval_every,
        )
        for r in ratios
        for b in balancing
        for h in heads
        for s in seeds
    ]


def check_names(heads=(), balancing=(), kinds=()) -> None:
    """Raises ValueError naming the flag of an unknown head, balancing remedy or noise kind."""
    for kind in kinds:
        if kind not in NOISE_KINDS:
            raise ValueError(
                f"--kinds: unknown kind {kind!r}; expected some of {list(NOISE_KINDS)}."
            )
    for head in heads:
        if head not in HEADS:
            raise ValueError(f"--heads: unknown head {head!r}; expected some of {list(HEADS)}.")
    for remedy in balancing:
        if remedy not in BALANCING:
            raise ValueError(
                f"--balancing: unknown remedy {remedy!r}; expected some of {list(BALANCING)}."
            )
