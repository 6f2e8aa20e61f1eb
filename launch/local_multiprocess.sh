#!/usr/bin/env bash
# N JAX processes on this machine, each with its own CPU devices: the multi-host code path
# (jax.distributed, per-host data shards, multi-process orbax) without a pod.
#
#   bash launch/local_multiprocess.sh 2 configs/demo.py runs/mp [--config.x=y ...]
#
# DEVICES_PER_PROCESS (default 2) sets each process's fake CPU device count. SIGTERM / Ctrl-C
# is forwarded to every process: they save a checkpoint and stop; the same command resumes
# (also with another N). See grefel_jax/local_cluster.py for the environment each gets.
set -euo pipefail
N=${1:?usage: local_multiprocess.sh N CONFIG WORKDIR [overrides...]}
CONFIG=${2:?usage: local_multiprocess.sh N CONFIG WORKDIR [overrides...]}
WORKDIR=${3:?usage: local_multiprocess.sh N CONFIG WORKDIR [overrides...]}
shift 3
PYTHON="${PYTHON:-.venv/bin/python}"
exec "$PYTHON" -m grefel_jax.local_cluster --processes "$N" \
    --devices_per_process "${DEVICES_PER_PROCESS:-2}" -- \
    "$PYTHON" -m grefel_jax.main --config "$CONFIG" --workdir "$WORKDIR" "$@"
