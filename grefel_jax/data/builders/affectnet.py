"""`affectnet`: AffectNet manually annotated images, configs `7` and `8` classes.

Expression codes: 0 neutral, 1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger,
7 contempt, 8 none, 9 uncertain, 10 no-face. Config `7` keeps codes 0-6, config `8` codes
0-7; 8-10 are always excluded. The label index *is* the code, so class names follow AffectNet's
order (not RAF-DB's): use `classes.map_labels('affectnet/7', 'raf_db')` to compare.

Splits: train = the official training set; test = the official validation set (500 per
class: 3,500 / 4,000). Expected train sizes on the real files: 283,901 (7) / 287,651 (8).

Two releases are read (the first one found):
  (a) Manually_Annotated_file_lists/{training,validation}.csv + Manually_Annotated_Images/;
      the face box of each row is cropped (the images are the original photos) and the 68
      landmarks are shifted into the crop.
  (b) train_set|val_set/images/<id>.jpg + annotations/<id>_exp.npy (and <id>_lnd.npy); the
      images are already cropped faces.
Landmarks are (68, 2) float32 pixel (x, y); NaN where a row has none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from grefel_jax.data import classes, errors
from grefel_jax.data.builders import base

NUM_LANDMARKS = 68
CSV_DIR = "Manually_Annotated_file_lists"
CSV_IMAGES = "Manually_Annotated_Images"
CSV_FILES = {"train": f"{CSV_DIR}/training.csv", "test": f"{CSV_DIR}/validation.csv"}
CSV_COLUMNS = (
    "subDirectory_filePath",
    "face_x",
    "face_y",
    "face_width",
    "face_height",
    "facial_landmarks",
    "expression",
    "valence",
    "arousal",
)
NPY_DIRS = {"train": "train_set", "test": "val_set"}
EXPECTED_TRAIN = {"7": 283_901, "8": 287_651}
EXPECTED_TEST = {"7": 3_500, "8": 4_000}

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
AffectNet is distributed by its authors on request (http://mohammadmahoor.com/affectnet/).
Put ONE of the two official releases in the manual directory:
  (a) Manually_Annotated_file_lists/training.csv
      Manually_Annotated_file_lists/validation.csv
          columns subDirectory_filePath,face_x,face_y,face_width,face_height,
          facial_landmarks,expression,valence,arousal
      Manually_Annotated_Images/<subDirectory_filePath>   (e.g. 689/737db2483489148d78.jpg)
  (b) train_set/images/<id>.jpg   train_set/annotations/<id>_exp.npy (+ <id>_lnd.npy)
      val_set/images/<id>.jpg     val_set/annotations/<id>_exp.npy   (+ <id>_lnd.npy)
Codes 8-10 (none, uncertain, no-face) are excluded; config 7 also drops 7 (contempt).
Splits: train = official training set, test = official validation set (500 per class).
"""


def _num_classes(config: str | None) -> int:
    if config not in ("7", "8"):
        raise ValueError(f"affectnet needs config '7' or '8', got {config!r}.")
    return int(config)


def _parse_landmarks(text: str) -> np.ndarray:
    values = [float(v) for v in text.replace(",", ";").split(";") if v.strip()]
    if len(values) != 2 * NUM_LANDMARKS:
        return np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
    return np.asarray(values, np.float32).reshape(NUM_LANDMARKS, 2)


def read_csv(path: Path) -> list[dict]:
    """Rows of a release-(a) CSV as dicts (header optional: the column order is fixed)."""
    rows = base.read_csv_rows(path)
    if rows and rows[0][1][0] == CSV_COLUMNS[0]:
        rows = rows[1:]
    out = []
    for line_number, row in rows:
        if len(row) < 7:
            raise errors.ManualDataFormatError(
                f"{path}:{line_number}: expected columns {CSV_COLUMNS}, got {row}"
            )
        out.append(dict(zip(CSV_COLUMNS, row)))
    return out


def _code(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        return -1


def _npy_code(path: Path) -> int:
    return _code(str(np.load(path, allow_pickle=False)))


class Affectnet(base.ManualBuilder):
    """AffectNet manually annotated subset, 7 or 8 classes."""

    name = "affectnet"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    @staticmethod
    def official_sizes(config=None) -> dict[str, int]:
        """Split sizes on the release-(a) files (the npy release has 3,999 in test for 8)."""
        config = config or "7"
        return {"train": EXPECTED_TRAIN[config], "test": EXPECTED_TEST[config]}

    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name="7", description="7 classes (codes 0-6)."),
        tfds.core.BuilderConfig(name="8", description="8 classes (codes 0-7, + contempt)."),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        names = classes.class_names("affectnet", self.builder_config.name)
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(names)),
                    "file_name": tfds.features.Text(),
                    "landmarks": tfds.features.Tensor(shape=(NUM_LANDMARKS, 2), dtype=np.float32),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://mohammadmahoor.com/affectnet/",
        )

    @classmethod
    def check_manual_dir(cls, manual_dir, config=None) -> dict:
        num_classes = _num_classes(config or "7")
        root = base.manual_root("affectnet", manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS)
        if (root / CSV_DIR).exists() or (root / CSV_IMAGES).exists():
            return cls._check_csv_release(root, num_classes)
        if any((root / d).exists() for d in NPY_DIRS.values()):
            return cls._check_npy_release(root, num_classes)
        base.raise_if_missing(
            "affectnet",
            root,
            [*CSV_FILES.values(), f"{CSV_IMAGES}/", "(or, release b:) train_set/, val_set/"],
            MANUAL_DOWNLOAD_INSTRUCTIONS,
        )
        raise AssertionError("unreachable")

    @classmethod
    def _check_csv_release(cls, root: Path, num_classes: int) -> dict:
        missing = base.missing_paths(root, [*CSV_FILES.values(), CSV_IMAGES])
        base.raise_if_missing("affectnet", root, missing, MANUAL_DOWNLOAD_INSTRUCTIONS)
        items = {}
        for split, rel in CSV_FILES.items():
            rows = [r for r in read_csv(root / rel) if 0 <= _code(r["expression"]) < num_classes]
            items[split] = rows
            missing += base.missing_paths(
                root / CSV_IMAGES, [r["subDirectory_filePath"] for r in rows]
            )
        missing = [f"{CSV_IMAGES}/{m}" for m in missing]
        base.raise_if_missing("affectnet", root, missing, MANUAL_DOWNLOAD_INSTRUCTIONS)
        return {"root": root, "release": "csv", "items": items, "splits": tuple(items)}

    @classmethod
    def _check_npy_release(cls, root: Path, num_classes: int) -> dict:
        required = [f"{d}/{sub}" for d in NPY_DIRS.values() for sub in ("images", "annotations")]
        missing = base.missing_paths(root, required)
        base.raise_if_missing("affectnet", root, missing, MANUAL_DOWNLOAD_INSTRUCTIONS)
        items = {}
        for split, directory in NPY_DIRS.items():
            rows = []
            images = sorted(
                p
                for p in (root / directory / "images").glob("*")
                if base.has_suffix(p, (".jpg", ".jpeg", ".png"))
            )
            if not images:
                missing.append(f"{directory}/images/*.jpg")
            for image in images:
                exp = root / directory / "annotations" / f"{image.stem}_exp.npy"
                if not exp.exists():
                    missing.append(str(exp.relative_to(root)))
                    continue
                code = _npy_code(exp)
                if 0 <= code < num_classes:
                    rows.append({"image": image, "code": code})
            items[split] = rows
        base.raise_if_missing("affectnet", root, missing, MANUAL_DOWNLOAD_INSTRUCTIONS)
        return {"root": root, "release": "npy", "items": items, "splits": tuple(items)}

    def _generate_examples(self, plan, split):
        root = plan["root"]
        for row in plan["items"][split]:
            if plan["release"] == "csv":
                rel = row["subDirectory_filePath"]
                landmarks = _parse_landmarks(row["facial_landmarks"])
                box = None
                try:
                    x, y = float(row["face_x"]), float(row["face_y"])
                    w, h = float(row["face_width"]), float(row["face_height"])
                    if w > 0 and h > 0:
                        box = (x, y, x + w, y + h)
                        landmarks = landmarks - np.array([x, y], np.float32)
                except ValueError:
                    box = None
                image = self._image(root / CSV_IMAGES / rel, crop_box=box)
                code, key = _code(row["expression"]), rel
            else:
                path = row["image"]
                lnd = path.parent.parent / "annotations" / f"{path.stem}_lnd.npy"
                landmarks = np.full((NUM_LANDMARKS, 2), np.nan, np.float32)
                if lnd.exists():
                    values = np.load(lnd, allow_pickle=False).astype(np.float32).reshape(-1)
                    if values.size == 2 * NUM_LANDMARKS:
                        landmarks = values.reshape(NUM_LANDMARKS, 2)
                image = self._image(path)
                code, key = row["code"], f"{path.parent.parent.name}/{path.name}"
            if image is None:
                continue
            yield (
                key,
                {
                    "image": image,
                    "label": code,
                    "file_name": key,
                    "landmarks": landmarks.astype(np.float32),
                },
            )
