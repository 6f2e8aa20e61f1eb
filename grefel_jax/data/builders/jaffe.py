"""`jaffe`: JAFFE, 213 grayscale 256x256 TIFF images of 10 subjects, 7 classes.

File names look like `KA.AN1.39.tiff` (subject, expression code + repeat, serial); codes AN,
DI, FE, HA, NE, SA, SU map to anger, disgust, fear, happiness, neutral, sadness, surprise.
There is no official split: `train` holds 8 subjects and `test` the 2 listed in TEST_SUBJECTS
(subject-independent); read `train+test` (TFDS split syntax) for all 213 images in k-fold
protocols. Images are converted to RGB.
"""

from __future__ import annotations

import re
from pathlib import Path

import tensorflow_datasets as tfds

from grefel_jax.data import classes
from grefel_jax.data.builders import base

TEST_SUBJECTS = ("UY", "YM")
EXPECTED_TOTAL = 213
_NAME = re.compile(r"^([A-Z]{2})\.([A-Z]{2})\d*\.\d+\.tiff?$", re.IGNORECASE)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
JAFFE is distributed by its authors (https://zenodo.org/record/3451524).
Put the 213 images directly in the manual directory, or in DIR/jaffe/:
  KA.AN1.39.tiff, KA.AN2.40.tiff, ...  (subject.EXPRESSION<n>.<serial>.tiff)
Splits: train (8 subjects), test (subjects UY, YM); 'train+test' = all 213 images.
"""


def parse_name(name: str) -> tuple[str, int] | None:
    """(subject, label index) from a JAFFE file name, or None if it is not one."""
    match = _NAME.match(name)
    if not match or match.group(2).upper() not in classes.JAFFE_CODES:
        return None
    return match.group(1).upper(), classes.JAFFE_CODES.index(match.group(2).upper())


def _images(root: Path) -> list[Path]:
    files = [p for p in root.iterdir() if p.is_file() and parse_name(p.name)]
    if not files and (root / "jaffe").is_dir():
        files = [p for p in (root / "jaffe").iterdir() if p.is_file() and parse_name(p.name)]
    return sorted(files)


class Jaffe(base.ManualBuilder):
    """JAFFE posed expressions."""

    name = "jaffe"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(classes.JAFFE)),
                    "file_name": tfds.features.Text(),
                    "subject": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://zenodo.org/record/3451524",
        )

    @classmethod
    def check_manual_dir(cls, manual_dir, config=None) -> dict:
        root = base.manual_root("jaffe", manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS)
        files = _images(root)
        if not files:
            base.raise_if_missing(
                "jaffe",
                root,
                ["<subject>.<CODE><n>.<serial>.tiff (no JAFFE images found)"],
                MANUAL_DOWNLOAD_INSTRUCTIONS,
            )
        return {"files": files, "splits": ("train", "test")}

    def _generate_examples(self, plan, split):
        for path in plan["files"]:
            subject, label = parse_name(path.name)
            in_test = subject in TEST_SUBJECTS
            if in_test != (split == "test"):
                continue
            image = self._image(path)
            if image is not None:
                yield (
                    path.name,
                    {
                        "image": image,
                        "label": label,
                        "file_name": path.name,
                        "subject": subject,
                    },
                )
