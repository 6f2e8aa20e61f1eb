"""`aff_wild2_expr`: Aff-Wild2 expression track (ABAW), per-frame labels of cropped faces.

Each `<video>.txt` annotation file starts with the header
`Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other` (older tooling: the same
without Other); line i + 1 is frame i's class 0-7 and -1 means "ignore" (skipped). Frame i is
`cropped_aligned/<video>/<%05d>.jpg` (1-indexed), as in the ARBEx loader. Frames whose image
is absent from cropped_aligned (no face found) are skipped and counted.

Splits: train (Train_Set) and validation (Validation_Set); papers report on validation.
Annotation folders `EXPR_Classification_Challenge` (ABAW2-4) and `EXPR_Recognition_Challenge`
(later) are both accepted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from grefel_jax.data import classes
from grefel_jax.data.builders import base

ANNOTATION_DIRS = (
    "annotations/EXPR_Classification_Challenge",
    "annotations/EXPR_Recognition_Challenge",
    "EXPR_Classification_Challenge",
    "EXPR_Recognition_Challenge",
)
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set"}
FRAMES_DIR = "cropped_aligned"
HEADER = tuple(n.capitalize() for n in classes.AFF_WILD2_EXPR)

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Aff-Wild2 is distributed by the ABAW organisers on request (https://ibug.doc.ic.ac.uk/resources/aff-wild2/).
Put in the manual directory:
  annotations/EXPR_Classification_Challenge/Train_Set/<video>.txt
  annotations/EXPR_Classification_Challenge/Validation_Set/<video>.txt
      (or annotations/EXPR_Recognition_Challenge/...; first line
       Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other, then one label per frame,
       -1 = ignore)
  cropped_aligned/<video>/00001.jpg, 00002.jpg, ...   (the cropped & aligned frames release)
Splits: train (Train_Set), validation (Validation_Set).
"""


def parse_annotation(path: Path) -> list[int]:
    """Per-frame labels (index i = frame i + 1) of one annotation file; -1 = ignore."""
    lines = base.read_text_lines(path)
    if not lines:
        raise ValueError(f"{path}: empty annotation file.")
    header = tuple(h.strip() for h in lines[0].split(","))
    if header not in (HEADER, HEADER[:7]):
        raise ValueError(f"{path}: header {lines[0]!r} is not {','.join(HEADER)}.")
    labels = []
    for number, line in enumerate(lines[1:], start=2):
        line = line.strip()
        if not line:
            continue
        try:
            value = int(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: expected an integer label, got {line!r}") from exc
        if not -1 <= value < len(header):
            raise ValueError(f"{path}:{number}: label {value} outside -1..{len(header) - 1}")
        labels.append(value)
    return labels


class AffWild2Expr(base.ManualBuilder):
    """Aff-Wild2 EXPR frames with 8 classes (Other included)."""

    name = "aff_wild2_expr"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.missing_frames = 0

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(classes.AFF_WILD2_EXPR)),
                    "file_name": tfds.features.Text(),
                    "video": tfds.features.Text(),
                    "frame": tfds.features.Scalar(dtype=np.int32),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://ibug.doc.ic.ac.uk/resources/aff-wild2/",
        )

    @classmethod
    def check_manual_dir(cls, manual_dir, config=None) -> dict:
        root = base.manual_root("aff_wild2_expr", manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS)
        annotation_dir = next((root / d for d in ANNOTATION_DIRS if (root / d).is_dir()), None)
        missing = [] if annotation_dir else [f"{ANNOTATION_DIRS[0]}/"]
        if not (root / FRAMES_DIR).is_dir():
            missing.append(f"{FRAMES_DIR}/")
        base.raise_if_missing("aff_wild2_expr", root, missing, MANUAL_DOWNLOAD_INSTRUCTIONS)
        videos = {}
        for split, sub in SPLIT_DIRS.items():
            folder = annotation_dir / sub
            files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
            if not files:
                missing.append(f"{folder.relative_to(root)}/<video>.txt")
            videos[split] = files
            missing += [
                f"{FRAMES_DIR}/{f.stem}/"
                for f in files
                if not (root / FRAMES_DIR / f.stem).is_dir()
            ]
        base.raise_if_missing("aff_wild2_expr", root, missing, MANUAL_DOWNLOAD_INSTRUCTIONS)
        return {"root": root, "videos": videos, "splits": tuple(SPLIT_DIRS)}

    def _generate_examples(self, plan, split):
        frames_root = plan["root"] / FRAMES_DIR
        for annotation in plan["videos"][split]:
            video = annotation.stem
            for frame, label in enumerate(parse_annotation(annotation), start=1):
                if label < 0:
                    continue
                path = frames_root / video / f"{frame:05d}.jpg"
                if not path.exists():
                    self.missing_frames += 1
                    continue
                image = self._image(path)
                if image is None:
                    continue
                key = f"{video}/{frame:05d}.jpg"
                yield (
                    key,
                    {
                        "image": image,
                        "label": label,
                        "file_name": key,
                        "video": video,
                        "frame": frame,
                    },
                )
