r"""The training loop's rate against the pure jitted step's, in one process (issue 12).

  python benchmarks/train_loop.py --config configs/demo.py --data_dir data \
      --output benchmarks/results/train_loop.json [--blocks 4 --steps 60]

Both measure the same jitted step of `trainer.build_trainer` on the config's model, batch and
mesh:

* `pure`: one batch already on the devices, stepped `--steps` times (what
  benchmarks/train_step.py times);
* `loop`: what `grefel_jax.train` does per step: `next()` on the real Grain iterator
  (decode, augment, normalize in its read thread or workers), the host-to-device transfer
  (`trainer.global_batch`), the step.

Blocks of the two alternate (`--blocks` of each, one untimed step first in every block), so
that a machine whose speed drifts between minutes affects both alike. The last line is
`loop_over_pure=<ratio of steps/s>`; the issue's target is >= 0.95.
"""

from __future__ import annotations

import json
import pathlib
import statistics
import sys
import time

import jax
from absl import app, flags
from ml_collections import config_flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import common  # noqa: E402

from grefel_jax import sharding  # noqa: E402
from grefel_jax.data import pipeline, source  # noqa: E402
from grefel_jax.trainer import build_trainer  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Training config.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Overrides config.data.data_dir.")
_BLOCKS = flags.DEFINE_integer("blocks", 4, "Timed blocks of each kind.")
_STEPS = flags.DEFINE_integer("steps", 60, "Steps per block.")
_OUTPUT = flags.DEFINE_string("output", "benchmarks/results/train_loop.json", "JSON output.")


def _block(step_fn, state, steps: int):
    """One untimed step, then `steps` timed ones; returns (state, seconds per step)."""
    state, metrics = step_fn(state)
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step_fn(state)
    jax.block_until_ready(metrics)
    return state, (time.perf_counter() - start) / steps


def main(argv):
    del argv
    config = _CONFIG.value
    if _DATA_DIR.value:
        config.data.data_dir = _DATA_DIR.value
    data = source.open_training_set(config.data)
    mesh = sharding.make_mesh(config.mesh)
    trainer = build_trainer(config, data, mesh)
    state = trainer.init_state(jax.random.key(config.seed))
    train_iter = pipeline.make_train_iterator(
        config.data,
        image_size=trainer.image_size,
        global_batch_size=config.batch_size,
        seed=config.seed,
        training_set=data,
    )
    fixed = trainer.global_batch(next(train_iter))

    def pure(state):
        return trainer.step(state, fixed)

    def loop(state):
        return trainer.step(state, trainer.global_batch(next(train_iter)))

    pressure_before = common.cpu_pressure()
    times = {"pure": [], "loop": []}
    for _ in range(_BLOCKS.value):
        for name, fn in (("pure", pure), ("loop", loop)):
            state, seconds = _block(fn, state, _STEPS.value)
            times[name].append(seconds)
    rates = {k: 1.0 / statistics.median(v) for k, v in times.items()}
    report = {
        "benchmark": "train_loop",
        "cpu": common.cpu_name(),
        "devices": jax.device_count(),
        "config": {
            "batch_size": config.batch_size,
            "image_size": trainer.image_size,
            "num_workers": int(config.data.num_workers),
            "prefetch": int(config.data.prefetch),
            "dataset": data.info.full_name,
        },
        "seconds_per_step": {k: common.summary(v) for k, v in times.items()},
        "steps_per_s": rates,
        "loop_over_pure": rates["loop"] / rates["pure"],
        "cpu_pressure": {"before": pressure_before, "after": common.cpu_pressure()},
    }
    output = pathlib.Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    for name in ("pure", "loop"):
        ms = [round(t * 1000, 1) for t in times[name]]
        print(f"{name}: {rates[name]:.2f} steps/s (ms per step per block: {ms})")
    print(f"loop_over_pure={report['loop_over_pure']:.3f}")


if __name__ == "__main__":
    app.run(main)
