"""Writing predictions: the console table, JSON, CSV and annotated images.

Every writer takes `ImagePrediction`s (grefel_jax.inference.results) and reports each input
with a status: `ok` (faces predicted), `no_face` (read fine, no face found) or `error`
(unreadable; the message names the file).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np
from PIL import Image

# Exit status of the prediction commands (checkpoint and export folder alike): every input
# read and predicted (no face found counts as success), some input unreadable (each one
# reported, the others still run), nothing could run (a bad checkpoint or setting).
EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_FATAL = 2

# Width of the numeric columns of the table; the file column adapts to the names.
_TABLE_COLUMNS = (
    ("face", 4),
    ("box x,y,w,h", 19),
    ("class", 11),
    ("prob", 6),
    ("corrected", 11),
    ("prob", 6),
    ("confidence", 10),
)


@contextlib.contextmanager
def open_output(path: str, stdout: TextIO, newline: str | None = None):
    """A text stream to write a report to: `path`, or `stdout` when path is '-'."""
    if path == "-":
        yield stdout
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline=newline) as f:
        yield f


def write_json(path: str, document: dict, stdout: TextIO) -> None:
    """Writes a JSON report (indented, one trailing newline) to `path` ('-': stdout)."""
    with open_output(path, stdout) as f:
        json.dump(document, f, indent=2)
        f.write("\n")


def status(result) -> str:
    """'ok', 'no_face' or 'error'."""
    if result.error is not None:
        return "error"
    return "ok" if result.faces else "no_face"


# --------------------------------------------------------------------------------------------
# Table.
# --------------------------------------------------------------------------------------------


class TableWriter:
    """Prints one aligned row per face (one line per image without faces) as results come.

    Args:
      stream: where to print.
      file_width: width of the file column (longer names overflow, the rest stays aligned).
    """

    def __init__(self, stream: TextIO, file_width: int = 24):
        self.stream = stream
        self.file_width = max(4, file_width)

    def header(self) -> None:
        cells = [f"{'file':<{self.file_width}}"]
        cells += [f"{name:<{width}}" for name, width in _TABLE_COLUMNS]
        self.stream.write("  ".join(cells).rstrip() + "\n")

    def write(self, result) -> None:
        file_cell = f"{result.source:<{self.file_width}}"
        if result.error is not None:
            self.stream.write(f"{file_cell}  {'-':<4}  ERROR: {result.error}\n")
            return
        if not result.faces:
            self.stream.write(f"{file_cell}  {'-':<4}  no face found\n")
            return
        for index, face in enumerate(result.faces):
            values = (
                str(index),
                ",".join(str(v) for v in face.box.as_tuple()),
                face.label,
                f"{face.probability:.3f}",
                face.corrected_label,
                f"{face.corrected_probability:.3f}",
                f"{face.confidence:.3f}",
            )
            cells = [file_cell] + [f"{v:<{width}}" for v, (_, width) in zip(values, _TABLE_COLUMNS)]
            self.stream.write("  ".join(cells).rstrip() + "\n")
        self.stream.flush()


def format_table(results: Sequence[Any]) -> str:
    """The whole table as one string (header + rows)."""
    out = io.StringIO()
    width = max([4, *(len(r.source) for r in results)])
    writer = TableWriter(out, file_width=min(width, 60))
    writer.header()
    for result in results:
        writer.write(result)
    return out.getvalue()


# --------------------------------------------------------------------------------------------
# JSON and CSV.
# --------------------------------------------------------------------------------------------


def _none_or_float(value) -> float | None:
    return None if value is None else float(value)


def face_record(face, class_names: Sequence[str]) -> dict[str, Any]:
    """JSON-ready dict of one FacePrediction."""
    return {
        "box": list(face.box.as_tuple()),
        "detection_score": _none_or_float(face.box.score),
        "crop_box": list(face.crop_box),
        "class": face.label,
        "class_index": face.class_index,
        "probability": face.probability,
        "probabilities": {n: float(p) for n, p in zip(class_names, face.probs)},
        "corrected_class": face.corrected_label,
        "corrected_class_index": face.corrected_index,
        "corrected_probability": face.corrected_probability,
        "corrected_probabilities": {n: float(p) for n, p in zip(class_names, face.corrected_probs)},
        "confidence": face.confidence,
        "anchor_confidence": _none_or_float(face.anchor_confidence),
        "attention_confidence": _none_or_float(face.attention_confidence),
        "aligned": face.aligned,
    }


def image_record(result, class_names: Sequence[str]) -> dict[str, Any]:
    """JSON-ready dict of one ImagePrediction."""
    return {
        "file": result.source,
        "status": status(result),
        "error": result.error,
        "image_size": list(result.image_shape) if result.image_shape else None,
        "faces": [face_record(f, class_names) for f in result.faces],
    }


# The CSV columns of one face, shared by the image and the video CSV (`face_cells`).
FACE_COLUMNS = (
    "x",
    "y",
    "width",
    "height",
    "class",
    "probability",
    "corrected_class",
    "corrected_probability",
    "confidence",
    "anchor_confidence",
    "attention_confidence",
)


def face_cells(face) -> list[Any]:
    """The `FACE_COLUMNS` cells of one FacePrediction (box in pixels, 6-decimal floats)."""
    optional = lambda v: "" if v is None else f"{v:.6f}"
    return [
        *face.box.as_tuple(),
        face.label,
        f"{face.probability:.6f}",
        face.corrected_label,
        f"{face.corrected_probability:.6f}",
        f"{face.confidence:.6f}",
        optional(face.anchor_confidence),
        optional(face.attention_confidence),
    ]


def csv_header(class_names: Sequence[str]) -> list[str]:
    """Columns of the CSV: one row per face, or one per image without faces."""
    return [
        "file",
        "status",
        "face",
        *FACE_COLUMNS,
        *(f"p_{name}" for name in class_names),
        "error",
    ]


def csv_rows(result, class_names: Sequence[str]) -> list[list[Any]]:
    """The CSV rows of one ImagePrediction."""
    blank = [""] * (len(csv_header(class_names)) - 3)
    if not result.faces:
        row = [result.source, status(result), "", *blank]
        row[-1] = result.error or ""
        return [row]
    rows = []
    for index, face in enumerate(result.faces):
        rows.append(
            [
                result.source,
                "ok",
                index,
                *face_cells(face),
                *(f"{p:.6f}" for p in face.probs),
                "",
            ]
        )
    return rows


def write_csv(stream: TextIO, results: Sequence[Any], class_names: Sequence[str]) -> None:
    """Header + rows of every result."""
    writer = csv.writer(stream)
    writer.writerow(csv_header(class_names))
    for result in results:
        writer.writerows(csv_rows(result, class_names))


# --------------------------------------------------------------------------------------------
# Annotated images.
# --------------------------------------------------------------------------------------------

_BOX_COLOR = (0, 220, 0)  # RGB
_TEXT_COLOR = (0, 0, 0)


def annotate(image: np.ndarray, result, texts: Sequence[str] | None = None) -> np.ndarray:
    """A copy of `image (H, W, 3) uint8 RGB` with each face's box and `label prob`.

    `texts` replaces the labels (one per face; video uses `#track smoothed-label prob`).
    """
    canvas = np.ascontiguousarray(image.copy())
    side = min(canvas.shape[:2])
    thickness = max(1, side // 200)
    font_scale = max(0.35, side / 900.0)
    for index, face in enumerate(result.faces):
        x, y, w, h = face.box.as_tuple()
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), _BOX_COLOR, thickness)
        if texts is not None:
            text = texts[index]
        else:
            text = f"{face.label} {face.probability:.2f}"
            if face.corrected_label != face.label:
                text += f" ({face.corrected_label})"
        (tw, th), baseline = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        # Label above the box, or inside it when the box touches the top edge.
        top = y - th - baseline - 2 if y - th - baseline - 2 >= 0 else y
        cv2.rectangle(canvas, (x, top), (x + tw + 2, top + th + baseline + 2), _BOX_COLOR, -1)
        cv2.putText(
            canvas,
            text,
            (x + 1, top + th + 1),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            _TEXT_COLOR,
            1,
            cv2.LINE_AA,
        )
    return canvas


class AnnotationWriter:
    """Saves annotated copies into one folder, never overwriting two inputs' outputs.

    Files keep their name (`photo.jpg` -> `DIR/photo.jpg`); formats other than JPEG/PNG are
    written as PNG; a repeated name gets `_1`, `_2`, ... appended.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._used: set[str] = set()

    def save(self, result) -> Path | None:
        """Writes the annotated image of `result` (kept with keep_images=True); None if none."""
        if result.image is None:
            return None
        name = Path(result.source)
        stem = name.stem if name.suffix else name.name.replace("[", "_").replace("]", "")
        suffix = name.suffix.lower() if name.suffix.lower() in (".jpg", ".jpeg", ".png") else ".png"
        candidate, n = f"{stem}{suffix}", 0
        while candidate in self._used:
            n += 1
            candidate = f"{stem}_{n}{suffix}"
        self._used.add(candidate)
        path = self.directory / candidate
        Image.fromarray(annotate(result.image, result)).save(path)
        return path
