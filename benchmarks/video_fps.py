r"""Frames per second of video prediction (`predict` on a video) at 640x480, on CPU.

  python benchmarks/video_fps.py --frames 96 --batch_frames 8 \
      --output benchmarks/results/video_fps.json

The model is the demo config's (`configs/demo.py`: `tiny` backbone at 64x64, full grefel
head), randomly initialised (speed does not depend on the weights). The video is generated:
scikit-image's astronaut photo (one real face, which the Haar cascade finds) drifting across
a 640x480 frame, written as Motion-JPEG. Timed over the whole clip, after one warm-up pass
that compiles the model: the full video path (`inference.video_predict.predict_video`:
decode, Haar detection, crop, preprocessing, jitted model in padded batches, tracking and
smoothing), and, separately, decoding alone and detection alone, to show where the time goes.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import tempfile
import time

import cv2
import jax
import numpy as np
import skimage.data
from absl import app, flags
from demo_checkpoint import random_demo_checkpoint

from grefel_jax.inference import faces as faces_lib
from grefel_jax.inference import video as video_lib
from grefel_jax.inference import video_predict
from grefel_jax.inference.predictor import Predictor
from grefel_jax.inference.tracking import IoUTracker

FLAGS = flags.FLAGS
flags.DEFINE_integer("frames", 96, "Frames in the generated clip.")
flags.DEFINE_integer("batch_frames", 8, "Frames classified together.")
flags.DEFINE_integer("batch_size", 8, "Faces per jitted forward pass.")
flags.DEFINE_string("output", None, "Also write the results as JSON here.")
flags.DEFINE_string(
    "detector", "haar", "Face detector (faces.make_detector): the README numbers are haar."
)

WIDTH, HEIGHT = 640, 480


def _write_clip(path: pathlib.Path, frames: int) -> None:
    face = cv2.resize(skimage.data.astronaut(), (300, 300), interpolation=cv2.INTER_AREA)
    with video_lib.VideoWriter(path, 25.0, (WIDTH, HEIGHT)) as writer:
        for t in range(frames):
            frame = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
            x, y = 40 + (3 * t) % 280, 60 + (t % 20)
            frame[y : y + 300, x : x + 300] = face
            writer.write(frame)


def main(argv):
    del argv
    work = pathlib.Path(tempfile.mkdtemp(prefix="video_fps_"))
    random_demo_checkpoint(work / "checkpoint")
    predictor = Predictor.from_checkpoint(
        work / "checkpoint",
        batch_size=FLAGS.batch_size,
        detector=faces_lib.make_detector(FLAGS.detector),
    )
    clip = work / "clip.avi"
    _write_clip(clip, FLAGS.frames)

    def full_pass() -> tuple[int, int]:
        frames = faces = 0
        with video_lib.VideoReader(clip) as reader:
            for _, found in video_predict.predict_video(
                predictor, reader, IoUTracker(), batch_frames=FLAGS.batch_frames
            ):
                frames += 1
                faces += len(found)
        return frames, faces

    full_pass()  # Compiles the model.
    start = time.perf_counter()
    frames, faces = full_pass()
    full_s = time.perf_counter() - start

    with video_lib.VideoReader(clip) as reader:
        start = time.perf_counter()
        decoded = list(reader.frames())
        decode_s = time.perf_counter() - start
    start = time.perf_counter()
    for frame in decoded:
        predictor.detector.detect(frame.image)
    detect_s = time.perf_counter() - start

    result = {
        "model": "configs/demo.py (tiny, 64x64, grefel head), random init",
        "detector": FLAGS.detector,
        "video": (
            f"{frames} frames {WIDTH}x{HEIGHT} Motion-JPEG, one real face drawn per frame "
            f"(faces_found counts {FLAGS.detector} boxes, false positives included)"
        ),
        "cpu_pressure_after": pathlib.Path("/proc/pressure/cpu").read_text().strip(),
        "batch_frames": FLAGS.batch_frames,
        "batch_size": FLAGS.batch_size,
        "faces_found": faces,
        "full_fps": frames / full_s,
        "decode_only_fps": len(decoded) / decode_s,
        "detect_only_fps": len(decoded) / detect_s,
        "host": {"processor": platform.processor(), "cpus": os.cpu_count()},
        "jax": jax.__version__,
        "opencv": cv2.__version__,
        "device": str(jax.devices()[0]),
    }
    print(
        f"{frames} frames {WIDTH}x{HEIGHT}, {faces} faces: full path "
        f"{result['full_fps']:.1f} frames/s (decode alone {result['decode_only_fps']:.0f}, "
        f"{FLAGS.detector} detection alone {result['detect_only_fps']:.1f} frames/s)"
    )
    if FLAGS.output:
        path = pathlib.Path(FLAGS.output)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
