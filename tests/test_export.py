"""Export: StableHLO and ONNX artifacts of a tiny checkpoint, and the artifact-only runner
against `predict --no-detect` on the same face crops.

One tiny model (32x32 input, randomly initialised, with a random primary classifier so that
the crops get clearly different probabilities) is exported once per module, in both
formats with a dynamic batch, and once with a fixed batch of 3 (StableHLO only).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import skimage.data
from PIL import Image

from grefel_jax import checkpoints as ckpt_lib
from grefel_jax import preprocess
from grefel_jax.data import classes
from grefel_jax.export import exporter, manifest
from grefel_jax.export import predict as runner
from grefel_jax.export import preprocessing as export_preprocessing
from grefel_jax.inference import command
from grefel_jax.inference.command import Outputs, PredictorSettings
from grefel_jax.models import GReFEL, init_variables, make_model_config

IMAGE_SIZE = 32
REPO = Path(__file__).resolve().parents[1]
# Crops of different sizes and aspect ratios, so the resize is part of every comparison.
CROPS = {
    "astronaut.png": (skimage.data.astronaut, (slice(30, 230), slice(150, 330))),
    "chelsea.png": (skimage.data.chelsea, (slice(0, 300), slice(50, 350))),
    "coffee.jpg": (skimage.data.coffee, (slice(100, 148), slice(200, 260))),
    "rocket.png": (skimage.data.rocket, (slice(0, 32), slice(0, 32))),
}
TOLERANCE = 1e-4  # The bound for float32 artifacts.


def _random_primary_classifier(params):
    """The primary classifier's last layer starts at zero (uniform probabilities), which
    would let a runner feeding wrong pixels pass a 1e-4 comparison: give it random weights."""
    fc2 = params["head"]["classifier"]["fc2"]
    rng = np.random.default_rng(0)
    fc2["kernel"] = rng.normal(0.0, 1.0, fc2["kernel"].shape).astype(np.float32)
    return params


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An inference checkpoint of the tiny grefel model, with class names."""
    model_config = make_model_config(
        "tiny", "grefel", 7, backbone_overrides={"image_size": IMAGE_SIZE}
    )
    variables = init_variables(GReFEL(model_config), jax.random.key(0, impl="unsafe_rbg"))
    variables = jax.tree.map(np.asarray, variables)
    variables["params"] = _random_primary_classifier(variables["params"])
    directory = tmp_path_factory.mktemp("export_ckpt") / "tiny"
    record = ckpt_lib.ModelRecord(model_config, class_names=classes.SYNTHETIC_FACES)
    ckpt_lib.save_inference_checkpoint(directory, variables, record)
    return directory


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export_faces")
    for name, (load, region) in CROPS.items():
        Image.fromarray(np.ascontiguousarray(load()[region])).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    """Both formats, batch-polymorphic."""
    out = tmp_path_factory.mktemp("exported") / "dynamic"
    result = exporter.export_checkpoint(str(checkpoint), out)
    assert result.errors == {}, result.errors
    return out


@pytest.fixture(scope="module")
def expected(checkpoint, faces, tmp_path_factory):
    """`predict --no-detect --json` on the crops."""
    out = tmp_path_factory.mktemp("predict") / "predictions.json"
    status = command.run(
        [str(faces)],
        PredictorSettings(str(checkpoint), detect=False),
        outputs=Outputs(json=str(out)),
        stdout=io.StringIO(),
        stderr=io.StringIO(),
    )
    assert status == command.EXIT_OK
    return json.loads(out.read_text())


def _run(export_dir, faces, tmp_path, **kwargs) -> dict:
    out = tmp_path / "runner.json"
    stderr = io.StringIO()
    status = runner.run(
        export_dir, [str(faces)], json_path=str(out), stdout=io.StringIO(), stderr=stderr, **kwargs
    )
    assert status == command.EXIT_OK, stderr.getvalue()
    return json.loads(out.read_text())


def _assert_same_report(got, want):
    """Same layout (every key, every string and index) and numbers within TOLERANCE."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want)
        for key in want:
            _assert_same_report(got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same_report(g, w)
    elif isinstance(want, float):
        assert got == pytest.approx(want, abs=TOLERANCE)
    else:
        assert got == want


@pytest.mark.parametrize("batch_size", [1, 3])
@pytest.mark.parametrize("fmt", ["stablehlo", "onnx"])
def test_runner_matches_predict(exported, faces, expected, tmp_path, fmt, batch_size):
    """4 crops through the artifact alone == predict --no-detect (batch 3: a 3 + 1 split)."""
    got = _run(exported, faces, tmp_path, fmt=fmt, batch_size=batch_size)
    _assert_same_report(got, expected)
    names = expected["class_names"]
    probs = np.array(
        [[f["probabilities"][n] for n in names] for r in got["images"] for f in r["faces"]]
    )
    assert probs.shape == (4, 7)
    # The crops are told apart: a runner that fed wrong pixels could not stay within 1e-4.
    assert np.ptp(probs, axis=0).max() > 0.05


def test_fixed_batch_artifact_pads_like_predict(checkpoint, faces, expected, tmp_path):
    out = tmp_path / "fixed"
    result = exporter.export_checkpoint(str(checkpoint), out, formats=("stablehlo",), batch=3)
    assert result.errors == {} and result.manifest["batch"] == 3
    assert result.manifest["artifacts"]["stablehlo"]["input_shape"] == ["3", "32", "32", "3"]
    _assert_same_report(_run(out, faces, tmp_path), expected)  # 4 crops: 3 + 1 padded.
    stderr = io.StringIO()
    assert runner.run(out, [str(faces)], batch_size=2, stderr=stderr) == command.EXIT_FATAL
    assert "--batch_size=2" in stderr.getvalue() and "--batch 3" in stderr.getvalue()


def test_manifest_records_settings_and_checksums(exported, checkpoint, tmp_path, faces):
    document = json.loads((exported / manifest.MANIFEST).read_text())
    assert document["class_names"] == list(classes.SYNTHETIC_FACES)
    assert document["checkpoint"] == str(checkpoint)
    assert document["batch"] == "dynamic" and document["compute_dtype"] == "float32"
    spec = export_preprocessing.InputSpec.from_manifest(document["input"])
    assert spec.image_size == IMAGE_SIZE
    np.testing.assert_allclose(spec.mean, preprocess.IMAGENET_MEAN, rtol=1e-7)
    np.testing.assert_allclose(spec.std, preprocess.IMAGENET_STD, rtol=1e-7)
    assert document["crop"]["detect"] is False and document["alignment"]["method"] == "none"
    assert [o["name"] for o in document["outputs"]] == [
        "probs", "corrected_probs", "confidence", "anchor_confidence", "attention_confidence",
    ]  # fmt: skip
    assert document["artifacts"]["stablehlo"]["input_shape"][0] == "b"
    assert document["artifacts"]["onnx"]["input_shape"][0] == "B"
    for entry in document["artifacts"].values():
        path = exported / entry["file"]
        assert (
            entry["sha256"] == manifest.sha256_file(path) and entry["bytes"] == path.stat().st_size
        )
        assert entry["check"]["batch"] == 2 and entry["check"]["max_abs_diff"] <= TOLERANCE
    for package in ("jax", "flax", "jax2onnx", "onnx", "onnxruntime"):
        assert document["versions"][package][0].isdigit()

    # A changed artifact is refused before it is run.
    copy = tmp_path / "tampered"
    copy.mkdir()
    for name in os.listdir(exported):
        (copy / name).write_bytes((exported / name).read_bytes())
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    stderr = io.StringIO()
    status = runner.run(copy, [str(faces)], fmt="onnx", stdout=io.StringIO(), stderr=stderr)
    assert status == command.EXIT_FATAL
    assert "model.onnx" in stderr.getvalue() and "SHA-256" in stderr.getvalue()


def test_runner_preprocessing_equals_predict():
    rng = np.random.default_rng(0)
    spec = export_preprocessing.InputSpec(
        IMAGE_SIZE, tuple(preprocess.IMAGENET_MEAN), tuple(preprocess.IMAGENET_STD)
    )
    for shape in [(32, 32, 3), (100, 80, 3), (17, 45, 3), (300, 300, 3)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_array_equal(
            export_preprocessing.preprocess(image, spec),
            preprocess.preprocess_eval_image(image, IMAGE_SIZE),
        )


def test_onnx_runner_imports_neither_jax_nor_model_code(exported, faces):
    script = (
        "import io, sys\n"
        "from grefel_jax.export import predict\n"
        f"status = predict.run({str(exported)!r}, [{str(faces)!r}], fmt='onnx', json_path='-',"
        " stdout=io.StringIO())\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules"
        " if m.split('.')[0] in ('jax', 'flax', 'optax', 'orbax')"
        " or m.startswith('grefel_jax.models')})\n"
        "print(status, heavy)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.stdout.strip() == "0 []", proc.stdout + proc.stderr


def test_bad_input_is_one_line(checkpoint, tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    argv = [sys.executable, "-m", "grefel_jax.export", "--checkpoint", str(checkpoint),
               "--out", str(tmp_path / "x"), "--format", "stablehlo,tflite"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "ERROR: --format='stablehlo,tflite': expected a comma-separated subset of stablehlo,onnx."
    ]
    for text in ("0", "-3", "eight"):
        with pytest.raises(ValueError, match="--batch"):
            exporter.parse_batch(text)
    assert exporter.parse_batch("dynamic") is None and exporter.parse_batch("8") == 8
    with pytest.raises(ValueError, match="--dtype"):
        exporter.parse_dtype("float16")
    with pytest.raises(exporter.ExportError, match="--dtype bfloat16 --format onnx"):
        exporter.export_checkpoint(str(checkpoint), tmp_path / "bf16", dtype="bfloat16")
    with pytest.raises(exporter.ExportError, match="--checkpoint .*missing"):
        exporter.export_checkpoint(str(tmp_path / "missing"), tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    with pytest.raises(exporter.ExportError, match="not an empty directory"):
        exporter.export_checkpoint(str(checkpoint), tmp_path / "full")
    stderr = io.StringIO()
    assert runner.run(tmp_path, ["a.png"], stderr=stderr) == command.EXIT_FATAL
    assert "model.json" in stderr.getvalue()


def test_onnx_outputs_that_share_a_value_are_aliased(tmp_path):
    """The poster head returns one array as probs and corrected_probs: ONNX gets it once."""
    import jax.numpy as jnp

    from grefel_jax.export import onnx_convert, runtimes

    def fn(images):
        probs = jax.nn.softmax(images.mean(axis=(1, 2)))
        return {"probs": probs, "corrected_probs": probs, "confidence": probs.max(-1)}

    names = ["probs", "corrected_probs", "confidence"]
    aliases = onnx_convert.output_aliases(fn, 4, names)
    assert aliases == {"probs": "probs", "corrected_probs": "probs", "confidence": "confidence"}
    path = tmp_path / "tiny.onnx"
    path.write_bytes(onnx_convert.convert_onnx(fn, 4, None, ["probs", "confidence"]))
    runtime = runtimes.OnnxRuntime(
        path, onnx_convert.INPUT_NAME, ["probs", "confidence"], {"corrected_probs": "probs"}
    )
    images = np.random.default_rng(0).standard_normal((3, 4, 4, 3)).astype(np.float32)
    got = runtime(images)
    want = fn(jnp.asarray(images))
    for name in names:
        np.testing.assert_allclose(got[name], want[name], atol=1e-6)
