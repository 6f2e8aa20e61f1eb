"""The accelerator benchmark keeps running: `benchmarks/accelerator.sh --smoke` on CPU (tiny
one-unit model, batch 2) writes its JSON to $OUT and prints its summary line."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_accelerator_smoke_writes_json(tmp_path):
    """Slow by nature: the script itself runs, in a subprocess, and compiles a train step and
    an inference of the tiny model (no cache: it is a fresh process of another device
    count)."""
    # As a user runs it on a CPU: one device (the suite's 8 fake devices would not divide the
    # smoke run's batches of 1 and 2).
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env["XLA_FLAGS"] = " ".join(flags)
    result = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "accelerator.sh"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads((tmp_path / "accelerator.json").read_text())
    kinds = sorted((r["kind"], r["batch_size"]) for r in report["results"])
    assert kinds == [("infer", 1), ("train", 2)]
    assert all(r["images_per_s"] > 0 and r["flops_per_call"] > 0 for r in report["results"])
    assert all(r["mfu"] is None for r in report["results"])  # no peak is known for a CPU
    assert result.stdout.strip().splitlines()[-1].startswith("images_per_s_train_best=")


def test_roofline_reports_floors(tmp_path):
    """benchmarks/roofline.py on the tiny model with small matrices: a JSON whose floors follow
    from its own peak and FLOPs, and the summary line."""
    out = tmp_path / "roofline.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "roofline.py"), "--variant", "tiny"]
        + ["--sizes", "64", "--reps", "1", "--batch_size", "4", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    flops, peak = report["flops_per_image"], report["peak_gflops"]
    assert 0 < flops["landmark_net"] < flops["forward"]
    assert flops["train_step"] == 3 * flops["forward"] - 2 * flops["landmark_net"]
    assert abs(report["floor_s"]["train"] - 4 * flops["train_step"] / (peak * 1e9)) < 1e-9
    assert result.stdout.strip().splitlines()[-1].startswith("peak_gflops=")
