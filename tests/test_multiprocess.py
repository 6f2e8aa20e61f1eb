"""Several JAX processes on one machine (grefel_jax.local_cluster): the environment each gets,
and a real 2-process cluster whose data pipeline reads every record exactly once."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from grefel_jax import local_cluster, sharding

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
