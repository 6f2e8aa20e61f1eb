"""`prepare --align`: a user's unaligned image folder stored as aligned face crops (issue 10).

Each image goes through the very steps of `predict --align` (`inference.align.
align_best_face`): detect the surest face (highest detector score, then the largest), predict
its points with the landmark network on the square crop, warp it by a similarity onto the
five-point template into an S x S crop, and check with the detector that the warped image
shows a face where the template puts it. What prediction falls back to is stored instead,
and counted:

- 'fallback_crop': the landmarks are implausible (`align.implausibility`) or the detector
  sees no face where they put it (`align.not_a_face_there`): the square crop around the
  detected box (`--margin`), unresized; the reason of each is in ALIGNMENT_FILE;
- 'no_face': the detector found nothing: the whole image.

The aligned preparation is the builder config `<config>_aligned` (ALIGNED_SUFFIX), next to
the unaligned `<config>`, so neither overwrites the other; its folder holds ALIGNMENT_FILE
with the settings and the counts (docs/landmarks.md, "Alignment in prepare").
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from grefel_jax.data import errors
from grefel_jax.data.builders import ALIGNED_SUFFIX

ALIGNMENT_FILE = "alignment.json"
STATUSES = ("aligned", "fallback_crop", "no_face")
DEFAULT_SIZE = 224  # the full models' input: aligned crops need no upsampling there
MIN_SIZE = 16


class AlignOptionError(errors.DataError, ValueError):
    """A bad `prepare --align` option; the one-line message names the flag."""


@dataclasses.dataclass
class FolderAligner:
    """Aligns the images of one preparation and counts what happened to each.

    Attributes:
      detector: anything with `detect(image) -> [FaceBox]`, surest first (also checks each
        aligned face).
      landmarks: anything with `layout` and `predict_points(crops) -> (K, N, 2)` crop pixels.
      template: a name of `inference.align.TEMPLATES`.
      size: S, the side of the aligned crops.
      margin: square-crop context around the box, fraction of its side.
      settings: extra facts written to ALIGNMENT_FILE (landmark checkpoint, detector name).
      counts: {split: Counter(status)}; fallbacks: {status: [file names]} (not 'aligned');
      reasons: {file name: why it fell back to the square crop}.
    """

    detector: Any
    landmarks: Any
    template: str = "arcface"
    size: int = DEFAULT_SIZE
    margin: float = 0.2
    settings: dict = dataclasses.field(default_factory=dict)
    counts: dict = dataclasses.field(default_factory=dict)
    fallbacks: dict = dataclasses.field(default_factory=dict)
    reasons: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        from grefel_jax.inference import align as align_lib

        self._template = align_lib.template_for(self.template)

    def __call__(self, rgb: np.ndarray, split: str, file_name: str) -> np.ndarray:
        """(H, W, 3) uint8 RGB -> the crop to store (see the module doc), counted."""
        from grefel_jax.inference import align as align_lib

        crop, status, reason = align_lib.align_best_face(
            rgb, self.detector, self.landmarks, self._template, self.size, self.margin
        )
        self.counts.setdefault(split, collections.Counter())[status] += 1
        if status != "aligned":
            self.fallbacks.setdefault(status, []).append(file_name)
        if reason:
            self.reasons[file_name] = reason
        return crop

    def totals(self) -> dict[str, int]:
        """{status: count} over all splits (every status present, zeros included)."""
        total = collections.Counter()
        for counter in self.counts.values():
            total.update(counter)
        return {s: int(total[s]) for s in STATUSES}

    def record(self) -> dict:
        """The content of ALIGNMENT_FILE."""
        return {
            "template": self.template,
            "size": int(self.size),
            "margin": float(self.margin),
            **self.settings,
            "counts": self.totals(),
            "counts_by_split": {
                split: {s: int(c[s]) for s in STATUSES} for split, c in sorted(self.counts.items())
            },
            "fallback_files": {s: sorted(self.fallbacks.get(s, [])) for s in STATUSES[1:]},
            "fallback_reasons": dict(sorted(self.reasons.items())),
        }


def summary_line(counts: dict[str, int]) -> str:
    """One line: 'Alignment: A aligned, F fallback-crop, N no-face (of T images).'"""
    total = sum(counts.values())
    return (
        f"Alignment: {counts['aligned']} aligned, {counts['fallback_crop']} fallback-crop "
        f"(landmarks implausible or not on a face), {counts['no_face']} no-face "
        f"(of {total} images)."
    )


def aligned_config_name(config: str) -> str:
    """The builder config of the aligned preparation of image folder `config`."""
    return config + ALIGNED_SUFFIX


def check_config_name(config: str | None, align: bool) -> None:
    """`--config NAME_aligned` is reserved for the aligned preparation of `NAME`."""
    if not align and config and config.endswith(ALIGNED_SUFFIX):
        raise AlignOptionError(
            f"--config={config}: names ending in {ALIGNED_SUFFIX!r} are what --align writes; "
            f"pass --config {config[: -len(ALIGNED_SUFFIX)]} --align (or another name)."
        )


def check_existing(directory: Path | None, aligner: FolderAligner, overwrite: bool) -> None:
    """Refuses to reuse an aligned preparation made with other settings (without --overwrite)."""
    if directory is None or overwrite:
        return
    path = Path(directory) / ALIGNMENT_FILE
    if not path.is_file():
        return
    before = json.loads(path.read_text())
    keys = ("template", "size", "margin", "landmarks", "detector")
    now = {k: v for k, v in aligner.record().items() if k in keys}
    changed = [k for k in keys if k in now and before.get(k) != now[k]]
    if changed:
        what = ", ".join(f"{k} {before.get(k)!r} -> {now[k]!r}" for k in changed)
        raise AlignOptionError(
            f"{directory} was aligned with other settings ({what}): pass --overwrite to "
            "rebuild it, or another --config."
        )


def write_record(directory: Path, aligner: FolderAligner) -> Path:
    """Writes ALIGNMENT_FILE into the prepared folder; returns its path."""
    path = Path(directory) / ALIGNMENT_FILE
    path.write_text(json.dumps(aligner.record(), indent=2) + "\n")
    return path


def from_flags(
    dataset: str,
    *,
    align: bool,
    landmarks: str | None = None,
    template: str = "arcface",
    detector: str = "ssd",
    size: int = DEFAULT_SIZE,
    margin: float = 0.2,
) -> FolderAligner | None:
    """The FolderAligner the `prepare` flags ask for (None without --align).

    Raises:
      AlignOptionError: one line naming the flag (no --landmarks, a missing or unreadable
        landmark checkpoint, a bad template / detector / size / margin, another dataset).
    """
    if not align:
        if landmarks:
            raise AlignOptionError("--landmarks is only used with --align.")
        return None
    if dataset != "image_folder":
        raise AlignOptionError(
            f"--align prepares your own image folders (--dataset image_folder), not {dataset}: "
            "the official releases ship their own crops."
        )
    if not landmarks:
        raise AlignOptionError(
            "--align needs --landmarks CKPT (a landmark pretraining workdir, python -m "
            "grefel_jax.landmarks.pretrain, or a converted MobileFaceNet checkpoint)."
        )
    if not os.path.exists(os.path.expanduser(landmarks)):
        raise AlignOptionError(f"--landmarks={landmarks}: no such file or directory.")
    if size < MIN_SIZE:
        raise AlignOptionError(f"--align_size={size} must be >= {MIN_SIZE} pixels.")
    if margin < 0:
        raise AlignOptionError(f"--margin={margin} must be >= 0.")
    from grefel_jax.inference import align as align_lib
    from grefel_jax.inference import faces as faces_lib

    if template not in align_lib.TEMPLATES:
        raise AlignOptionError(
            f"--align_template={template!r}: use one of {sorted(align_lib.TEMPLATES)}."
        )
    try:
        named = faces_lib.make_detector(detector)
        faces_lib.load_detector(named)
    except (ValueError, FileNotFoundError) as e:
        raise AlignOptionError(str(e)) from None
    from grefel_jax.checkpoints import CheckpointError
    from grefel_jax.inference.landmark_points import LandmarkModel

    path = os.path.abspath(os.path.expanduser(landmarks))
    try:
        # One image at a time: batch 1 wastes no padded forward passes.
        model = LandmarkModel.from_checkpoint(path, batch_size=1)
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        first = first.removeprefix(f"{path}: ")  # the loaders name the path themselves
        raise AlignOptionError(f"--landmarks={landmarks}: {first}") from None
    return FolderAligner(
        named,
        model,
        template=template,
        size=size,
        margin=margin,
        settings={"landmarks": path, "detector": detector},
    )
