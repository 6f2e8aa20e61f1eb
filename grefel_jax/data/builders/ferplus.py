"""`ferplus`: FER+ (8 classes) from Kaggle's fer2013.csv and Microsoft's fer2013new.csv.

Labels follow the official majority protocol of FERPlus `src/ferplus.py::_process_data`:
  1. every vote count <= 1 is zeroed (outlier removal);
  2. an image is kept only if its largest count is > 0.5 x the sum of the remaining counts and
     the arg-max is an emotion (not `unknown`, not `NF`).
Rows with an empty `Image name` are dropped (the FER+ tooling writes no file for them).
Examples are keyed by their row: the real fer2013new.csv repeats some image names (e.g.
`fer0006953.png` on two `Training` rows, with different pixels and votes), and each such row
is its own example, counted and labelled on its own by the majority protocol; the name is
kept as the `file_name` feature.
Splits: Training -> train, PublicTest -> validation, PrivateTest -> test. On the real files:
25,060 / 3,199 / 3,153 (docs/datasets.md; the repo's per-folder label.csv files are an older
labelling and give other counts).

Extra features: `votes` (10,) int32 raw counts (8 emotions, unknown, NF) and
`label_distribution` (8,) float32, the outlier-removed emotion votes normalized to sum 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from grefel_jax.data import classes, errors
from grefel_jax.data.builders import base

FER2013_CSV = "fer2013.csv"
FERPLUS_CSV = "fer2013new.csv"
USAGE_TO_SPLIT = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
VOTE_COLUMNS = (*classes.FERPLUS, "unknown", "NF")
EXPECTED_SIZES = {"train": 25_060, "validation": 3_199, "test": 3_153}
NUM_EMOTIONS = len(classes.FERPLUS)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
FER+ needs two CSV files, put directly in the manual directory:
  fer2013.csv      Kaggle "Challenges in Representation Learning: Facial Expression Recognition
                   Challenge" (columns emotion,pixels,Usage; 35,887 rows of 48x48 pixels)
  fer2013new.csv   https://github.com/microsoft/FERPlus (top-level fer2013new.csv; columns
                   Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,
                   contempt,unknown,NF)
Both files have the same row order. Splits: train 25,060 / validation 3,199 / test 3,153.
"""


def majority_label(votes: np.ndarray) -> int:
    """Official FER+ majority protocol on the 10 vote counts; -1 if the image is dropped.

    Args:
      votes: (10,) counts in VOTE_COLUMNS order (8 emotions, unknown, NF).
    """
    cleaned = np.where(votes <= 1, 0, votes).astype(np.float64)
    total = cleaned.sum()
    best = int(np.argmax(cleaned))
    if total <= 0 or cleaned[best] <= 0.5 * total:
        return -1  # no majority: the official code relabels it `unknown`, then drops it
    return best if best < NUM_EMOTIONS else -1


def label_distribution(votes: np.ndarray) -> np.ndarray:
    """(8,) float32 outlier-removed emotion votes, normalized (zeros if none remain)."""
    cleaned = np.where(votes[:NUM_EMOTIONS] <= 1, 0, votes[:NUM_EMOTIONS]).astype(np.float32)
    total = cleaned.sum()
    return cleaned / total if total > 0 else cleaned


def _csv_dicts(path: Path, required: tuple[str, ...]) -> list[dict]:
    """Rows of `path` as dicts by header name (BOM, CRLF and blanks tolerated)."""
    rows = base.read_csv_rows(path)
    if not rows:
        raise errors.ManualDataFormatError(f"{path}: empty file.")
    header = rows[0][1]
    missing = [c for c in required if c not in header]
    if missing:
        raise errors.ManualDataFormatError(f"{path}: missing columns {missing}.")
    return [dict(zip(header, cells), _line=number) for number, cells in rows[1:]]


def read_rows(root: Path) -> list[dict]:
    """Joins the two CSVs row by row; checks that they agree on length and Usage."""
    pixels_rows = _csv_dicts(root / FER2013_CSV, ("pixels", "Usage"))
    vote_rows = _csv_dicts(root / FERPLUS_CSV, ("Usage", "Image name", *VOTE_COLUMNS))
    if len(pixels_rows) != len(vote_rows):
        raise errors.ManualDataFormatError(
            f"{FER2013_CSV} has {len(pixels_rows)} rows but {FERPLUS_CSV} has {len(vote_rows)}: "
            "they must be the matching releases (35,887 rows each)."
        )
    rows = []
    for i, (p, v) in enumerate(zip(pixels_rows, vote_rows)):
        if p["Usage"] != v["Usage"]:
            raise errors.ManualDataFormatError(
                f"Row {i + 2}: Usage {p['Usage']!r} in {FER2013_CSV} vs {v['Usage']!r} in "
                f"{FERPLUS_CSV}; the files are not in the same order."
            )
        try:
            votes = np.array([int(float(v[c] or 0)) for c in VOTE_COLUMNS], np.int32)
        except ValueError as e:
            raise errors.ManualDataFormatError(
                f"{root / FERPLUS_CSV}:{v['_line']}: vote counts must be numbers ({e})."
            ) from e
        rows.append(
            {
                "split": USAGE_TO_SPLIT.get(v["Usage"]),
                "name": v["Image name"],
                "pixels": p["pixels"],
                "votes": votes,
                "row": i,
            }
        )
    return rows


class Ferplus(base.ManualBuilder):
    """FER+ majority-vote labels on FER2013 images."""

    name = "ferplus"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    OFFICIAL_SIZES = EXPECTED_SIZES  # docs/datasets.md

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(48, 48, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=list(classes.FERPLUS)),
                    "file_name": tfds.features.Text(),
                    "label_distribution": tfds.features.Tensor(
                        shape=(NUM_EMOTIONS,), dtype=np.float32
                    ),
                    "votes": tfds.features.Tensor(shape=(len(VOTE_COLUMNS),), dtype=np.int32),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://github.com/microsoft/FERPlus",
        )

    @classmethod
    def check_manual_dir(cls, manual_dir, config=None) -> dict:
        root = base.manual_root("ferplus", manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS)
        missing = base.missing_paths(root, [FER2013_CSV, FERPLUS_CSV])
        base.raise_if_missing("ferplus", root, missing, MANUAL_DOWNLOAD_INSTRUCTIONS)
        return {"root": root, "splits": ("train", "validation", "test")}

    def _split_generators(self, dl_manager):
        plan = self.check_manual_dir(base.dl_manual_dir(dl_manager))
        plan["rows"] = read_rows(plan["root"])  # one read for all splits
        return {
            split: base.unique_keys(self._generate_examples(plan, split), f"ferplus {split}")
            for split in plan["splits"]
        }

    def _generate_examples(self, plan, split):
        for row in plan["rows"]:
            if row["split"] != split or not row["name"]:
                continue
            label = majority_label(row["votes"])
            if label < 0:
                continue
            values = np.array(row["pixels"].split(), dtype=np.int64)
            if values.size != 48 * 48 or values.min() < 0 or values.max() > 255:
                message = f"{FER2013_CSV} row {row['row'] + 2} ({row['name']}): bad pixels"
                if not self.skip_corrupt:
                    raise errors.CorruptImageError(f"{message} (expected 2304 values in 0..255).")
                self.corrupt.files.append(message)
                continue
            yield (
                f"row{row['row'] + 2:05d}",  # the CSV line: names repeat in the real file
                {
                    "image": base.encode_png(values.astype(np.uint8).reshape(48, 48)),
                    "label": label,
                    "file_name": row["name"],
                    "label_distribution": label_distribution(row["votes"]),
                    "votes": row["votes"],
                },
            )
