r"""grefel_jax against the PyTorch POSTER++ module on the same machine, in one process.

  python benchmarks/vs_torch.py --variant paper --batch_size 32 --reps 3 \
      --output benchmarks/results/vs_torch.json
  python benchmarks/vs_torch.py --smoke      # tiny model, batch 2, one rep: a few seconds

Both sides run the same sizes (`tests/torch_reference/poster.py`, the official state_dict
layout) on random NHWC/NCHW images. Timed in `--blocks` alternating blocks of `--reps`
consecutive calls per side (torch x reps, jax x reps, torch x reps, ...), each block after one
untimed call (the first JAX call also compiles):
  - inference: `model(x)` in eval mode / the jitted `apply(train=False)`;
  - one Adam train step, same head (`poster`) and loss (cross-entropy), same batch;
  - ours only: the GReFEL head with its losses, with Adam and with SAM (`build_trainer`).
Both sides use every core: `torch.set_num_threads(os.cpu_count())`; XLA:CPU's thread pool is
sized to the machine's cores by default. Medians and min-max are reported with
/proc/pressure/cpu before and after. The last line is `speedup_infer=<x> speedup_train=<x>`
(PyTorch seconds over ours: > 1 means grefel_jax is faster).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

import jax
import numpy as np
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from common import (  # noqa: E402
    NUM_CLASSES,
    cpu_name,
    cpu_pressure,
    jax_trainer,
    summary,
    trainer_variables,
)

FLAGS = flags.FLAGS
flags.DEFINE_string("variant", "paper", "Model variant (both sides use its sizes).")
flags.DEFINE_integer("batch_size", 32, "Batch size of every timed call.")
flags.DEFINE_integer("reps", 3, "Timed repetitions per measurement (after one warm-up).")
flags.DEFINE_bool("smoke", False, "Tiny model, batch 2, 1 rep, no SAM: checks the script.")
flags.DEFINE_bool("grefel", True, "Also time our GReFEL head (Adam and SAM train steps).")
flags.DEFINE_string("output", "benchmarks/results/vs_torch.json", "JSON output path.")
flags.DEFINE_integer("blocks", 2, "Alternating blocks per side (A A A B B B A A A ...).")
flags.DEFINE_enum("only", "", ["", "torch", "jax"], "Time one side only (used by --separate).")
flags.DEFINE_bool(
    "separate",
    False,
    "Time each side in its own process, alternating processes (torch, jax, torch, jax) for "
    "--blocks rounds: no framework's threads or allocator state affect the other's timings.",
)


def print_row(name: str, row: dict) -> None:
    print(
        f"{name}: torch {row['torch']['median_s']:.3f} s, jax {row['jax']['median_s']:.3f} s, "
        f"speedup {row['speedup']:.2f}x",
        flush=True,
    )


def run_separate() -> None:
    """Alternates one process per side, `--blocks` rounds, and merges their timings."""
    import subprocess
    import tempfile

    merged: dict[str, dict[str, list[float]]] = {}
    pressure_before = cpu_pressure()
    args = [f"--variant={FLAGS.variant}", f"--batch_size={FLAGS.batch_size}"]
    args += [f"--reps={FLAGS.reps}", "--blocks=1", "--nogrefel"] + (["--smoke"] * FLAGS.smoke)
    for _ in range(FLAGS.blocks):
        for side in ("torch", "jax"):
            with tempfile.TemporaryDirectory() as tmp:
                out = pathlib.Path(tmp) / "side.json"
                command = [sys.executable, __file__, f"--only={side}", f"--output={out}", *args]
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
                report = json.loads(out.read_text())
            for name, row in report["results"].items():
                merged.setdefault(name, {}).setdefault(side, []).extend(row[side]["times_s"])
    results = {}
    for name, sides in merged.items():
        results[name] = {side: summary(t) | {"times_s": t} for side, t in sides.items()}
        results[name]["speedup"] = (
            results[name]["torch"]["median_s"] / results[name]["jax"]["median_s"]
        )
        print_row(name, results[name])
    report |= {"mode": "separate processes", "results": results}
    report |= {"pressure_before": pressure_before, "pressure_after": cpu_pressure()}
    write_report(report, results)


def write_report(report: dict, results: dict) -> None:
    path = pathlib.Path(FLAGS.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(f"Wrote {path}")
    if "infer" in results and "speedup" in results["infer"]:
        print(
            f"speedup_infer={results['infer']['speedup']:.3f} "
            f"speedup_train={results['train_adam_ce']['speedup']:.3f}"
        )


def main(argv):
    del argv
    if FLAGS.separate:
        run_separate()
        return
    import torch
    import torch_reference as ref

    from grefel_jax.models import GReFEL, make_model_config

    variant = "tiny" if FLAGS.smoke else FLAGS.variant
    batch = 2 if FLAGS.smoke else FLAGS.batch_size
    reps = 1 if FLAGS.smoke else FLAGS.reps
    if batch < 1 or reps < 1:
        raise app.UsageError("--batch_size and --reps must be >= 1")
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    pressure_before = cpu_pressure()

    # Ours, `poster` head + CE: inference and the Adam train step.
    trainer, state, data = jax_trainer(variant, "poster", False, batch)
    model_config = make_model_config(variant, "poster", NUM_CLASSES)
    model = GReFEL(model_config)
    variables = trainer_variables(state)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False)["logits"])
    images = data["image"]
    size = model_config.backbone.image_size

    def jax_infer():
        jax.block_until_ready(apply(variables, images))

    holder = {"state": state}

    def jax_train():
        holder["state"], metrics = trainer.step(holder["state"], data)
        jax.block_until_ready(metrics)

    # Theirs: the same sizes, eval-mode inference and an Adam step on CE.
    torch.manual_seed(0)
    tmodel = ref.PosterV2(NUM_CLASSES, **ref.sizes_from_backbone_config(model_config.backbone))
    topt = torch.optim.Adam(tmodel.parameters(), lr=3.5e-5)
    rng = np.random.default_rng(0)
    timages = torch.from_numpy(rng.normal(size=(batch, 3, size, size)).astype(np.float32))
    tlabels = torch.from_numpy(rng.integers(0, NUM_CLASSES, size=batch))

    def torch_infer():
        tmodel.eval()
        with torch.no_grad():
            tmodel(timages)

    def torch_train():
        tmodel.train()
        topt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(tmodel(timages), tlabels)
        loss.backward()
        topt.step()

    results = {}
    for name, pair in {
        "infer": (torch_infer, jax_infer),
        "train_adam_ce": (torch_train, jax_train),
    }.items():
        times = {"torch": [], "jax": []}
        start = time.perf_counter()
        if FLAGS.only != "torch":
            pair[1]()  # compilation excluded
        compile_s = time.perf_counter() - start
        # Blocks of consecutive calls, as in a training loop, alternating between the sides.
        # Each block starts with one untimed call: the first JAX call after PyTorch's took 13.4 s
        # where the next ones took 8.1-8.5 s (paper, batch 32; docs/performance.md), i.e. a call
        # right after the other framework pays for re-warming the process's allocator.
        for _ in range(FLAGS.blocks):
            for side, fn in zip(("torch", "jax"), pair):
                if FLAGS.only and side != FLAGS.only:
                    continue
                fn()
                for _ in range(reps):
                    start = time.perf_counter()
                    fn()
                    times[side].append(time.perf_counter() - start)
        results[name] = {side: summary(t) | {"times_s": t} for side, t in times.items() if t}
        results[name]["jax_compile_and_first_s"] = compile_s
        if FLAGS.only:
            continue
        results[name]["speedup"] = (
            results[name]["torch"]["median_s"] / results[name]["jax"]["median_s"]
        )
        print_row(name, results[name])

    if (
        FLAGS.grefel and FLAGS.only != "torch"
    ):  # ours only: the GReFEL head and losses, Adam and SAM.
        for sam in (False,) if FLAGS.smoke else (False, True):
            tr, st, d = jax_trainer(variant, "grefel", sam, batch)
            st, m = tr.step(st, d)
            jax.block_until_ready(m)
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                st, m = tr.step(st, d)
                jax.block_until_ready(m)
                times.append(time.perf_counter() - start)
            key = "train_grefel_sam" if sam else "train_grefel_adam"
            results[key] = {"jax": summary(times)}
            print(f"{key}: jax {results[key]['jax']['median_s']:.3f} s", flush=True)

    report = {
        "benchmark": "vs_torch",
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "cpu": cpu_name(),
        "cores": cores,
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
        "torch": torch.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "variant": variant,
        "batch_size": batch,
        "image_size": size,
        "reps": reps,
        "pressure_before": pressure_before,
        "pressure_after": cpu_pressure(),
        "results": results,
        "mode": f"one process, blocks of {reps} calls per side",
    }
    write_report(report, results)


if __name__ == "__main__":
    app.run(main)
