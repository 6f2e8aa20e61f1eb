"""Prediction end to end: Predictor and the `grefel_jax.predict` CLI against the eval pipeline.

One tiny model (64x64 input) is trained for a few steps on synthetic_faces and saved both as
an inference checkpoint and as a training workdir; every test reads it back from disk.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
from head_training import train_head
from PIL import Image

from grefel_jax import checkpoints as ckpt_lib
from grefel_jax import preprocess
from grefel_jax.data import classes, pipeline, source
from grefel_jax.inference import Predictor, command, resolve_class_names
from grefel_jax.inference import predictor as predictor_lib
from grefel_jax.inference.command import Outputs, PredictorSettings
from grefel_jax.models import GReFEL, init_variables, make_model_config
from grefel_jax.models.heads import GReFELHead

DATA_SIZE = 64  # synthetic_faces/tiny_64 images.
# The model input differs from the data so that the shared resize is part of the comparison.
IMAGE_SIZE = 32
BATCH = 16  # != the eval batch below, so the predictor's padding is exercised.
EVAL_BATCH = 32
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_config(tiny_faces_config):
    """synthetic_faces/tiny_64 (conftest.py builds it once per session)."""
    return tiny_faces_config


def _split_images(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    records = source.data_source(data_config, split)
    images = np.stack([records[i]["image"] for i in range(len(records))])
    labels = np.array([records[i]["label"] for i in range(len(records))], np.int32)
    return images, labels


def _train_head(model_config, variables, images, labels, steps=200):
    """A few Adam steps on the head over frozen backbone features (tests/head_training.py)."""
    trained, losses = train_head(model_config, variables, images, labels, IMAGE_SIZE, steps)
    assert losses[-1] < losses[0]  # It did train.
    return trained


@pytest.fixture(scope="module")
def trained(data_config, tmp_path_factory):
    """(model_config, variables, inference checkpoint dir, workdir)."""
    model_config = make_model_config(
        "tiny", "grefel", 7, backbone_overrides={"image_size": IMAGE_SIZE}
    )
    # unsafe_rbg: the same init, compiled in a fraction of threefry's time.
    variables = init_variables(GReFEL(model_config), jax.random.key(0, impl="unsafe_rbg"))
    images, labels = _split_images(data_config, "train")
    variables = _train_head(model_config, variables, images, labels)

    root = tmp_path_factory.mktemp("checkpoints")
    inference_dir = root / "inference"
    # The dataset only (as a converter given --dataset would record it): names from it.
    ckpt_lib.save_inference_checkpoint(
        inference_dir,
        variables,
        ckpt_lib.ModelRecord(model_config, dataset="synthetic_faces/tiny_64"),
    )
    workdir = root / "workdir"
    record = ckpt_lib.ModelRecord(
        model_config, class_names=classes.SYNTHETIC_FACES, dataset="synthetic_faces/tiny_64"
    )
    checkpointer = ckpt_lib.TrainCheckpointer(workdir, keep=1, best_metric=None, async_save=False)
    checkpointer.save(30, dict(variables), {"step": np.int32(30)}, record, force=True)
    checkpointer.close()
    return model_config, variables, inference_dir, workdir


@pytest.fixture(scope="module")
def eval_outputs(data_config, trained):
    """What the evaluation pipeline computes on the test split, in record order."""
    model_config, variables, _, _ = trained
    model = GReFEL(model_config)
    forward = jax.jit(lambda v, x: model.apply(v, x, train=False))
    iterator = pipeline.make_eval_iterator(
        data_config, "test", image_size=IMAGE_SIZE, global_batch_size=EVAL_BATCH
    )
    keys = ("probs", "corrected_probs", "confidence", "anchor_confidence")
    collected = {k: [] for k in keys}
    for batch in iterator:
        out = forward(variables, jnp.asarray(batch["image"]))
        for k in keys:
            collected[k].append(np.asarray(out[k])[batch["mask"]])
    return {k: np.concatenate(v) for k, v in collected.items()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real photos in awkward formats, a photo without a face and broken files."""
    folder = tmp_path_factory.mktemp("photos")
    astronaut = skimage.data.astronaut()
    Image.fromarray(astronaut).save(folder / "astronaut.png")
    gray16 = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY).astype(np.uint16) * 257
    cv2.imwrite(str(folder / "astronaut_gray16.png"), gray16)
    rgba = np.concatenate([astronaut, np.full((512, 512, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba, mode="RGBA").save(folder / "astronaut_rgba.png")
    Image.fromarray(skimage.data.coffee()).save(folder / "coffee.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    data = (folder / "astronaut.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[:2000])
    return folder


def test_matches_the_evaluation_pipeline(data_config, trained, eval_outputs, tmp_path):
    """Synthetic test faces as PNG files -> CLI (--no-detect) == make_eval_iterator + model."""
    _, _, inference_dir, _ = trained
    images, _ = _split_images(data_config, "test")
    folder = tmp_path / "test_faces"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"test_{i:03d}.png")
    out = tmp_path / "predictions.json"
    stdout = io.StringIO()
    status = command.run(
        [str(folder)],
        PredictorSettings(str(inference_dir), detect=False, batch_size=BATCH),
        outputs=Outputs(json=str(out)),
        stdout=stdout,
        stderr=io.StringIO(),
    )
    assert status == command.EXIT_OK
    document = json.loads(out.read_text())
    assert document["class_names"] == list(classes.SYNTHETIC_FACES)
    records = document["images"]
    assert [Path(r["file"]).name for r in records] == [f"test_{i:03d}.png" for i in range(70)]
    faces = [r["faces"] for r in records]
    assert all(len(f) == 1 for f in faces)
    faces = [f[0] for f in faces]
    names = document["class_names"]
    probs = np.array([[f["probabilities"][n] for n in names] for f in faces])
    corrected = np.array([[f["corrected_probabilities"][n] for n in names] for f in faces])

    expected_classes = eval_outputs["probs"].argmax(-1)
    assert len(set(expected_classes.tolist())) > 1  # A model that tells faces apart.
    np.testing.assert_array_equal([f["class_index"] for f in faces], expected_classes)
    np.testing.assert_array_equal(
        [f["corrected_class_index"] for f in faces], eval_outputs["corrected_probs"].argmax(-1)
    )
    np.testing.assert_allclose(probs, eval_outputs["probs"], atol=1e-5)
    np.testing.assert_allclose(corrected, eval_outputs["corrected_probs"], atol=1e-5)
    np.testing.assert_allclose(
        [f["confidence"] for f in faces], eval_outputs["confidence"], atol=1e-5
    )
    np.testing.assert_allclose(
        [f["anchor_confidence"] for f in faces], eval_outputs["anchor_confidence"], atol=1e-5
    )
    assert [f["box"] for f in faces] == [[0, 0, DATA_SIZE, DATA_SIZE]] * 70
    # The table names every file once, with its class.
    table = stdout.getvalue().splitlines()
    assert len(table) == 71 and table[1].split()[3] == names[expected_classes[0]]


def test_python_api_from_workdir_on_arrays(data_config, trained, eval_outputs, monkeypatch):
    """Predictor.from_checkpoint(workdir).predict(arrays): class names from the run's config."""
    _, _, _, workdir = trained
    monkeypatch.chdir(workdir.parent)  # A relative path, as users type it.
    predictor = Predictor.from_checkpoint(workdir.name, detect=False, batch_size=BATCH)
    assert predictor.class_names == classes.SYNTHETIC_FACES
    assert predictor.metadata["step"] == 30
    images, _ = _split_images(data_config, "test")
    inputs = [images[0], images[1] / 255.0, images[2].astype(np.uint16) * 257]
    results = predictor.predict(inputs)
    assert [r.source for r in results] == ["images[0]", "images[1]", "images[2]"]
    for i, result in enumerate(results):
        assert result.ok and len(result.faces) == 1
        face = result.faces[0]
        assert face.class_index == eval_outputs["probs"][i].argmax()
        assert face.label == classes.SYNTHETIC_FACES[face.class_index]
        np.testing.assert_allclose(face.probs, eval_outputs["probs"][i], atol=1e-5)
        assert face.probability == pytest.approx(float(face.probs.max()))
        assert 0.0 <= face.confidence <= 1.0 and face.attention_confidence is not None
    # One image alone gives the same numbers as in a batch (padding does not leak).
    alone = predictor.predict(images[0])[0].faces[0]
    np.testing.assert_allclose(
        alone.corrected_probs, results[0].faces[0].corrected_probs, atol=1e-6
    )


def test_cli_reports_bad_files_and_keeps_going(trained, photos, tmp_path):
    """The real command line: unreadable files are listed, the rest predicted, exit status 1."""
    _, _, inference_dir, _ = trained
    annotated = tmp_path / "annotated"
    out = tmp_path / "predictions.json"
    argv = [
        sys.executable, "-m", "grefel_jax.predict",
        "--checkpoint", str(inference_dir),
        "--json", str(out),
        "--annotate", str(annotated),
        "--batch_size", str(BATCH),
        str(photos),
        str(tmp_path / "missing.jpg"),
    ]  # fmt: skip
    # As a user runs it: one CPU device. The suite's compile-time flags are kept (results
    # differ by rounding only; compiling is most of this test's time).
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags)}
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == command.EXIT_SOME_FAILED, proc.stderr
    rows = {Path(line.split()[0]).name: line for line in proc.stdout.splitlines()[1:]}
    assert "ERROR" in rows["broken.jpg"] and "broken.jpg" in rows["broken.jpg"].split("ERROR")[1]
    assert "ERROR" in rows["truncated.png"]
    assert "ERROR" in rows["missing.jpg"] and "no such file" in rows["missing.jpg"]
    assert "no face found" in rows["coffee.jpg"]

    records = {Path(r["file"]).name: r for r in json.loads(out.read_text())["images"]}
    assert {n: r["status"] for n, r in records.items()} == {
        "astronaut.png": "ok",
        "astronaut_gray16.png": "ok",
        "astronaut_rgba.png": "ok",
        "broken.jpg": "error",
        "coffee.jpg": "no_face",
        "missing.jpg": "error",
        "truncated.png": "error",
    }
    boxes = [records[n]["faces"][0]["box"] for n in records if n.startswith("astronaut")]
    assert all(len(records[n]["faces"]) == 1 for n in records if n.startswith("astronaut"))
    np.testing.assert_allclose(boxes, [boxes[0]] * 3, atol=3)  # 16-bit gray, RGBA: same face
    rgb, rgba = records["astronaut.png"]["faces"][0], records["astronaut_rgba.png"]["faces"][0]
    assert rgb["probabilities"] == pytest.approx(rgba["probabilities"], abs=1e-6)
    assert sorted(p.name for p in annotated.iterdir()) == [
        "astronaut.png",
        "astronaut_gray16.png",
        "astronaut_rgba.png",
        "coffee.jpg",
    ]
    assert Image.open(annotated / "astronaut.png").size == (512, 512)


@pytest.mark.parametrize("detector", ["ssd", "haar"])
def test_cli_success_status_and_csv(trained, photos, detector):
    """No failure -> status 0, even when an image has no face; CSV rows per face."""
    _, _, inference_dir, _ = trained
    stdout = io.StringIO()
    status = command.run(
        [str(photos / "astronaut.png"), str(photos / "coffee.jpg")],
        PredictorSettings(str(inference_dir), batch_size=BATCH, detector=detector),
        outputs=Outputs(csv="-"),
        stdout=stdout,
        stderr=io.StringIO(),
    )
    assert status == command.EXIT_OK
    rows = list(csv.DictReader(io.StringIO(stdout.getvalue())))
    assert [r["status"] for r in rows] == ["ok", "no_face"]
    probs = [float(rows[0][f"p_{n}"]) for n in classes.SYNTHETIC_FACES]
    assert sum(probs) == pytest.approx(1.0, abs=1e-4)
    assert rows[0]["class"] == classes.SYNTHETIC_FACES[int(np.argmax(probs))]


def test_poster_head_checkpoint_without_class_names(trained, photos, tmp_path):
    """A POSTER++-style checkpoint (poster head, no dataset recorded, like a conversion)."""
    model_config, variables, _, _ = trained
    poster_config = make_model_config(
        "tiny", "poster", 7, backbone_overrides={"image_size": IMAGE_SIZE}
    )
    rng = np.random.default_rng(0)
    dim = poster_config.backbone.vit_dim
    params = {k: v for k, v in variables["params"].items() if k != "head"}
    params["head"] = {
        "linear": {
            "kernel": rng.normal(0, 0.5, (dim, 7)).astype(np.float32),
            "bias": np.zeros(7, np.float32),
        }
    }
    stats = {k: v for k, v in variables["batch_stats"].items() if k != "head"}
    directory = tmp_path / "poster"
    ckpt_lib.save_inference_checkpoint(
        directory, {"params": params, "batch_stats": stats}, poster_config,
        {"converter": "grefel_jax.convert", "kind": "poster_v2"},
    )  # fmt: skip
    generic = Predictor.from_checkpoint(directory, batch_size=BATCH)
    assert generic.class_names == tuple(f"class_{i}" for i in range(7))
    predictor = Predictor.from_checkpoint(directory, dataset="raf_db", batch_size=BATCH)
    assert predictor.class_names == classes.RAF_DB
    (result,) = predictor.predict([photos / "astronaut.png"])
    (face,) = result.faces
    np.testing.assert_array_equal(face.corrected_probs, face.probs)
    assert face.corrected_label == face.label and face.anchor_confidence is None


def test_arbex_batch_attention_checkpoint_is_not_padded(data_config, trained, tmp_path):
    """ARBEx's head attends across the batch: zero padding would change the real faces."""
    model_config, variables, _, _ = trained
    arbex_config = make_model_config(
        "tiny", "arbex_code", 7, backbone_overrides={"image_size": IMAGE_SIZE}
    )
    dim = arbex_config.backbone.vit_dim
    head_init = jax.jit(
        lambda rng: GReFELHead(arbex_config.head).init(rng, jnp.zeros((2, dim)), train=False)
    )
    head = head_init(jax.random.key(1, impl="unsafe_rbg"))
    arbex_variables = {
        "params": {**variables["params"], "head": head["params"]},
        "batch_stats": {**variables["batch_stats"], "head": head["batch_stats"]},
    }
    directory = tmp_path / "arbex"
    ckpt_lib.save_inference_checkpoint(
        directory,
        arbex_variables,
        arbex_config,
        {"converter": "grefel_jax.convert", "kind": "arbex"},
    )
    predictor = Predictor.from_checkpoint(
        directory, dataset="raf_db", detect=False, batch_size=BATCH
    )
    images, _ = _split_images(data_config, "test")
    faces = [r.faces[0] for r in predictor.predict(list(images[:3]))]

    batch = np.stack([preprocess.preprocess_eval_image(x, IMAGE_SIZE) for x in images[:3]])
    model = GReFEL(arbex_config)
    exact = predictor_lib._forward(arbex_variables, batch, model=model)
    np.testing.assert_allclose(
        [f.corrected_probs for f in faces], exact["corrected_probs"], atol=1e-5
    )
    padded = np.concatenate([batch, np.zeros((BATCH - 3, *batch.shape[1:]), np.float32)])
    padded_out = predictor_lib._forward(arbex_variables, padded, model=model)
    assert not np.allclose(padded_out["corrected_probs"][:3], exact["corrected_probs"], atol=1e-4)
    # The primary distribution does not depend on the batch.
    np.testing.assert_allclose(padded_out["probs"][:3], exact["probs"], atol=1e-5)


def test_class_name_resolution_and_partial_checkpoints(trained):
    metadata = {"converter": "grefel_jax.convert", "kind": "arbex"}
    assert resolve_class_names(metadata, 8, dataset="affectnet/8") == classes.AFFECTNET_8
    assert resolve_class_names({"class_names": list("abc")}, 3) == ("a", "b", "c")
    assert resolve_class_names({"dataset": "raf_db"}, 7, class_names=list("abcdefg"))[0] == "a"
    with pytest.raises(ValueError, match="model has 7"):
        resolve_class_names({"dataset": "affectnet/8"}, 7)
    model_config, variables, _, _ = trained
    backbone_only = {
        "params": {"ir_back": variables["params"]["ir_back"]},
        "batch_stats": {"ir_back": variables["batch_stats"]["ir_back"]},
    }
    with pytest.raises(ValueError, match="partial"):
        Predictor(backbone_only, model_config, classes.SYNTHETIC_FACES)


def test_bad_detector_name_is_one_fatal_line(tmp_path):
    stderr = io.StringIO()
    status = command.run(["x.png"], PredictorSettings(str(tmp_path), detector="x"), stderr=stderr)
    assert status == command.EXIT_FATAL
    assert stderr.getvalue() == (
        "ERROR: --detector='x' is not a face detector: use one of ['haar', 'ssd'].\n"
    )


def test_bad_checkpoint_is_fatal(tmp_path):
    stderr = io.StringIO()
    status = command.run(["x.png"], PredictorSettings(str(tmp_path)), stderr=stderr)
    assert status == command.EXIT_FATAL
    assert str(tmp_path) in stderr.getvalue()
