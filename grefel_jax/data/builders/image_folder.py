"""`image_folder`: a user's own data laid out as `<split>/<class>/<image>`.

Class names are the sorted class-folder names over all splits (torchvision ImageFolder order),
so a folder missing from one split does not shift the indices of the others. The builder
config is a name of your choice (`--config mydata`), so several folders can be prepared side
by side under data_dir/image_folder/<name>/.

With an `aligner` (`prepare --align`, `grefel_jax.prepare.align_folder`) every image is stored as
its aligned face crop instead (or what prediction falls back to), under the config
`<name>_aligned`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import tensorflow_datasets as tfds

from grefel_jax.data.builders import base

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put your images in the manual directory as <split>/<class>/<image>, e.g.
  train/happy/0001.jpg   train/sad/0002.png   test/happy/0100.jpg ...
Splits are the top-level folders (train, test, validation, ...); classes are the sorted
class-folder names (the same for every split). Images are converted to RGB.
"""


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
    """A named user dataset; class names are filled in from the folders."""

    class_names: tuple[str, ...] = ()


def scan(root: Path) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, str]]]]:
    """(sorted class names, {split: [(image path, class name)]}) of a class-per-folder tree."""
    splits = {}
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        items = []
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    items.append((path, class_dir.name))
        if items:
            splits[split_dir.name] = items
    names = tuple(sorted({name for items in splits.values() for _, name in items}))
    return names, splits


class ImageFolder(base.ManualBuilder):
    """A class-per-folder dataset of your own."""

    name = "image_folder"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [ImageFolderConfig(name="default")]

    @staticmethod
    def make_config(name: str) -> ImageFolderConfig:
        return ImageFolderConfig(name=name, description=f"User image folder {name!r}.")

    def _info(self) -> tfds.core.DatasetInfo:
        names = self._class_names()
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(names)),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _class_names(self) -> tuple[str, ...]:
        manual = getattr(self, "_grefel_manual_dir", None)
        if manual is None:
            raise ValueError("image_folder needs the manual dir at construction: pass manual_dir=.")
        return self.check_manual_dir(manual)["class_names"]

    def __init__(self, *, manual_dir=None, aligner=None, **kwargs):
        # The class names are read from the folders, and TFDS asks for `_info` while
        # constructing the builder, so the folder must be known before `super().__init__`.
        self._grefel_manual_dir = manual_dir
        # `align_folder.FolderAligner`: (H, W, 3) RGB, split, file name -> the crop to store.
        self.aligner = aligner
        super().__init__(**kwargs)

    @classmethod
    def check_manual_dir(cls, manual_dir, config=None) -> dict:
        root = base.manual_root("image_folder", manual_dir, MANUAL_DOWNLOAD_INSTRUCTIONS)
        names, splits = scan(root)
        if not splits:
            base.raise_if_missing(
                "image_folder",
                root,
                ["<split>/<class>/<image> (no images found)"],
                MANUAL_DOWNLOAD_INSTRUCTIONS,
            )
        return {"root": root, "class_names": names, "items": splits, "splits": tuple(splits)}

    def _generate_examples(self, plan, split):
        index = {name: i for i, name in enumerate(plan["class_names"])}
        for path, class_name in plan["items"][split]:
            rel = str(path.relative_to(plan["root"]))
            image = self._image(path) if self.aligner is None else self._aligned(path, split, rel)
            if image is not None:
                yield rel, {"image": image, "label": index[class_name], "file_name": rel}

    def _aligned(self, path, split: str, rel: str) -> bytes | None:
        """The aligned crop (or the fallback) of one image, encoded; None if skipped."""
        loaded = base.load_rgb_array(path, skip_corrupt=self.skip_corrupt, corrupt=self.corrupt)
        if loaded is None:
            return None
        rgb, image_format = loaded
        crop = self.aligner(rgb, split, rel)
        # JPEG sources stay JPEG (compact), as the face-box crops of the other builders.
        return base.encode_jpeg(crop) if image_format == "JPEG" else base.encode_png(crop)
