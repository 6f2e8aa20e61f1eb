#!/usr/bin/env bash
# The accelerator benchmark (benchmarks/accelerator.py): paper-size train step (bf16 / float32,
# batch 128 / 256, Adam / SAM) and inference (batch 256 / 1) with images/s, peak device memory
# and MFU; JSON to $OUT/accelerator.json when OUT is set. Under 8 minutes on one H100/H200.
#   bash benchmarks/accelerator.sh            # on the accelerator
#   bash benchmarks/accelerator.sh --smoke    # tiny model on CPU: checks the script
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
exec "$PY" benchmarks/accelerator.py "$@"
