r"""Time to accuracy on the demo data: random vs pretrained backbones, poster vs grefel head.

  python benchmarks/time_to_accuracy.py --data_dir data --seeds 0,1,2 \
      --output docs/results/time_to_accuracy.json

Each run is the demo's training command (`configs/demo.py`: its steps, batch, input size and
optimizer, in a fresh process) with `--config.seed=S`, a head preset (`poster` or `grefel`)
and one initialisation:

* `random`: no `init_from`: IR-50 trained from random weights, the landmark network random
  and frozen;
* `landmarks`: the landmark network pretrained (`--landmarks`), IR-50 from random weights;
* `identity`: IR-50 identity-pretrained (`--identity`), the landmark network random;
* `both`: both pretrained (what `make demo` does).

Test accuracy (primary and corrected) is read at every `--eval_every` steps from the run's
`metrics.jsonl` (the test split is the run's evaluation split here, so these are not the
demo's best-checkpoint numbers but the accuracy the run has at that step). Writes every row
to `--output` (JSON), a Markdown table and a PNG plot beside it. Finished runs are read, not
re-run; `--report_only` trains nothing and reports the finished runs among those chosen.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
from absl import app, flags
from common import cpu_name

INITS = {
    "random": "",
    "landmarks": "{landmarks}",
    "identity": "{identity}",
    "both": "{identity},{landmarks}",
}
HEADS = ("poster", "grefel")
REPORTED_STEPS = (300, 600, 1200, 1800, 2400)

_DATA_DIR = flags.DEFINE_string("data_dir", "data", "Prepared datasets (synthetic_faces/demo_96).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/time_to_accuracy", "One sub-workdir per run.")
_IDENTITY = flags.DEFINE_string(
    "identity", "package:tiny64_identity", "Identity-pretrained IR-50 (workdir or package:NAME)."
)
_LANDMARKS = flags.DEFINE_string(
    "landmarks", "package:tiny64_landmarks", "Pretrained landmark network (workdir or package:)."
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_INITS = flags.DEFINE_list("inits", list(INITS), f"Any of {list(INITS)}.")
_HEADS = flags.DEFINE_list("heads", list(HEADS), f"Any of {list(HEADS)}.")
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 300, "Test-split evaluation period (steps).")
_REPORT_ONLY = flags.DEFINE_bool(
    "report_only", False, "Train nothing: report the finished runs among those chosen."
)
_EXTRA = flags.DEFINE_multi_string("extra", [], "More --config.x=v overrides for every run.")
_OUTPUT = flags.DEFINE_string(
    "output", "docs/results/time_to_accuracy.json", "JSON report (.md and .png beside it)."
)


def _run(command: list[str], env: dict) -> float:
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - start


def _history(run_dir: pathlib.Path) -> dict[int, dict[str, float]]:
    """step -> test accuracies of one run."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {
        r["step"]: {k: r[k] for k in ("primary/accuracy", "corrected/accuracy")}
        for r in rows
        if r.get("split") == "test"
    }


def _markdown(rows: list[dict], steps: list[int]) -> str:
    lines = [
        "| init | head | prediction | " + " | ".join(f"step {s}" for s in steps) + " |",
        "|---|---|---|" + "---|" * len(steps),
    ]
    for init in dict.fromkeys(r["init"] for r in rows):
        for head in dict.fromkeys(r["head"] for r in rows):
            runs = [r for r in rows if r["init"] == init and r["head"] == head]
            if not runs:
                continue
            predictions = ("primary",) if head == "poster" else ("primary", "corrected")
            for p in predictions:
                cells = []
                for s in steps:
                    v = [
                        r["history"][str(s)][f"{p}/accuracy"]
                        for r in runs
                        if str(s) in r["history"]
                    ]
                    std = f" ± {np.std(v, ddof=1):.3f}" if len(v) > 1 else ""
                    cells.append(f"{np.mean(v):.3f}{std}" if v else "n/a")
                lines.append(
                    f"| {init} | {head} | {p} (n={len(runs)}) | " + " | ".join(cells) + " |"
                )
    return "\n".join(lines) + "\n"


def _plot(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = list(dict.fromkeys(r["head"] for r in rows))
    fig, axes = plt.subplots(1, len(heads), figsize=(5.5 * len(heads), 4), squeeze=False)
    for ax, head in zip(axes[0], heads):
        for init in dict.fromkeys(r["init"] for r in rows):
            runs = [r for r in rows if r["init"] == init and r["head"] == head]
            if not runs:
                continue
            key = "primary/accuracy"
            steps = sorted({int(s) for r in runs for s in r["history"]})
            mean = [np.mean([r["history"][str(s)][key] for r in runs]) for s in steps]
            lo = [np.min([r["history"][str(s)][key] for r in runs]) for s in steps]
            hi = [np.max([r["history"][str(s)][key] for r in runs]) for s in steps]
            (line,) = ax.plot(steps, mean, marker="o", label=init)
            ax.fill_between(steps, lo, hi, alpha=0.15, color=line.get_color())
        ax.set_title(f"head {head}: test accuracy (primary), mean and range over seeds")
        ax.set_xlabel("training step (batch 32)")
        ax.set_ylim(0.0, 1.0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv):
    del argv
    for name, chosen, known in (("inits", _INITS.value, INITS), ("heads", _HEADS.value, HEADS)):
        unknown = set(chosen) - set(known)
        if unknown:
            sys.exit(f"--{name}: unknown {sorted(unknown)}; expected some of {list(known)}.")
    workdir = pathlib.Path(_WORKDIR.value)
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(workdir / "jax_cache"))
    rows = []
    for init in _INITS.value:
        for head in _HEADS.value:
            for seed in _SEEDS.value:
                run_dir = workdir / f"{init}_{head}_seed{seed}"
                seconds = None
                finished = (run_dir / "eval_test.json").exists()
                if not finished and _REPORT_ONLY.value:
                    continue
                if not finished:
                    init_from = INITS[init].format(
                        identity=_IDENTITY.value, landmarks=_LANDMARKS.value
                    )
                    seconds = _run(
                        [sys.executable, "-m", "grefel_jax.main", "--config", "configs/demo.py"]
                        + ["--workdir", str(run_dir), f"--config.data.data_dir={_DATA_DIR.value}"]
                        + [f"--config.seed={seed}", f"--config.model.head_preset={head}"]
                        + [f"--config.init_from={init_from}", "--config.data.eval_split=test"]
                        + [f"--config.eval_every_steps={_EVAL_EVERY.value}"]
                        + ["--config.final_eval_splits=()"]
                        + list(_EXTRA.value),
                        env,
                    )
                history = _history(run_dir)
                rows.append(
                    {
                        "init": init,
                        "head": head,
                        "seed": int(seed),
                        "wall_s": seconds,
                        "history": {str(s): v for s, v in sorted(history.items())},
                    }
                )
    steps = sorted({int(s) for r in rows for s in r["history"]})
    shown = [s for s in REPORTED_STEPS if s in steps] or steps
    report = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "identity": _IDENTITY.value,
        "landmarks": _LANDMARKS.value,
        "extra": list(_EXTRA.value),
        "runs": rows,
    }
    output = pathlib.Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    table = _markdown(rows, shown)
    output.with_suffix(".md").write_text(table)
    _plot(rows, output.with_suffix(".png"))
    print(table)


if __name__ == "__main__":
    app.run(main)
