"""Face tracks across video frames: greedy IoU matching and per-track probability smoothing.

  tracker = IoUTracker(iou_threshold=0.3, max_missed=5, half_life_s=0.5)
  for frame in frames:
      matches = tracker.update(frame.time_s, boxes, probs, corrected_probs)
      # matches[i]: track id and smoothed distributions of detection i

Per-frame predictions flicker (a face between two expressions, motion blur, a detector box
that jitters by a few pixels), so each track keeps an exponential moving average of its
probabilities. The average is weighted by elapsed time rather than by frame count, so that the
same half-life means the same thing with `--every N` or a camera that drops frames:
`alpha = 1 - 0.5 ** (dt / half_life)` is the weight of the new observation after `dt`
seconds, so an observation's weight halves every `half_life` seconds.

Matching is deliberately simple (no motion model): faces in a video move little between
frames, so a detection continues the track whose last box overlaps it most, if the IoU is at
least `iou_threshold`. Unmatched detections start new tracks; a track unmatched for more than
`max_missed` consecutive frames ends, so a face missed by the detector for up to `max_missed`
frames keeps its id.

A track gets its id only once one of its boxes looks like a face (`faces.face_like`: not a
few pixels wide, roughly square, not a sliver at the image border, score >= `min_score`);
until then its detections are reported with `track_id=None` and the video report leaves them
out, so a false box that never looks like a face is never a track of its own (issue 29).
Ids count from 0 in order of confirmation and are never reused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from grefel_jax.inference import faces as faces_lib


def iou(a: faces_lib.FaceBox, b: faces_lib.FaceBox) -> float:
    """Intersection over union of two boxes (0 when they do not overlap)."""
    x0, y0 = max(a.x, b.x), max(a.y, b.y)
    x1 = min(a.x + a.width, b.x + b.width)
    y1 = min(a.y + a.height, b.y + b.height)
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = a.area + b.area - inter
    return inter / union if union > 0 else 0.0


def ema_weight(dt: float, half_life: float) -> float:
    """Weight of a new observation `dt` after the previous one: `1 - 0.5 ** (dt / half_life)`.

    A half-life of 0 means no smoothing (weight 1).
    """
    if half_life <= 0:
        return 1.0
    return float(1.0 - 0.5 ** (max(dt, 0.0) / half_life))


@dataclasses.dataclass
class Track:
    """One face followed over frames.

    Attributes:
      track_id: unique within a tracker, from 0 in order of confirmation; None until one of
        the track's boxes looks like a face.
      box: the last matched box.
      last_time_s: time of the last matched frame.
      missed: consecutive frames without a match.
      probs / corrected_probs: (C,) float32, the smoothed primary and corrected distributions.
      hits: frames matched so far.
    """

    track_id: int | None
    box: faces_lib.FaceBox
    last_time_s: float
    probs: np.ndarray
    corrected_probs: np.ndarray
    missed: int = 0
    hits: int = 1


@dataclasses.dataclass
class Match:
    """What `IoUTracker.update` says about one detection (track_id None: not a face yet)."""

    track_id: int | None
    probs: np.ndarray  # (C,) smoothed
    corrected_probs: np.ndarray  # (C,) smoothed


class IoUTracker:
    """Greedy IoU tracker with time-weighted EMA smoothing of each track's probabilities.

    Args:
      iou_threshold: smallest IoU between a track's last box and a detection to match them.
      max_missed: a track survives this many consecutive frames without a match.
      half_life_s: half-life of the smoothing, in seconds (0: no smoothing).
      min_score: a box scored below this does not confirm a track (boxes without a score do;
        default: no score limit, since detectors score on different scales: the SSD's
        threshold already applies, Haar level weights can be any real number).
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        max_missed: int = 5,
        half_life_s: float = 0.5,
        min_score: float = float("-inf"),
    ):
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold={iou_threshold} must be in (0, 1].")
        if max_missed < 0:
            raise ValueError(f"max_missed={max_missed} must be >= 0.")
        if half_life_s < 0:
            raise ValueError(f"half_life={half_life_s} must be >= 0 (0: no smoothing).")
        self.iou_threshold = float(iou_threshold)
        self.max_missed = int(max_missed)
        self.half_life_s = float(half_life_s)
        self.min_score = float(min_score)
        self.tracks: list[Track] = []
        self._next_id = 0

    def update(
        self,
        time_s: float,
        boxes: Sequence[faces_lib.FaceBox],
        probs: np.ndarray,
        corrected_probs: np.ndarray,
        image_shape: tuple[int, ...] | None = None,
    ) -> list[Match]:
        """Matches one frame's detections to the tracks and smooths their probabilities.

        Args:
          time_s: the frame's time.
          boxes: N detections (N may be 0: a frame without a face ages every track).
          probs / corrected_probs: (N, C) the model's distributions for them.
          image_shape: `(H, W, ...)` of the frame, for the border test of `face_like`
            (None: not tested).

        Returns:
          N Matches, in the order of `boxes`.
        """
        probs = _rows(probs, len(boxes))
        corrected_probs = _rows(corrected_probs, len(boxes))
        pairs = sorted(
            (
                (iou(track.box, box), t, d)
                for t, track in enumerate(self.tracks)
                for d, box in enumerate(boxes)
            ),
            key=lambda p: (-p[0], p[1], p[2]),
        )
        track_of: dict[int, int] = {}
        used_tracks: set[int] = set()
        for overlap, t, d in pairs:
            if overlap < self.iou_threshold:
                break
            if t in used_tracks or d in track_of:
                continue
            track_of[d] = t
            used_tracks.add(t)

        matches = []
        for d, box in enumerate(boxes):
            if d in track_of:
                track = self.tracks[track_of[d]]
                alpha = ema_weight(time_s - track.last_time_s, self.half_life_s)
                track.probs = (1 - alpha) * track.probs + alpha * probs[d]
                track.corrected_probs = (
                    1 - alpha
                ) * track.corrected_probs + alpha * corrected_probs[d]
                track.box, track.last_time_s = box, time_s
                track.missed = 0
                track.hits += 1
            else:
                track = Track(None, box, time_s, probs[d].copy(), corrected_probs[d].copy())
                self.tracks.append(track)
                used_tracks.add(len(self.tracks) - 1)
            if track.track_id is None and (
                faces_lib.face_like(box, image_shape, self.min_score) is None
            ):
                track.track_id = self._next_id
                self._next_id += 1
            matches.append(Match(track.track_id, track.probs.copy(), track.corrected_probs.copy()))

        for t, track in enumerate(self.tracks):
            if t not in used_tracks:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_missed]
        return matches


def _rows(values, count: int) -> np.ndarray:
    """`values` as (count, C) float32; (0, C) or (0, 0) for a frame without detections
    (numpy cannot infer the -1 of `reshape(0, -1)`)."""
    values = np.asarray(values, np.float32)
    if count == 0:
        return values.reshape(0, values.shape[-1] if values.ndim == 2 else 0)
    return values.reshape(count, -1)
