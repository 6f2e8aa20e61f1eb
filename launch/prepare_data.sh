#!/usr/bin/env bash
# Prepares every dataset of grefel_jax into ArrayRecord files (one command per dataset).
#
#   DATA_DIR=~/tensorflow_datasets MANUAL_ROOT=~/downloads bash launch/prepare_data.sh
#
# synthetic_faces needs no download. The others read the official releases from
# $MANUAL_ROOT/<dataset>/ (see each builder's MANUAL_DOWNLOAD_INSTRUCTIONS, printed when files
# are missing). Datasets whose folder is absent are skipped with a note.
set -euo pipefail

DATA_DIR="${DATA_DIR:-$HOME/tensorflow_datasets}"
MANUAL_ROOT="${MANUAL_ROOT:-$HOME/downloads}"
PYTHON="${PYTHON:-python}"

prepare() {  # prepare NAME [CONFIG] [MANUAL_SUBDIR]
  local name="$1" config="${2:-}" manual="${3:-}"
  local args=(-m grefel_jax.prepare --dataset "$name" --data_dir "$DATA_DIR")
  [[ -n "$config" ]] && args+=(--config "$config")
  if [[ -n "$manual" ]]; then
    if [[ ! -d "$MANUAL_ROOT/$manual" ]]; then
      echo "skip $name: $MANUAL_ROOT/$manual not found"
      return 0
    fi
    args+=(--manual_dir "$MANUAL_ROOT/$manual")
  fi
  echo "+ $PYTHON ${args[*]}"
  "$PYTHON" "${args[@]}"
}

# Embedded, generated (no download).
prepare synthetic_faces demo_96
prepare synthetic_faces 96
prepare synthetic_faces 224
# Official releases (manual download).
prepare raf_db "" raf_db                  # basic/EmoLabel + basic/Image/aligned
prepare affectnet 7 affectnet             # Manually_Annotated_* or train_set/val_set
prepare affectnet 8 affectnet
prepare ferplus "" ferplus                # fer2013.csv + fer2013new.csv
prepare ferg_db "" ferg_db                # FERG_DB_256/<char>/<char>_<expr>/
prepare jaffe "" jaffe                    # *.tiff
prepare aff_wild2_expr "" aff_wild2       # annotations/EXPR_*/ + cropped_aligned/
# A class-per-folder dataset of your own: <split>/<class>/<image>.
prepare image_folder mydata my_faces
