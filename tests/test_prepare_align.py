"""`prepare --align` (issue 10): an image folder of rotated rendered faces is stored aligned,
fallbacks are stored as prediction keeps them and counted, and bad flags are one line.

Stand-ins replace the detector and the landmark network (as in tests/test_align.py): the
detector returns one fixed box, the landmark "network" answers each square crop with the
true points of the face it shows (in crop pixels, as LandmarkModel does).
"""

from __future__ import annotations

import hashlib
import json

import cv2
import numpy as np
import pytest
from face_checks import dark_centroid
from PIL import Image

from grefel_jax.data import errors, source
from grefel_jax.data import landmark_layouts as points_lib
from grefel_jax.data import synthetic_faces as faces_lib
from grefel_jax.inference import FaceBox, align, crop_box
from grefel_jax.prepare import align_folder
from grefel_jax.prepare import build as prepare

LAYOUT = points_lib.SYNTHETIC_FACES
RENDER = 256  # a pupil ~5 px wide, so it can be found in the stored crop
SIZE = 160
BOX = FaceBox(40, 40, RENDER - 80, RENDER - 80)
MARGIN = 0.2


def _rotated_face(seed: int, degrees: float = 20.0):
    sample = faces_lib.render_face(seed, faces_lib.CLASS_NAMES.index("neutral"), RENDER)
    h, w = sample["image"].shape[:2]
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), degrees, 1.0)
    image = cv2.warpAffine(sample["image"], matrix, (w, h), borderMode=cv2.BORDER_REPLICATE)
    return image, align.apply_affine(matrix, sample["landmarks"])


def _key(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


class _Detector:
    """One fixed box on every image that is not a flat colour."""

    def detect(self, image):
        return [] if image.std() < 1.0 else [BOX]


class _Landmarks:
    """The true points of known crops (crop pixels); collapsed points for any other crop."""

    layout = LAYOUT

    def __init__(self):
        self.points = {}

    def add(self, image, image_points):
        x0, y0, x1, y1 = crop_box(BOX, image.shape, MARGIN)
        self.points[_key(image[y0:y1, x0:x1])] = np.asarray(image_points) - (x0, y0)

    def predict_points(self, crops):
        # Unknown crops: every point at the centre, as an untrained network answers.
        centre = np.full((LAYOUT.num_points, 2), crops[0].shape[0] / 2)
        return np.stack([self.points.get(_key(c), centre) for c in crops])


def _stored(data_dir, config, split):
    cfg = {"name": "image_folder", "builder_config": config, "data_dir": str(data_dir)}
    import ml_collections

    ds = source.data_source(ml_collections.ConfigDict(cfg), split)
    examples = [ds[i] for i in range(len(ds))]
    return {
        e["file_name"].decode(): np.asarray(Image.open(_bytes_io(e["image"]))) for e in examples
    }


def _bytes_io(value):
    import io

    if isinstance(value, np.ndarray):  # TFDS may already decode the image feature
        buffer = io.BytesIO()
        Image.fromarray(value).save(buffer, format="PNG")
        value = buffer.getvalue()
    return io.BytesIO(value)


def test_prepare_align_stores_aligned_faces_and_counts_the_fallbacks(tmp_path, capsys):
    root = tmp_path / "mine"
    landmarks = _Landmarks()
    truth = {}
    # seed 3: lid lines are not pupil-dark (tests/test_align.py) -> the pupil check.
    for rel, seed, known in [
        ("train/neutral/a.png", 3, True),
        ("train/happy/b.png", 5, True),
        ("test/neutral/c.png", 7, False),  # its crop is unknown: collapsed points
    ]:
        image, image_points = _rotated_face(seed)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / rel)
        if known:
            landmarks.add(image, image_points)
        truth[rel] = (image, image_points)
    blank = np.full((90, 120, 3), 128, np.uint8)
    (root / "test/happy").mkdir(parents=True)
    Image.fromarray(blank).save(root / "test/happy/blank.png")

    aligner = align_folder.FolderAligner(
        _Detector(), landmarks, template="synthetic_faces", size=SIZE, margin=MARGIN
    )
    data_dir = tmp_path / "d"
    out = prepare.prepare(
        "image_folder",
        config="mine",
        data_dir=str(data_dir),
        manual_dir=str(root),
        align=aligner,
    )
    printed = capsys.readouterr().out
    assert (
        "Alignment: 2 aligned, 1 fallback-crop (landmarks implausible or not on a face), 1 no-face"
        in printed
    )
    assert out["dir"].endswith("image_folder/mine_aligned/1.0.0")
    record = json.loads((data_dir / "image_folder/mine_aligned/1.0.0/alignment.json").read_text())
    assert record["counts"] == {"aligned": 2, "fallback_crop": 1, "no_face": 1}
    assert record["counts_by_split"]["test"] == {"aligned": 0, "fallback_crop": 1, "no_face": 1}
    assert record["fallback_files"] == {
        "fallback_crop": ["test/neutral/c.png"],
        "no_face": ["test/happy/blank.png"],
    }
    (reason,) = record["fallback_reasons"].values()  # why each one fell back
    assert record["fallback_reasons"].keys() == {"test/neutral/c.png"}
    assert reason.startswith("landmarks implausible (eye distance"), reason
    assert (record["template"], record["size"]) == ("synthetic_faces", SIZE)

    stored = {
        **_stored(data_dir, "mine_aligned", "train"),
        **_stored(data_dir, "mine_aligned", "test"),
    }
    template = align.SYNTHETIC_FACES
    for rel in ("train/neutral/a.png", "train/happy/b.png"):
        image, image_points = truth[rel]
        five = LAYOUT.five_points(image_points)
        want, matrix = align.warp_to_template(image, five, template, SIZE)
        np.testing.assert_array_equal(stored[rel], want)  # the very warp of predict --align
        eyes = align.apply_affine(matrix, five[:2])
        # Near the template's eyes (a real face is not the average face)...
        assert np.abs(eyes - align.template_pixels(template, SIZE)[:2]).max() < 0.06 * SIZE
        # ...and upright: the 20-degree roll is gone.
        roll = np.degrees(np.arctan2(*(eyes[1] - eyes[0])[::-1]))
        assert abs(roll) < 5, roll
    # The pixels: the dark pupils of the stored crop sit where the true eyes were mapped.
    image, image_points = truth["train/neutral/a.png"]
    _, matrix = align.warp_to_template(image, LAYOUT.five_points(image_points), template, SIZE)
    for eye in align.apply_affine(matrix, LAYOUT.five_points(image_points)[:2]):
        found = dark_centroid(stored["train/neutral/a.png"], eye, radius=4)
        assert np.hypot(*(found - eye)) < 1.0, (found, eye)
    # Fallbacks as predict keeps them: the square crop (unresized), the whole image.
    x0, y0, x1, y1 = crop_box(BOX, (RENDER, RENDER), MARGIN)
    np.testing.assert_array_equal(
        stored["test/neutral/c.png"], truth["test/neutral/c.png"][0][y0:y1, x0:x1]
    )
    np.testing.assert_array_equal(stored["test/happy/blank.png"], blank)

    # The unaligned preparation lives beside it; neither overwrites the other.
    plain = prepare.prepare(
        "image_folder", config="mine", data_dir=str(data_dir), manual_dir=str(root), verbose=False
    )
    assert plain["dir"].endswith("image_folder/mine/1.0.0") and "alignment" not in plain
    np.testing.assert_array_equal(
        _stored(data_dir, "mine", "train")["train/neutral/a.png"], truth["train/neutral/a.png"][0]
    )
    assert (data_dir / "image_folder/mine_aligned/1.0.0/alignment.json").is_file()

    # Reused as it is with the same settings; refused with others unless --overwrite.
    again = prepare.prepare(
        "image_folder",
        config="mine",
        data_dir=str(data_dir),
        manual_dir=str(root),
        align=align_folder.FolderAligner(
            _Detector(), landmarks, template="synthetic_faces", size=SIZE, margin=MARGIN
        ),
        verbose=False,
    )
    assert again["alignment"]["counts"] == record["counts"]
    other = align_folder.FolderAligner(_Detector(), landmarks, template="arcface", size=SIZE)
    with pytest.raises(
        align_folder.AlignOptionError, match="template 'synthetic_faces' -> 'arcface'"
    ):
        prepare.prepare(
            "image_folder", config="mine", data_dir=str(data_dir), manual_dir=str(root), align=other
        )
    with pytest.raises(align_folder.AlignOptionError, match="--config=mine_aligned: names ending"):
        prepare.prepare(
            "image_folder", config="mine_aligned", data_dir=str(data_dir), manual_dir=str(root)
        )


def test_the_command_for_a_missing_aligned_preparation_says_align():
    command = source.prepare_command("image_folder", "mine_aligned", "d", "photos")
    assert command.endswith(
        "--config mine --manual_dir photos --data_dir d --align --landmarks CKPT"
    )


@pytest.mark.parametrize(
    "dataset, kwargs, message",
    [
        ("image_folder", {"align": True}, "--align needs --landmarks CKPT"),
        ("image_folder", {"align": False, "landmarks": "x"}, "--landmarks is only used with"),
        ("raf_db", {"align": True, "landmarks": "x"}, "--align prepares your own image folders"),
        ("image_folder", {"align": True, "landmarks": "/no/such"}, "--landmarks=/no/such: no such"),
        ("image_folder", {"align": True, "landmarks": ".", "size": 8}, "--align_size=8 must be"),
        ("image_folder", {"align": True, "landmarks": ".", "margin": -1}, "--margin=-1 must be"),
        (
            "image_folder",
            {"align": True, "landmarks": ".", "template": "rafdb"},
            "--align_template='rafdb': use one of",
        ),
        ("image_folder", {"align": True, "landmarks": ".", "detector": "x"}, "--detector='x' is"),
        ("image_folder", {"align": True, "landmarks": "."}, "--landmarks=.: "),  # not a checkpoint
    ],
)
def test_align_flags_fail_in_one_line_naming_the_flag(dataset, kwargs, message):
    with pytest.raises(align_folder.AlignOptionError) as info:
        align_folder.from_flags(dataset, **kwargs)
    assert message in str(info.value), str(info.value)
    assert isinstance(info.value, errors.DataError)  # prepare's main prints "ERROR: ..."
    assert len(str(info.value).strip().splitlines()) == 1, str(info.value)
