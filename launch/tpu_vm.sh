#!/usr/bin/env bash
# Train on a Cloud TPU VM or pod slice: the same command runs on every host.
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b CONFIG=configs/rafdb.py \
#   WORKDIR=gs://my-bucket/runs/rafdb DATA_DIR=gs://my-bucket/tensorflow_datasets \
#   bash launch/tpu_vm.sh [--config.optim.lr_backbone=1e-5 ...]
#
# Every host runs `python -m grefel_jax.main` with GREFEL_DISTRIBUTED=1, so that it calls
# jax.distributed.initialize() (grefel_jax.sharding.maybe_initialize_distributed; JAX finds the
# hosts and this host's index from the TPU VM's metadata), each host reads its
# own share of the data (grain ShardByJaxProcess), and orbax writes one checkpoint to WORKDIR
# (use a GCS bucket so that every host sees it). A re-run with the same WORKDIR resumes.
#
# Before the first run: copy this repository to the VM (or `git clone` it there) and prepare the
# dataset once into DATA_DIR (a bucket, or the same local path on every host).
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME}"
: "${ZONE:?set ZONE}"
: "${CONFIG:=configs/rafdb.py}"
: "${WORKDIR:?set WORKDIR (gs://... for multi-host)}"
: "${DATA_DIR:?set DATA_DIR}"
: "${REPO_DIR:=~/grefel_jax}"
EXTRA_ARGS="$*"

gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone "${ZONE}" --worker=all --command "
  set -e
  cd ${REPO_DIR}
  if [ ! -d .venv ]; then
    python3 -m venv .venv
    .venv/bin/pip install --quiet -U pip
    .venv/bin/pip install --quiet 'jax[tpu]' -r requirements.txt
    .venv/bin/pip install --quiet --no-deps -e .
  fi
  GREFEL_DISTRIBUTED=1 .venv/bin/python -m grefel_jax.main --config ${CONFIG} --workdir ${WORKDIR} \
      --config.data.data_dir=${DATA_DIR} ${EXTRA_ARGS}
"
