"""`raf_db`: RAF-DB basic, 7 classes, official train/test split, aligned 100x100 images.

Labels in `EmoLabel/list_patition_label.txt` are 1..7 = surprise, fear, disgust, happiness,
sadness, anger, neutral; label index = label - 1 (docs/datasets.md §7.1). Expected on the real
release: train 12,271 / test 3,068.
"""

from __future__ import annotations

from pathlib import Path

import tensorflow_datasets as tfds

from grefel_jax.data import classes, errors
from grefel_jax.data.builders import base

LABEL_FILE = "EmoLabel/list_patition_label.txt"
ALIGNED_DIR = "Image/aligned"
EXPECTED_SIZES = {"train": 12_271, "test": 3_068}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
RAF-DB (basic) is distributed by its authors on request (http://www.whdeng.cn/RAF/model1.html).
From the `basic` release, put in the manual directory (either DIR/basic/... or DIR/...):
  basic/EmoLabel/list_patition_label.txt   lines like 'train_00001.jpg 5' (labels 1..7)
  basic/Image/aligned/train_00001_aligned.jpg ... test_3068_aligned.jpg   (100x100 aligned)
Splits: train 12,271 / test 3,068 (the official partition in the label file).
"""


def _find_root(manual_dir: Path) -> Path:
    for candidate in (manual_dir / "basic", manual_dir):
        if (candidate / LABEL_FILE).exists() or (candidate / ALIGNED_DIR).exists():
            return candidate
    return manual_dir / "basic"


def aligned_name(listed_name: str) -> str:
    """'train_00001.jpg' -> 'train_00001_aligned.jpg' (the aligned release's file name)."""
    stem, _, ext = listed_name.rpartition(".")
    return f"{stem}_aligned.{ext}"


def parse_label_file(path: Path) -> list[tuple[str, str, int]]:
    """[(split, listed file name, label index 0..6)] from list_patition_label.txt."""
    rows = []
    for line_number, line in enumerate(base.read_text_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= 7:
            raise errors.ManualDataFormatError(
                f"{path}:{line_number}: expected '<name>.jpg <1..7>', got {line!r}"
            )
        name, label = parts[0], int(parts[1]) - 1
        split = name.split("_", 1)[0]
        if split not in ("train", "test"):
            raise errors.ManualDataFormatError(
                f"{path}:{line_number}: name {name!r} is neither train_ nor test_"
            )
        rows.append((split, name, label))
    return rows


class RafDb(base.ManualBuilder):
    """RAF-DB basic expression set."""

    name = "raf_db"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    OFFICIAL_SIZES = EXPECTED_SIZES  # docs/datasets.md §7.1

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(classes.RAF_DB)),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://www.whdeng.cn/RAF/model1.html",
        )

    @classmethod
    def check_manual_dir(cls, manual_dir, config=None) -> dict:
        root = base.manual_root("raf_db", manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS)
        root = _find_root(root)
        missing = base.missing_paths(root, [LABEL_FILE, ALIGNED_DIR])
        base.raise_if_missing("raf_db", root, missing, MANUAL_DOWNLOAD_INSTRUCTIONS)
        rows = parse_label_file(root / LABEL_FILE)
        images = [f"{ALIGNED_DIR}/{aligned_name(name)}" for _, name, _ in rows]
        base.raise_if_missing(
            "raf_db", root, base.missing_paths(root, images), MANUAL_DOWNLOAD_INSTRUCTIONS
        )
        return {"root": root, "rows": rows, "splits": ("train", "test")}

    def _generate_examples(self, plan, split):
        root = plan["root"]
        for row_split, name, label in plan["rows"]:
            if row_split != split:
                continue
            image = self._image(root / ALIGNED_DIR / aligned_name(name))
            if image is None:
                continue
            yield name, {"image": image, "label": label, "file_name": aligned_name(name)}
