"""Writers of tiny datasets in each official layout, for the data tests (no real data needed)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from grefel_jax.data import classes


def write_image(path: Path, value: int, size=(12, 12), mode="RGB", fmt=None) -> Path:
    """A small solid image whose pixel value encodes `value` (to trace files end to end)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(np.full(shape, value % 256, np.uint8), mode=mode).save(path, format=fmt)
    return path


def write_raf_db(root: Path, per_class: dict[str, int]) -> dict[tuple[str, str], int]:
    """basic/EmoLabel/list_patition_label.txt + basic/Image/aligned/*_aligned.jpg.

    Args:
      per_class: {'train': n, 'test': m} images per class and split.

    Returns:
      {(split, listed name): label index}.
    """
    basic = root / "basic"
    lines, truth = [], {}
    for split, n in per_class.items():
        counter = 0
        for label in range(7):
            for _ in range(n):
                counter += 1
                name = f"{split}_{counter:05d}.jpg"
                lines.append(f"{name} {label + 1}")
                truth[(split, name)] = label
                write_image(
                    basic / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"), label * 30
                )
    label_file = basic / "EmoLabel" / "list_patition_label.txt"
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text("\n".join(lines) + "\n")
    return truth


# FER+ vote rows (neutral, happiness, surprise, sadness, anger, disgust, fear, contempt,
# unknown, NF) with the label the majority protocol must give (-1 = dropped) and why.
FERPLUS_CASES = (
    ((10, 0, 0, 0, 0, 0, 0, 0, 0, 0), 0, "unanimous neutral"),
    ((0, 6, 2, 0, 0, 0, 0, 0, 2, 0), 1, "clear majority happiness"),
    ((4, 1, 1, 1, 1, 1, 1, 0, 0, 0), 0, "majority only after zeroing single votes"),
    ((0, 0, 0, 0, 0, 2, 0, 7, 1, 0), 7, "contempt majority"),
    ((3, 3, 2, 2, 0, 0, 0, 0, 0, 0), -1, "no majority"),
    ((4, 4, 0, 0, 0, 0, 0, 0, 0, 0), -1, "exactly half is not a majority"),
    ((1, 0, 0, 0, 0, 0, 0, 0, 8, 1), -1, "argmax unknown"),
    ((0, 0, 0, 0, 0, 0, 0, 0, 0, 10), -1, "argmax NF (not a face)"),
    ((1, 1, 1, 1, 1, 1, 1, 1, 1, 1), -1, "all single votes removed"),
    ((0, 0, 0, 2, 0, 0, 6, 0, 0, 2), 6, "fear majority 6 > 0.5 * 10"),
    ((0, 0, 0, 2, 0, 0, 5, 0, 0, 3), -1, "5 of 10 is not > half"),
)
# Rows whose image name is empty are dropped even with a clear majority.
FERPLUS_EMPTY_NAME_VOTES = (0, 10, 0, 0, 0, 0, 0, 0, 0, 0)


def write_ferplus(root: Path) -> dict[str, list[tuple[str, int]]]:
    """fer2013.csv + fer2013new.csv: every FERPLUS_CASES row in every split, plus an
    empty-name row per split and, as in the real release, a second Training row that repeats
    an image name (other pixels, other votes). fer2013new.csv is written as spreadsheet tools
    save it: UTF-8 BOM, CRLF line ends, blanks after the commas.
    Returns {split: [(image name, expected label)]} of kept rows, in file order."""
    root.mkdir(parents=True, exist_ok=True)
    usages = {"Training": "train", "PublicTest": "validation", "PrivateTest": "test"}
    rng = np.random.default_rng(0)
    pixel_rows, vote_rows = [], []
    expected = {s: [] for s in usages.values()}
    index = 0
    for usage, split in usages.items():
        for votes, label, _why in (*FERPLUS_CASES, (FERPLUS_EMPTY_NAME_VOTES, -1, "empty")):
            name = "" if _why == "empty" else f"fer{index:07d}.png"
            pixels = " ".join(map(str, rng.integers(0, 256, 48 * 48)))
            pixel_rows.append({"emotion": "0", "pixels": pixels, "Usage": usage})
            vote_rows.append(
                {
                    "Usage": usage,
                    "Image name": name,
                    **{c: str(v) for c, v in zip(_VOTE_COLUMNS, votes)},
                }
            )
            if label >= 0 and name:
                expected[split].append((name, label))
            index += 1
        if split == "train":  # the repeated name, with a clear `surprise` majority
            pixel_rows.append({"emotion": "0", "pixels": pixels, "Usage": usage})
            votes = (0, 0, 8, 0, 0, 0, 0, 0, 1, 1)
            vote_rows.append(
                {
                    "Usage": usage,
                    "Image name": "fer0000001.png",
                    **{c: str(v) for c, v in zip(_VOTE_COLUMNS, votes)},
                }
            )
            expected[split].append(("fer0000001.png", 2))
    with open(root / "fer2013.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["emotion", "pixels", "Usage"])
        writer.writeheader()
        writer.writerows(pixel_rows)
    with open(root / "fer2013new.csv", "w", newline="", encoding="utf-8-sig") as f:
        writer = csv.DictWriter(
            f, fieldnames=["Usage", "Image name", *_VOTE_COLUMNS], lineterminator="\r\n"
        )
        writer.writeheader()
        writer.writerows(
            {k: f" {v}" if k != "Usage" else v for k, v in r.items()} for r in vote_rows
        )
    return expected


_VOTE_COLUMNS = (*classes.FERPLUS, "unknown", "NF")


def write_affectnet_csv(root: Path, per_code: int = 2) -> dict[str, list[int]]:
    """Release (a): CSV lists (codes 0..10, per_code rows each) + full-size images.

    Returns {split: [code of every row]} (including codes 8-10 that must be excluded).
    """
    codes = {}
    header = (
        "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,"
        "expression,valence,arousal"
    )
    for split, file in (("train", "training.csv"), ("test", "validation.csv")):
        lines, split_codes = [header], []
        for code in range(11):
            for k in range(per_code):
                rel = f"{code + 1}/{split}_{code}_{k}.jpg"
                write_image(root / "Manually_Annotated_Images" / rel, code * 20, size=(40, 30))
                landmarks = ";".join(f"{10 + i % 20}.0;{5 + i % 15}.0" for i in range(68))
                lines.append(f"{rel},4,2,20,16,{landmarks},{code},0.1,-0.2")
                split_codes.append(code)
        path = root / "Manually_Annotated_file_lists" / file
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        codes[split] = split_codes
    return codes


def write_affectnet_npy(root: Path, per_code: int = 2) -> dict[str, list[int]]:
    """Release (b): train_set/val_set images + annotations/<id>_{exp,lnd}.npy."""
    codes = {}
    for split, directory in (("train", "train_set"), ("test", "val_set")):
        split_codes = []
        (root / directory / "annotations").mkdir(parents=True, exist_ok=True)
        for code in range(11):
            for k in range(per_code):
                stem = f"{code * 100 + k}"
                write_image(root / directory / "images" / f"{stem}.jpg", code * 20)
                np.save(root / directory / "annotations" / f"{stem}_exp.npy", np.array(str(code)))
                np.save(
                    root / directory / "annotations" / f"{stem}_lnd.npy",
                    np.arange(136, dtype=np.float64),
                )
                split_codes.append(code)
        codes[split] = split_codes
    return codes


def write_ferg_db(root: Path, per_folder: int = 1) -> int:
    """FERG_DB_256/<char>/<char>_<expr>/*.png; returns the number of images."""
    from grefel_jax.data.builders.ferg_db import CHARACTERS

    n = 0
    for character in CHARACTERS:
        for label, expression in enumerate(classes.FERG_DB):
            for k in range(per_folder):
                write_image(
                    root
                    / "FERG_DB_256"
                    / character
                    / f"{character}_{expression}"
                    / f"{character}_{expression}_{k}.png",
                    label * 30,
                )
                n += 1
    return n


def write_jaffe(root: Path, subjects=("KA", "KL", "UY")) -> int:
    """Grayscale TIFFs named like KA.AN1.39.tiff, one per subject and code."""
    n = 0
    for s_index, subject in enumerate(subjects):
        for label, code in enumerate(classes.JAFFE_CODES):
            write_image(
                root / f"{subject}.{code}1.{s_index * 10 + label}.tiff",
                label * 30,
                mode="L",
                fmt="TIFF",
            )
            n += 1
    return n


def write_aff_wild2(root: Path, videos: dict[str, list[int]], missing_frames=()) -> None:
    """annotations/EXPR_Classification_Challenge/{Train,Validation}_Set/<video>.txt + frames.

    Args:
      videos: {'train/<video>' or 'validation/<video>': per-frame labels (-1 = ignore)}.
      missing_frames: '<video>/<frame>' entries whose jpg is not written.
    """
    header = "Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other"
    for key, labels in videos.items():
        split, video = key.split("/")
        sub = {"train": "Train_Set", "validation": "Validation_Set"}[split]
        path = root / "annotations" / "EXPR_Classification_Challenge" / sub / f"{video}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(header + "\n" + "\n".join(map(str, labels)) + "\n")
        for frame, label in enumerate(labels, start=1):
            if f"{video}/{frame}" not in missing_frames:
                write_image(root / "cropped_aligned" / video / f"{frame:05d}.jpg", max(label, 0))
