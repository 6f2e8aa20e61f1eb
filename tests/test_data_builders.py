"""Each dataset builder on a fixture generated in the official layout (docs/datasets.md)."""

from __future__ import annotations

import collections

import data_fixtures as fx
import ml_collections
import numpy as np
import pytest

from grefel_jax.data import classes, errors, source
from grefel_jax.prepare import build as prepare


def _cfg(name, data_dir, config=None):
    return ml_collections.ConfigDict(
        {"name": name, "builder_config": config, "data_dir": str(data_dir)}
    )


def _read(name, data_dir, split, config=None):
    ds = source.data_source(_cfg(name, data_dir, config), split)
    return [ds[i] for i in range(len(ds))]


def _by_file(examples):
    return {ex["file_name"].decode(): ex for ex in examples}


def test_class_names_and_mapping_by_name():
    assert classes.class_names("raf_db") == (
        "surprise",
        "fear",
        "disgust",
        "happiness",
        "sadness",
        "anger",
        "neutral",
    )
    assert classes.class_names("affectnet/7")[:3] == ("neutral", "happiness", "sadness")
    assert classes.class_names("affectnet", "8")[7] == "contempt"
    m = classes.map_labels("affectnet/8", "raf_db")
    # AffectNet code 1 (happy) is RAF-DB index 3; contempt has no RAF-DB class.
    assert m[1] == 3 and m[0] == 6 and m[7] == -1
    # FERG-DB's 'joy' maps to happiness by synonym.
    assert classes.map_labels("ferg_db", "raf_db")[3] == 3
    # Round trip on the shared 7 classes.
    back = classes.map_labels("raf_db", "affectnet/7")[classes.map_labels("affectnet/7", "raf_db")]
    np.testing.assert_array_equal(back, np.arange(7))
    with pytest.raises(KeyError):
        classes.class_names("affectnet")


def test_raf_db(tmp_path):
    truth = fx.write_raf_db(tmp_path / "raf", {"train": 2, "test": 1})
    out = prepare.prepare(
        "raf_db", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "raf"), verbose=False
    )
    assert out["splits"] == {"train": 14, "test": 7}
    assert out["class_names"] == classes.RAF_DB
    np.testing.assert_array_equal(out["class_counts"]["train"], [2] * 7)
    for split in ("train", "test"):
        for name, ex in _by_file(_read("raf_db", tmp_path / "d", split)).items():
            label = truth[(split, name.replace("_aligned", ""))]
            assert ex["label"] == label  # index = file label - 1
            assert ex["image"].shape == (12, 12, 3) and ex["image"][0, 0, 0] in (
                label * 30 - 1,
                label * 30,
                label * 30 + 1,
            )  # JPEG tolerance


def test_raf_db_missing_and_corrupt(tmp_path):
    manual = tmp_path / "raf"
    with pytest.raises(errors.ManualDataMissingError, match="does not exist"):
        prepare.prepare("raf_db", data_dir=str(tmp_path / "d"), manual_dir=str(manual))
    fx.write_raf_db(manual, {"train": 1, "test": 1})
    (manual / "basic/Image/aligned/train_00003_aligned.jpg").unlink()
    (manual / "basic/Image/aligned/test_00002_aligned.jpg").unlink()
    with pytest.raises(errors.ManualDataMissingError) as info:
        prepare.prepare("raf_db", data_dir=str(tmp_path / "d"), manual_dir=str(manual))
    message = str(info.value)
    assert "2 required" in message
    assert "train_00003_aligned.jpg" in message and "test_00002_aligned.jpg" in message
    assert not (tmp_path / "d" / "raf_db").exists()  # failed before any work

    fx.write_image(manual / "basic/Image/aligned/train_00003_aligned.jpg", 0)
    fx.write_image(manual / "basic/Image/aligned/test_00002_aligned.jpg", 0)
    (manual / "basic/Image/aligned/train_00005_aligned.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(errors.CorruptImageError, match="train_00005_aligned.jpg"):
        prepare.prepare("raf_db", data_dir=str(tmp_path / "d1"), manual_dir=str(manual))
    out = prepare.prepare(
        "raf_db",
        data_dir=str(tmp_path / "d2"),
        manual_dir=str(manual),
        skip_corrupt=True,
        verbose=False,
    )
    assert out["splits"]["train"] == 6 and len(out["corrupt_skipped"]) == 1


def test_ferplus_majority_protocol(tmp_path):
    expected = fx.write_ferplus(tmp_path / "fer")
    out = prepare.prepare(
        "ferplus", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "fer"), verbose=False
    )
    kept = sum(1 for _, label, _ in fx.FERPLUS_CASES if label >= 0)
    # The repeated image name is a second example (keyed by its row), not an error.
    assert out["splits"] == {"train": kept + 1, "validation": kept, "test": kept}
    assert out["class_names"] == classes.FERPLUS
    for split in ("train", "validation", "test"):
        examples = _read("ferplus", tmp_path / "d", split)
        found = sorted((ex["file_name"].decode(), int(ex["label"])) for ex in examples)
        assert found == sorted(expected[split])
        for ex in examples:
            assert ex["image"].shape == (48, 48, 3)
            np.testing.assert_array_equal(ex["image"][..., 0], ex["image"][..., 2])  # grey->RGB
            dist = ex["label_distribution"]
            assert dist.shape == (8,) and abs(dist.sum() - 1) < 1e-6
            assert int(np.argmax(dist)) == int(ex["label"])
            assert ex["votes"].shape == (10,)


def test_repeated_keys_fail_naming_the_key(tmp_path):
    from grefel_jax.data.builders import base as builder_base

    pairs = [("a.jpg", 1), ("b.jpg", 2), ("a.jpg", 3)]
    with pytest.raises(errors.ManualDataFormatError, match="raf_db train.*'a.jpg'"):
        list(builder_base.unique_keys(iter(pairs), "raf_db train"))


def test_ferplus_missing_file_lists_it(tmp_path):
    fx.write_ferplus(tmp_path / "fer")
    (tmp_path / "fer" / "fer2013new.csv").unlink()
    with pytest.raises(errors.ManualDataMissingError, match="fer2013new.csv"):
        prepare.prepare("ferplus", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "fer"))


@pytest.mark.parametrize("release", ["csv", "npy"])
def test_affectnet_7_and_8(tmp_path, release):
    write = fx.write_affectnet_csv if release == "csv" else fx.write_affectnet_npy
    codes = write(tmp_path / "aff", per_code=2)
    for config, num_classes in (("7", 7), ("8", 8)):
        out = prepare.prepare(
            "affectnet",
            config=config,
            data_dir=str(tmp_path / "d"),
            manual_dir=str(tmp_path / "aff"),
            verbose=False,
        )
        assert out["class_names"] == classes.class_names("affectnet", config)
        for split in ("train", "test"):
            kept = [c for c in codes[split] if c < num_classes]  # 8-10 (and 7 for '7') dropped
            assert out["splits"][split] == len(kept)
            np.testing.assert_array_equal(
                out["class_counts"][split], np.bincount(kept, minlength=num_classes)
            )
            for ex in _read("affectnet", tmp_path / "d", split, config):
                assert 0 <= ex["label"] < num_classes
                assert ex["landmarks"].shape == (68, 2)
                if release == "csv":  # the 20x16 face box is cropped; landmarks shifted
                    assert ex["image"].shape == (16, 20, 3)
                    assert ex["landmarks"][0].tolist() == [6.0, 3.0]


def test_affectnet_missing_release(tmp_path):
    (tmp_path / "aff").mkdir()
    with pytest.raises(errors.ManualDataMissingError, match="training.csv"):
        prepare.prepare(
            "affectnet", config="7", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "aff")
        )


def test_ferg_db(tmp_path):
    n = fx.write_ferg_db(tmp_path / "ferg", per_folder=2)
    out = prepare.prepare(
        "ferg_db", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "ferg"), verbose=False
    )
    assert sum(out["splits"].values()) == n
    assert out["class_names"] == classes.FERG_DB
    for split in out["splits"]:
        for name, ex in _by_file(_read("ferg_db", tmp_path / "d", split)).items():
            expression = name.split("/")[1].split("_", 1)[1]
            assert classes.FERG_DB[ex["label"]] == expression
    # A missing character/expression folder is listed.
    import shutil

    shutil.rmtree(tmp_path / "ferg" / "FERG_DB_256" / "ray" / "ray_fear")
    with pytest.raises(errors.ManualDataMissingError, match="ray/ray_fear"):
        prepare.prepare("ferg_db", data_dir=str(tmp_path / "d2"), manual_dir=str(tmp_path / "ferg"))


def test_jaffe(tmp_path):
    n = fx.write_jaffe(tmp_path / "jaffe", subjects=("KA", "KL", "UY"))
    out = prepare.prepare(
        "jaffe", data_dir=str(tmp_path / "d"), manual_dir=str(tmp_path / "jaffe"), verbose=False
    )
    assert out["splits"] == {"train": 14, "test": 7}  # UY is a test subject
    examples = _read("jaffe", tmp_path / "d", "train+test")
    assert len(examples) == n
    for ex in examples:
        code = ex["file_name"].decode().split(".")[1][:2]
        assert ex["label"] == classes.JAFFE_CODES.index(code)
        assert ex["image"].shape == (12, 12, 3)  # grayscale TIFF converted to RGB


def test_aff_wild2_expr(tmp_path):
    videos = {
        "train/v1": [0, 1, -1, 7, 4],
        "train/v2": [-1, -1, 3],
        "validation/v3": [5, -1, 6, 2],
    }
    fx.write_aff_wild2(tmp_path / "aw", videos, missing_frames={"v1/5"})
    out = prepare.prepare(
        "aff_wild2_expr",
        data_dir=str(tmp_path / "d"),
        manual_dir=str(tmp_path / "aw"),
        verbose=False,
    )
    assert out["splits"] == {"train": 4, "validation": 3}  # -1 skipped, v1 frame 5 absent
    assert out["missing_frames"] == 1
    assert out["class_names"] == classes.AFF_WILD2_EXPR
    train = _by_file(_read("aff_wild2_expr", tmp_path / "d", "train"))
    assert {k: int(v["label"]) for k, v in train.items()} == {
        "v1/00001.jpg": 0,
        "v1/00002.jpg": 1,
        "v1/00004.jpg": 7,
        "v2/00003.jpg": 3,
    }


def test_image_folder(tmp_path):
    root = tmp_path / "mine"
    for split, n in (("train", 3), ("test", 1)):
        for c, name in enumerate(("happy", "angry", "sad")):
            for k in range(n):
                fx.write_image(root / split / name / f"{k}.png", c * 40)
    out = prepare.prepare(
        "image_folder",
        config="mine",
        data_dir=str(tmp_path / "d"),
        manual_dir=str(root),
        verbose=False,
    )
    assert out["class_names"] == ("angry", "happy", "sad")  # sorted folder names
    assert out["splits"] == {"test": 3, "train": 9}
    for ex in _read("image_folder", tmp_path / "d", "train", "mine"):
        folder = ex["file_name"].decode().split("/")[1]
        assert out["class_names"][ex["label"]] == folder


def test_synthetic_faces_builder(tmp_path):
    out = prepare.prepare(
        "synthetic_faces", config="tiny_64", data_dir=str(tmp_path / "d"), verbose=False
    )
    assert out["splits"] == {"train": 140, "validation": 35, "test": 70}
    assert out["class_names"] == classes.RAF_DB
    np.testing.assert_array_equal(out["class_counts"]["train"], [20] * 7)
    examples = _read("synthetic_faces", tmp_path / "d", "test", "tiny_64")
    counts = collections.Counter(int(e["label"]) for e in examples)
    assert counts == {c: 10 for c in range(7)}
    ex = examples[0]
    assert ex["image"].shape == (64, 64, 3) and ex["image"].dtype == np.uint8
    assert ex["landmarks"].shape == (35, 2)


def test_prepare_cli(tmp_path):
    """The command line prints the table; a missing manual dir exits 1 with instructions."""
    import subprocess
    import sys

    from absl import flags

    import grefel_jax.data.prepare  # noqa: F401  (importing must not define flags,
    import grefel_jax.prepare.__main__  # noqa: F401  neither the command nor its alias)

    assert "manual_dir" not in flags.FLAGS
    fx.write_raf_db(tmp_path / "raf", {"train": 1, "test": 1})
    run = [sys.executable, "-m", "grefel_jax.prepare", "--data_dir", str(tmp_path / "d")]
    ok = subprocess.run(
        [*run, "--dataset", "raf_db", "--manual_dir", str(tmp_path / "raf")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "happiness" in ok.stdout and "total" in ok.stdout
    bad = subprocess.run(
        [*run, "--dataset", "ferplus", "--manual_dir", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "fer2013new.csv" in bad.stderr


def test_builders_and_prediction_convert_files_alike(tmp_path):
    """A stored training image and `predict`'s decode of the same file are the same pixels."""
    import io

    from PIL import Image

    from grefel_jax.data.builders import base
    from grefel_jax.inference import images

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (12, 14, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgba[..., 0], mode="L").convert("P").save(tmp_path / "palette.gif")
    Image.fromarray(rng.integers(0, 65536, (12, 14), dtype=np.uint16)).save(tmp_path / "g16.png")
    Image.fromarray(rgba, mode="CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rgba[..., :3]).save(tmp_path / "rgb.tif")  # re-encoded as PNG
    for path in sorted(tmp_path.iterdir()):
        stored = base.load_rgb_image(path, skip_corrupt=False, corrupt=base.CorruptCounter())
        pixels = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"))
        np.testing.assert_array_equal(pixels, images.load_image(path), err_msg=path.name)
