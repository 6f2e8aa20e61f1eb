"""`identity_folder`: a user's face-identity data laid out as `<identity>/<image>`.

The layout of CASIA-WebFace, DigiFace-1M and most identity sets: one folder per identity,
no splits. The builder holds out identities (never images of a trained identity) for face
verification: identities are ordered by a hash of their folder name, and the first
`held_out_count(N)` of them (5 %, at least 40: 20 per held-out split, the least that 10
verification folds of 2 identities need) are held out, alternately as `validation` and
`test`; all others are `train`. The split depends only on the identity names, not on file
order or the machine.

Labels share one space: train identities are 0 .. I-1 in name order (the margin loss's
classes), then the validation and the test identities. The builder config is a name of your
choice (`--config casia`), as for `image_folder`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path

import tensorflow_datasets as tfds

from grefel_jax.data.builders import base
from grefel_jax.data.builders.image_folder import IMAGE_SUFFIXES

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the images in the manual directory as <identity>/<image>, one folder per person, e.g.
  0000045/001.jpg   0000045/002.jpg   0000099/001.jpg ...   (CASIA-WebFace, DigiFace-1M)
5 % of the identities (at least 40) are held out for face verification; at least 42
identities with 2 or more images each are needed. Images are converted to RGB; align them the
way the model will see faces (e.g. 112x112 ArcFace crops).
"""
HELD_OUT_FRACTION = 0.05
# 10 verification folds of at least 2 identities, in each of validation and test.
MIN_HELD_OUT = 40
MIN_IDENTITIES = MIN_HELD_OUT + 2


@dataclasses.dataclass
class IdentityFolderConfig(tfds.core.BuilderConfig):
    """A named identity folder; the identity list is read from the folders."""


def held_out_count(num_identities: int) -> int:
    """How many identities are held out (validation + test) of `num_identities`."""
    return max(MIN_HELD_OUT, math.ceil(HELD_OUT_FRACTION * num_identities))


def _hash(name: str) -> str:
    return hashlib.sha1(name.encode("utf-8")).hexdigest()


def split_identities(names: list[str]) -> dict[str, list[str]]:
    """{split: sorted identity names}: held out by name hash (module doc), the rest train."""
    by_hash = sorted(names, key=lambda n: (_hash(n), n))
    held = held_out_count(len(names))
    validation = by_hash[:held:2]
    test = by_hash[1:held:2]
    train = by_hash[held:]
    return {"train": sorted(train), "validation": sorted(validation), "test": sorted(test)}


def scan(root: Path) -> dict[str, list[Path]]:
    """{identity folder name: sorted image paths} of a folder-per-identity tree."""
    identities = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            identities[folder.name] = images
    return identities


class IdentityFolder(base.ManualBuilder):
    """A folder-per-identity dataset of your own, with held-out identities."""

    name = "identity_folder"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [IdentityFolderConfig(name="default")]

    @staticmethod
    def make_config(name: str) -> IdentityFolderConfig:
        return IdentityFolderConfig(name=name, description=f"User identity folder {name!r}.")

    def __init__(self, *, manual_dir=None, **kwargs):
        # TFDS asks for `_info` (the label names) while constructing the builder.
        self._grefel_manual_dir = manual_dir
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        manual = getattr(self, "_grefel_manual_dir", None)
        if manual is None:
            raise ValueError(
                "identity_folder needs the manual dir at construction: pass manual_dir=."
            )
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(
                        names=self.check_manual_dir(manual)["label_names"]
                    ),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
        )

    @classmethod
    def check_manual_dir(cls, manual_dir, config=None) -> dict:
        root = base.manual_root("identity_folder", manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS)
        identities = scan(root)
        usable = [n for n, images in identities.items() if len(images) >= 2]
        if len(usable) < MIN_IDENTITIES:
            base.raise_if_missing(
                "identity_folder",
                root,
                [
                    f"<identity>/<image>: {len(usable)} identity folder(s) with 2 or more "
                    f"images found, at least {MIN_IDENTITIES} needed"
                ],
                MANUAL_DOWNLOAD_INSTRUCTIONS,
            )
        splits = split_identities(sorted(identities))
        label_names = [n for s in ("train", "validation", "test") for n in splits[s]]
        return {
            "root": root,
            "identities": identities,
            "split_identities": splits,
            "label_names": label_names,
            "splits": ("train", "validation", "test"),
        }

    def _generate_examples(self, plan, split):
        index = {name: i for i, name in enumerate(plan["label_names"])}
        for name in plan["split_identities"][split]:
            for path in plan["identities"][name]:
                rel = str(path.relative_to(plan["root"]))
                image = self._image(path)
                if image is not None:
                    yield rel, {"image": image, "label": index[name], "file_name": rel}
