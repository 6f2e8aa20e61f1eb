"""`ferg_db`: FERG-DB, 55,767 images of 6 stylized characters, 7 classes.

Layout `FERG_DB_256/<character>/<character>_<expression>/*.png`; classes anger, disgust, fear,
joy, neutral, sadness, surprise (docs/datasets.md §7.4). The release has no official split and the
one GReFEL used is unknown, so this builder makes a deterministic 80/20 train/test split by a
hash of each file's relative path (the same on every machine), stratified only by chance.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import tensorflow_datasets as tfds

from grefel_jax.data import classes
from grefel_jax.data.builders import base

CHARACTERS = ("aia", "bonnie", "jules", "malcolm", "mery", "ray")
ROOT_NAME = "FERG_DB_256"
TEST_PERCENT = 20
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
FERG-DB is distributed on request (https://grail.cs.washington.edu/projects/deepexpr/ferg-db.html).
Extract it so that the manual directory holds (DIR/FERG_DB_256/... or DIR/...):
  FERG_DB_256/<character>/<character>_<expression>/*.png
  characters: aia, bonnie, jules, malcolm, mery, ray
  expressions: anger, disgust, fear, joy, neutral, sadness, surprise
No official split: train/test = 80/20 by a hash of the relative path (deterministic).
"""


def split_of(relative_path: str) -> str:
    """'train' or 'test' for a file, from an md5 of its relative path (stable, seedless)."""
    digest = int(hashlib.md5(relative_path.encode()).hexdigest()[:8], 16)
    return "test" if digest % 100 < TEST_PERCENT else "train"


def _find_root(manual_dir: Path) -> Path:
    if (manual_dir / ROOT_NAME).is_dir():
        return manual_dir / ROOT_NAME
    return manual_dir


class FergDb(base.ManualBuilder):
    """FERG-DB stylized character expressions."""

    name = "ferg_db"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(classes.FERG_DB)),
                    "file_name": tfds.features.Text(),
                    "character": tfds.features.ClassLabel(names=list(CHARACTERS)),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://grail.cs.washington.edu/projects/deepexpr/ferg-db.html",
        )

    @classmethod
    def check_manual_dir(cls, manual_dir, config=None) -> dict:
        root = _find_root(base.manual_root("ferg_db", manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS))
        expected = [f"{c}/{c}_{e}" for c in CHARACTERS for e in classes.FERG_DB]
        missing = base.missing_paths(root, expected)
        base.raise_if_missing("ferg_db", root, missing, MANUAL_DOWNLOAD_INSTRUCTIONS)
        items = []
        for c_index, character in enumerate(CHARACTERS):
            for label, expression in enumerate(classes.FERG_DB):
                folder = root / character / f"{character}_{expression}"
                for path in sorted(folder.iterdir()):
                    if path.suffix.lower() in IMAGE_SUFFIXES:
                        rel = str(path.relative_to(root))
                        items.append((split_of(rel), rel, label, c_index))
        return {"root": root, "items": items, "splits": ("train", "test")}

    def _generate_examples(self, plan, split):
        for item_split, rel, label, character in plan["items"]:
            if item_split != split:
                continue
            image = self._image(plan["root"] / rel)
            if image is not None:
                yield (
                    rel,
                    {
                        "image": image,
                        "label": label,
                        "file_name": rel,
                        "character": character,
                    },
                )
