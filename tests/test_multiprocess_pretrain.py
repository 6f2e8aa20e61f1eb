"""Both pretrainings on 2 JAX processes (grefel_jax.local_cluster) run on the one training loop:
a SIGTERM delivered to ONE process makes both stop and save at the same step (the stop flag is
agreed across hosts before every save decision), and the workdir resumes on both processes
from that step to the end (issue 26).

Each launch compiles a tiny network in two processes at once on a 2-core machine: this file
costs about a minute; it is the only test of the pretrainings' multi-host stop."""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 8
FAST_COMPILE_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
)
# task -> (recipe, overrides that keep the run tiny).
TASKS = {
    "identity": (
        "configs/identity_synthetic.py",
        ["--config.identity.pairs_per_fold=3", "--config.eval_batch_size=32"],
    ),
    "landmarks": ("configs/landmarks_synthetic.py", ["--config.eval_batch_size=40"]),
}


def _child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (Linux /proc)."""
    children = []
    for task in pathlib.Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children += [int(c) for c in text]
    return children


def _jax_process_id(pid: int) -> int | None:
    environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for item in environ:
        if item.startswith(b"JAX_PROCESS_ID="):
            return int(item.split(b"=", 1)[1])
    return None


def _launch(task: str, data_dir: str, builder_config: str, workdir, *, sigterm_after=None):
    """Runs `python -m grefel_jax.pretrain TASK` as 2 processes x 1 device; with
    `sigterm_after`, sends SIGTERM to process 1 only once process 0 logged that step.
    Returns the combined output."""
    recipe, overrides = TASKS[task]
    command = [
        sys.executable,
        "-m",
        "grefel_jax.local_cluster",
        "--processes=2",
        "--devices_per_process=1",
        "--",
        sys.executable,
        "-m",
        "grefel_jax.pretrain",
        task,
        "--config",
        recipe,
        "--workdir",
        str(workdir),
        f"--config.data.data_dir={data_dir}",
        f"--config.data.builder_config={builder_config}",
        "--config.model.backbone.image_size=64",
        "--config.data.augment.resize_crop=False",
        "--config.batch_size=16",
        f"--config.num_train_steps={STEPS}",
        "--config.log_every_steps=1",
        "--config.eval_every_steps=1000",
        "--config.checkpoint_every_steps=1000",
        "--config.optim.warmup_steps=0",
        *overrides,
    ]
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE_XLA_FLAGS}"}
    proc = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watchdog = threading.Timer(240, proc.kill)  # a hung collective must not hang the suite
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if sigterm_after and re.search(rf"^\[p0\].*step +{sigterm_after}/{STEPS} ", line):
                # Process 1 alone gets the signal; the launcher and process 0 do not.
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    targets = [p for p in _child_pids(proc.pid) if _jax_process_id(p) == 1]
                    if targets:
                        os.kill(targets[0], signal.SIGTERM)
                        break
                    time.sleep(0.05)
                sigterm_after = None
        proc.wait()
    finally:
        watchdog.cancel()
    output = "".join(lines)
    assert proc.returncode == 0, output[-4000:]
    return output


@pytest.mark.parametrize("task", list(TASKS))
def test_pretraining_stops_on_every_host_together_and_resumes(
    task, tiny_faces_config, tiny_identities_config, tmp_path
):
    data = tiny_identities_config if task == "identity" else tiny_faces_config
    workdir = tmp_path / task
    output = _launch(task, data.data_dir, data.builder_config, workdir, sigterm_after=2)
    stopped = {
        p: int(m.group(1))
        for p in (0, 1)
        for m in [re.search(rf"^\[p{p}\].*Stopped at step (\d+);", output, re.MULTILINE)]
        if m
    }
    assert set(stopped) == {0, 1}, output[-3000:]  # both hosts stopped, not only the signalled one
    assert stopped[0] == stopped[1] and 2 <= stopped[0] < STEPS, stopped
    step = stopped[0]
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [step]
    assert "identity_eval.json" not in os.listdir(workdir)  # no report for an unfinished run

    resumed = _launch(task, data.data_dir, data.builder_config, workdir)
    for p in (0, 1):
        assert re.search(rf"^\[p{p}\].*from step {step}\.", resumed, re.MULTILINE), resumed[-3000:]
    progress = [line for line in resumed.splitlines() if f"/{STEPS} | loss" in line]
    assert len(progress) == STEPS - step and all(line.startswith("[p0]") for line in progress)
    report = "identity_eval.json" if task == "identity" else "landmarks_eval.json"
    assert (workdir / report).is_file()
