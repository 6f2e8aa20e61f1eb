"""Reading and writing video for prediction: OpenCV's `VideoCapture` / `VideoWriter`.

  with VideoReader("clip.mp4") as reader:
      for frames in reader.batches(8):
          for frame in frames:
              frame.index, frame.time_s, frame.image  # (H, W, 3) uint8 RGB

A source is a video file or a camera index (`VideoReader(0)`). OpenCV delivers BGR frames;
they are converted to RGB here, once, because everything downstream (detector, crops,
preprocessing) takes RGB, as for images. Timestamps come from the container's frame rate
(frame index / fps) for files, and from the wall clock for cameras, whose reported frame rate
is often a nominal value unrelated to the frames actually delivered.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

# Suffixes the predict command treats as video (lower case).
VIDEO_SUFFIXES = (".avi", ".mkv", ".mov", ".mp4", ".webm")

# Used when a file does not record its frame rate (OpenCV then reports 0 or NaN).
_FALLBACK_FPS = 25.0


class VideoOpenError(ValueError):
    """A video file or camera that OpenCV cannot open; the message names it."""


def is_video_path(path: str | os.PathLike) -> bool:
    """True for a file name ending in one of `VIDEO_SUFFIXES`."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def videos_in_folders(inputs) -> dict[str, list[str]]:
    """`{folder: [video files under it, recursively, sorted]}` for each directory of `inputs`
    that holds videos (files named explicitly are not listed here)."""
    found = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            videos = sorted(str(p) for p in path.rglob("*") if p.is_file() and is_video_path(p))
            if videos:
                found[str(path)] = videos
    return found


@dataclasses.dataclass
class Frame:
    """One decoded frame.

    Attributes:
      index: position in the source (0-based, counting frames skipped by `every`).
      time_s: seconds since the start of the video (or since the camera was opened).
      image: (H, W, 3) uint8 RGB.
    """

    index: int
    time_s: float
    image: np.ndarray


class VideoReader:
    """Frames of a video file or a camera, in order.

    Args:
      source: a video file path, or a camera index (int, or a string of digits).
      every: keep one frame in `every` (1: all). The others are grabbed but not decoded.
      max_frames: stop after this many kept frames (None: the whole video; a camera then
        runs until it stops delivering frames or the caller stops iterating).

    Raises:
      VideoOpenError: the file does not exist or OpenCV cannot decode it, or the camera
        cannot be opened.
    """

    def __init__(
        self,
        source: str | os.PathLike | int,
        *,
        every: int = 1,
        max_frames: int | None = None,
    ):
        if every < 1:
            raise ValueError(f"every={every} must be >= 1.")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames={max_frames} must be >= 1 (or None for all).")
        self.every = int(every)
        self.max_frames = max_frames
        self.is_camera = isinstance(source, int) or (
            isinstance(source, str) and source.isdigit() and not os.path.exists(source)
        )
        if self.is_camera:
            self.name = f"camera {int(source)}"
            self._capture = _open_quietly(int(source))
            if not self._capture.isOpened():
                raise VideoOpenError(
                    f"--camera {int(source)}: cannot open camera index {int(source)} "
                    "(no such device, in use, or this OpenCV build lacks camera support)."
                )
        else:
            self.name = os.fspath(source)
            if not os.path.isfile(self.name):
                raise VideoOpenError(f"{self.name}: no such video file.")
            self._capture = _open_quietly(self.name)
            if not self._capture.isOpened():
                raise VideoOpenError(f"{self.name}: OpenCV cannot open this video.")
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if np.isfinite(fps) and fps > 0 else _FALLBACK_FPS
        self.width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT))

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Releases the file or camera."""
        self._capture.release()

    def frames(self) -> Iterator[Frame]:
        """Kept frames one by one: `Frame(index, time_s, (H, W, 3) uint8 RGB)`."""
        start = time.monotonic()
        index, kept = 0, 0
        while self.max_frames is None or kept < self.max_frames:
            if index % self.every:
                # grab() advances without decoding: skipped frames cost little.
                if not self._capture.grab():
                    return
                index += 1
                continue
            ok, bgr = self._capture.read()
            if not ok or bgr is None:
                return
            time_s = time.monotonic() - start if self.is_camera else index / self.fps
            yield Frame(index, float(time_s), cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            index += 1
            kept += 1

    def batches(self, batch_frames: int) -> Iterator[list[Frame]]:
        """Kept frames in lists of `batch_frames` (the last one may be shorter)."""
        if batch_frames < 1:
            raise ValueError(f"batch_frames={batch_frames} must be >= 1.")
        batch: list[Frame] = []
        for frame in self.frames():
            batch.append(frame)
            if len(batch) == batch_frames:
                yield batch
                batch = []
        if batch:
            yield batch


def _open_quietly(source: str | int) -> cv2.VideoCapture:
    """`cv2.VideoCapture(source)` without OpenCV's own warnings on stderr for a failed open
    (the caller reports one line instead)."""
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        return cv2.VideoCapture(source)
    finally:
        cv2.utils.logging.setLogLevel(previous)


# FourCC per output suffix (others: MJPG). OpenCV's MJPG ignores the quality property, and
# its 4:2:0 chroma subsampling blurs saturated edges by a few grey levels.
_CODECS = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "FFV1"}


class VideoWriter:
    """Writes RGB frames to a video file, the codec chosen by the suffix (`_CODECS`).

    `.avi` gets Motion-JPEG, which every OpenCV build (headless ones included) writes and
    every player reads; `.mp4` MPEG-4 Part 2; `.mkv` FFV1, lossless (what tests use to know
    the exact pixels of every frame).

    Args:
      path: output file; its folder is created.
      fps: frame rate to record.
      size: `(width, height)` of every frame.

    Raises:
      VideoOpenError: OpenCV cannot write this file.
    """

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.size = (int(size[0]), int(size[1]))
        codec = _CODECS.get(self.path.suffix.lower(), "MJPG")
        self._writer = cv2.VideoWriter(
            str(self.path), cv2.VideoWriter_fourcc(*codec), float(fps), self.size
        )
        if not self._writer.isOpened():
            raise VideoOpenError(f"{self.path}: OpenCV cannot write a {codec} video here.")

    def write(self, image: np.ndarray) -> None:
        """Appends one `(H, W, 3) uint8 RGB` frame of the writer's size."""
        if (image.shape[1], image.shape[0]) != self.size:
            raise ValueError(f"frame of {image.shape[1]}x{image.shape[0]}, expected {self.size}.")
        self._writer.write(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
