"""Writes a few synthetic faces that are in no split, for trying the prediction command.

    python -m grefel_jax.data.samples --out runs/demo/samples/faces [--per_class 1] [--size 96]

File names carry the true class (`fear_0.png`), so a prediction can be checked by eye. The
faces use seed 1; the dataset splits are drawn from seed 0, so none of these was trained on.
"""

from __future__ import annotations

from pathlib import Path

import PIL.Image
from absl import app, flags

from grefel_jax.data import synthetic_faces

_SAMPLES_SEED = 1  # the builder's splits use seed 0


def write_samples(out_dir: str | Path, per_class: int = 1, image_size: int = 96) -> list[Path]:
    """Renders `per_class` faces of every class into `out_dir` as PNG; returns their paths.

    Each image is `(image_size, image_size, 3)` uint8 RGB, named `<class>_<i>.png`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for label, name in enumerate(synthetic_faces.CLASS_NAMES):
        for i in range(per_class):
            face = synthetic_faces.render_face((_SAMPLES_SEED, label, i), label, image_size)
            path = out / f"{name}_{i}.png"
            PIL.Image.fromarray(face["image"]).save(path)
            paths.append(path)
    return paths


def main(argv):
    del argv
    flags_ = flags.FLAGS
    paths = write_samples(flags_.out, flags_.per_class, flags_.size)
    print(f"Wrote {len(paths)} faces to {flags_.out}")


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "Folder to write the PNG faces into.", required=True)
    flags.DEFINE_integer("per_class", 1, "Faces per class.")
    flags.DEFINE_integer("size", 96, "Image side in pixels.")
    from grefel_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
