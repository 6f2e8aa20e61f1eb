"""Several JAX processes on one machine (grefel_jax.local_cluster): the environment each gets,
a real 2-process cluster whose data pipeline reads every record exactly once, and a training
run stopped by SIGTERM on 2 processes that resumes on 1."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from etils import epath

from grefel_jax import local_cluster, sharding
from grefel_jax.checkpoints import restore_numpy

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_process_env_describes_the_cluster():
    env = local_cluster.process_env(
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=8 --xla_foo=1", "KEEP": "x"},
        address="127.0.0.1:1234",
        count=3,
        index=2,
        devices=2,
    )
    assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:1234"
    assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("3", "2")
    assert env["XLA_FLAGS"].split() == ["--xla_foo=1", "--xla_force_host_platform_device_count=2"]
    assert env["KEEP"] == "x" and env["JAX_PLATFORMS"] == "cpu"


def test_inconsistent_cluster_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    monkeypatch.setenv("JAX_PROCESS_ID", "0")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        sharding.maybe_initialize_distributed()


def test_two_processes_read_every_record_exactly_once(tiny_faces_config, tmp_path):
    """Per epoch every training record is read by exactly one process, and an evaluation
    pass counts every test example exactly once across processes."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "grefel_jax.local_cluster",
            "--processes=2",
            "--devices_per_process=2",
            "--",
            sys.executable,
            str(REPO / "tests" / "multiprocess_worker.py"),
            tiny_faces_config.data_dir,
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    keys = [np.load(tmp_path / f"keys_{p}.npz") for p in range(2)]
    assert all(int(k["process_count"]) == 2 and int(k["device_count"]) == 4 for k in keys)
    train = [set(k["train"].tolist()) for k in keys]
    assert all(len(t) == len(k["train"]) for t, k in zip(train, keys))  # no repeats
    assert not train[0] & train[1]
    assert train[0] | train[1] == set(range(140))
    evaluated = np.concatenate([k["eval"] for k in keys])
    assert sorted(evaluated.tolist()) == list(range(70))


# --- SIGTERM on 2 x 2, resume on 1 x 4 ----------------------------------------------------

STEPS = 12
# Compile time is most of what these runs cost, and the generated code's speed does not
# matter for 12 steps of a tiny model: LLVM at its lowest level compiles ~1.6x faster.
FAST_COMPILE_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)


def _train_overrides(data_dir: str) -> list[str]:
    """configs/demo.py on tiny_64 with the tiny model of tests/test_train.py and SGD with
    momentum (so that optimizer state goes through the resume); saves only at a stop and at
    the end."""
    return [
        "--config",
        "configs/demo.py",
        f"--config.data.data_dir={data_dir}",
        "--config.data.builder_config=tiny_64",
        "--config.data.eval_split=test",
        "--config.final_eval_splits=()",
        "--config.mode=train",
        "--config.init_from=",  # the tiny backbone is not the packaged one
        "--config.model.backbone.ir_units=(1,1,1)",
        "--config.model.backbone.vit_depth=1",
        "--config.batch_size=16",
        f"--config.num_train_steps={STEPS}",
        "--config.log_every_steps=1",
        "--config.checkpoint_every_steps=1000",
        "--config.optim.name=sgd",
        "--config.optim.schedule=constant",
        "--config.optim.lr_backbone=0.01",
        "--config.optim.lr_head=0.01",
        "--config.optim.lr_anchors=0.01",
    ]


def _launch(processes, devices, workdir, data_dir, *, cache=False, sigterm_after_step=None):
    """Runs `grefel_jax.main` as `processes` x `devices` through the launcher; returns its
    output. With `sigterm_after_step`, the launcher gets SIGTERM (forwarded to every process)
    as soon as that step's progress line appears."""
    command = [
        sys.executable,
        "-m",
        "grefel_jax.local_cluster",
        f"--processes={processes}",
        f"--devices_per_process={devices}",
        *(["--compilation_cache"] if cache else []),
        "--",
        sys.executable,
        "-m",
        "grefel_jax.main",
        "--workdir",
        str(workdir),
        *_train_overrides(data_dir),
    ]
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_XLA_FLAGS}"}
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watchdog = threading.Timer(300, proc.kill)  # a hung collective must not hang the suite
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if sigterm_after_step and re.search(rf"step +{sigterm_after_step}/{STEPS} ", line):
                proc.send_signal(signal.SIGTERM)
                sigterm_after_step = None
        proc.wait()
    finally:
        watchdog.cancel()
    output = "".join(lines)
    assert proc.returncode == 0, output[-4000:]
    return output


def _final_step(workdir) -> tuple[int, dict, dict]:
    """(step, model tree, train tree) of the newest checkpoint of a workdir, as numpy."""
    step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    step_dir = epath.Path(workdir) / "checkpoints" / str(step)
    return step, restore_numpy(step_dir / "model"), restore_numpy(step_dir / "train")


def _relative_difference(a, b, origin) -> float:
    """||a - b|| / ||b - origin|| over all leaves: how far apart two end points are, relative to
    the distance the reference travelled from `origin`."""
    diff = sum(np.sum((np.float64(x) - y) ** 2) for x, y in zip(_leaves(a), _leaves(b)))
    travel = sum(np.sum((np.float64(y) - o) ** 2) for y, o in zip(_leaves(b), _leaves(origin)))
    return float(np.sqrt(diff / travel))


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _train_losses(workdir) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    losses = {}
    for row in rows:
        if row["split"] == "train":
            assert row["step"] not in losses, f"step {row['step']} logged twice"
            losses[row["step"]] = row["loss"]
    return losses


def test_sigterm_on_two_processes_resumes_on_one(tiny_faces_config, tmp_path):
    """2 processes x 2 devices train, get SIGTERM and save; the workdir resumes on 1 x 4 and
    ends where an uninterrupted 1 x 4 run ends. Only process 0 writes logs and JSON.

    A resume on 4 x 1 was dropped from this test: it took 40 s alone (four processes compiling
    on 2 cores) and the suite's time limit is 6 minutes; the restore path it used is the same
    orbax restore onto the new mesh's shardings as the 1 x 4 resume."""
    data_dir = tiny_faces_config.data_dir
    # The uninterrupted reference, and a resume on the same topology: one process, so the
    # persistent compilation cache is safe and serves the second run its train step.
    reference = tmp_path / "reference"
    _launch(1, 4, reference, data_dir, cache=True)

    interrupted = tmp_path / "interrupted"
    output = _launch(2, 2, interrupted, data_dir, sigterm_after_step=3)
    stop_step, stop_model, _ = _final_step(interrupted)
    assert 3 <= stop_step < STEPS, output[-3000:]
    assert f"Stopped at step {stop_step}" in output
    # Only process 0 writes: one progress line per step, from [p0]; one line per step in
    # metrics.jsonl; one TensorBoard event file.
    progress = [line for line in output.splitlines() if f"/{STEPS} | loss" in line]
    assert len(progress) == stop_step and all(line.startswith("[p0]") for line in progress)
    assert sorted(_train_losses(interrupted)) == list(range(1, stop_step + 1))
    assert len(list((interrupted / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert json.loads((interrupted / "config.json").read_text())["num_train_steps"] == STEPS

    resumed = {"1x4": tmp_path / "resumed_1x4"}
    for name, workdir in resumed.items():
        shutil.copytree(interrupted, workdir)
        processes, devices = map(int, name.split("x"))
        output = _launch(processes, devices, workdir, data_dir, cache=processes == 1)
        assert f"from step {stop_step}." in output

    ref_step, ref_model, ref_train = _final_step(reference)
    ref_losses = _train_losses(reference)
    assert ref_step == STEPS
    for name, workdir in resumed.items():
        step, model, train = _final_step(workdir)
        assert step == STEPS and int(train["step"]) == STEPS, name
        np.testing.assert_array_equal(train["rng"], ref_train["rng"])
        # Same tolerance as the 20-step sharded == single-device test (tests/test_train.py):
        # the runs differ only in the order of cross-device sums. A skipped or repeated step
        # would be ~1 / (STEPS - stop_step) of the distance travelled.
        params = _relative_difference(model["params"], ref_model["params"], stop_model["params"])
        assert params < 1e-3, f"{name}: params {params:.2e}"
        momentum = _relative_difference(
            train["opt_state"],
            ref_train["opt_state"],
            jax.tree.map(np.zeros_like, ref_train["opt_state"]),
        )
        assert momentum < 1e-3, f"{name}: optimizer state {momentum:.2e}"
        for a, b in zip(_leaves(model["batch_stats"]), _leaves(ref_model["batch_stats"])):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5, err_msg=name)
        losses = _train_losses(workdir)
        assert sorted(losses) == list(range(1, STEPS + 1)), name
        np.testing.assert_allclose(
            [losses[s] for s in range(1, STEPS + 1)],
            [ref_losses[s] for s in range(1, STEPS + 1)],
            rtol=1e-4,
            err_msg=name,
        )
