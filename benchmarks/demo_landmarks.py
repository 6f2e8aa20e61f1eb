r"""The demo's geometry ablation: random vs pretrained vs no landmark network, over seeds.

  python benchmarks/demo_landmarks.py --data_dir data --workdir runs/demo_landmark_ablation \
      --landmarks runs/demo_landmarks --output benchmarks/results/demo_landmarks.json

Each run is exactly `make demo`'s training command (`configs/demo.py`, its steps, in a fresh
process) with `--config.seed=S` and one of:

* `random`: the landmark network randomly initialised and frozen (the demo before issue 10);
* `pretrained`: `--config.init_from=LANDMARKS`, the network pretrained on the faces' points by
  `configs/landmarks_demo.py` and frozen (what `make demo` does); pretrained first when
  LANDMARKS holds no finished run;
* `constant`: `--config.model.backbone.landmark_queries=constant`, the attention queries
  replaced by zeros (no landmark information at all; docs/landmarks.md).

It reports the test split (`eval_test.json` of each run: best checkpoint by validation
accuracy) as mean ± sample std over seeds, for the primary and the corrected output, and
writes every run's numbers and wall time to `--output` (JSON) and a Markdown table beside it.
Finished runs (their `eval_test.json` exists, or `--previous` holds their row) are read, not
re-run: `--previous benchmarks/results/demo_landmarks.json --seeds 0,1,2,3,4` adds two seeds
to an earlier report (its rows keep their `wall_s` and `source`; new rows get `run <date>`).
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

VARIANTS = {
    "random": [],
    "pretrained": ["--config.init_from={landmarks}"],
    "constant": ["--config.model.backbone.landmark_queries=constant"],
}
METRICS = ("primary/accuracy", "corrected/accuracy", "primary/macro_f1", "corrected/macro_f1")

_DATA_DIR = flags.DEFINE_string("data_dir", "data", "Prepared datasets (synthetic_faces/demo_96).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo_landmark_ablation", "One sub-workdir per run.")
_LANDMARKS = flags.DEFINE_string(
    "landmarks", "runs/demo_landmarks", "Landmark pretraining workdir (configs/landmarks_demo.py)."
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
_VARIANTS = flags.DEFINE_list("variants", list(VARIANTS), f"Any of {list(VARIANTS)}.")
_PREVIOUS = flags.DEFINE_string(
    "previous", None, "An earlier report of this script whose rows count as finished runs."
)
_OUTPUT = flags.DEFINE_string(
    "output", "benchmarks/results/demo_landmarks.json", "JSON report (and .md beside it)."
)


def _run(command: list[str], env: dict) -> float:
    """Runs one command in a fresh process; returns its wall time in seconds."""
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env)
    return time.perf_counter() - start


def _pretrain(env: dict) -> dict:
    """The landmark network `pretrained` loads: `make demo`'s pretraining (reused if done)."""
    report = pathlib.Path(_LANDMARKS.value) / "landmarks_eval.json"
    seconds = None
    if not report.exists():
        seconds = _run(
            [sys.executable, "-m", "grefel_jax.landmarks.pretrain"]
            + ["--config", "configs/landmarks_demo.py", "--workdir", _LANDMARKS.value]
            + [f"--config.data.data_dir={_DATA_DIR.value}"],
            env,
        )
    return {**json.loads(report.read_text()), "wall_s": seconds}


def _summary(rows: list[dict]) -> dict:
    """variant -> metric -> (mean, sample std, n) over the variant's seeds."""
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        values = {m: [r[m] for r in rows if r["variant"] == variant] for m in METRICS}
        out[variant] = {
            m: {
                "mean": float(np.mean(v)),
                "std": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                "n": len(v),
            }
            for m, v in values.items()
        }
    return out


def _tests_against_pretrained(rows: list[dict]) -> dict:
    """For each other variant and each accuracy: the paired t-test of the mean difference
    (same seeds) and the one-sided F-test that its variance exceeds the pretrained one's."""
    from scipy import stats  # benchmarks only (scikit-image, a test dependency, brings it)

    by = {(r["variant"], r["seed"]): r for r in rows}
    seeds = sorted({r["seed"] for r in rows if r["variant"] == "pretrained"})
    out = {}
    for variant in dict.fromkeys(r["variant"] for r in rows):
        common = [s for s in seeds if (variant, s) in by]
        if variant == "pretrained" or len(common) < 3:
            continue
        for m in ("primary/accuracy", "corrected/accuracy"):
            p = np.array([by[("pretrained", s)][m] for s in common])
            o = np.array([by[(variant, s)][m] for s in common])
            ratio = float(o.var(ddof=1) / p.var(ddof=1))
            out[f"{variant} {m}"] = {
                "seeds": common,
                "mean_difference": float((p - o).mean()),
                "paired_t_p": float(stats.ttest_rel(p, o).pvalue),
                "variance_ratio": ratio,
                "f_test_p": float(stats.f.sf(ratio, len(common) - 1, len(common) - 1)),
            }
    return out


def _markdown(summary: dict, landmarks: dict | None, tests: dict) -> str:
    lines = [
        "| landmark network | accuracy primary | accuracy corrected | macro-F1 primary "
        "| macro-F1 corrected |",
        "|---|---|---|---|---|",
    ]
    for variant, metrics in summary.items():
        cells = []
        for m in METRICS:
            s = metrics[m]
            std = "n/a" if s["std"] is None else f"{s['std']:.3f}"
            cells.append(f"{s['mean']:.3f} ± {std}")
        lines.append(f"| {variant} (n={metrics[METRICS[0]]['n']}) | " + " | ".join(cells) + " |")
    if landmarks:
        lines.append(
            f"\nPretrained network: test NME {landmarks['nme']:.4f} on "
            f"{landmarks['num_examples']} faces."
        )
    if tests:
        lines += [
            "\nPretrained against each other variant, same seeds:\n",
            "| comparison | mean difference | paired t-test p | variance ratio | F-test p |",
            "|---|---|---|---|---|",
        ]
        for name, t in tests.items():
            lines.append(
                f"| {name} | {t['mean_difference']:+.4f} | {t['paired_t_p']:.3f} "
                f"| {t['variance_ratio']:.1f} | {t['f_test_p']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    unknown = set(_VARIANTS.value) - set(VARIANTS)
    if unknown:
        sys.exit(f"--variants: unknown {sorted(unknown)}; expected some of {list(VARIANTS)}.")
    workdir = pathlib.Path(_WORKDIR.value)
    env = dict(os.environ)
    # Every run compiles the same programs: the persistent cache turns later compiles into reads.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(workdir / "jax_cache"))
    landmarks = _pretrain(env) if "pretrained" in _VARIANTS.value else None
    previous = {}
    if _PREVIOUS.value:
        earlier = json.loads(pathlib.Path(_PREVIOUS.value).read_text())
        previous = {(r["variant"], r["seed"]): r for r in earlier["runs"]}
    today = time.strftime("%Y-%m-%d", time.gmtime())
    rows = []
    for variant in _VARIANTS.value:
        for seed in _SEEDS.value:
            if (variant, int(seed)) in previous:
                rows.append(
                    {"source": f"--previous {_PREVIOUS.value}"} | previous[(variant, int(seed))]
                )
                continue
            run_dir = workdir / f"{variant}_seed{seed}"
            result_file = run_dir / "eval_test.json"
            seconds = None
            if not result_file.exists():
                extra = [a.format(landmarks=_LANDMARKS.value) for a in VARIANTS[variant]]
                seconds = _run(
                    [sys.executable, "-m", "grefel_jax.main", "--config", "configs/demo.py"]
                    + ["--workdir", str(run_dir), f"--config.data.data_dir={_DATA_DIR.value}"]
                    + [f"--config.seed={seed}"]
                    + extra,
                    env,
                )
            result = json.loads(result_file.read_text())
            rows.append(
                {"variant": variant, "seed": int(seed), "wall_s": seconds, "source": f"run {today}"}
                | {m: float(result[m]) for m in METRICS}
            )
    summary = _summary(rows)
    tests = _tests_against_pretrained(rows) if "pretrained" in _VARIANTS.value else {}
    report = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "previous": _PREVIOUS.value,
        "landmarks": landmarks,
        "runs": rows,
        "summary": summary,
        "tests_against_pretrained": tests,
    }
    output = pathlib.Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    table = _markdown(summary, landmarks, tests)
    output.with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    app.run(main)
