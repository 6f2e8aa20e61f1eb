"""Evaluation end to end: every example counted once, numbers equal to a direct computation."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from grefel_jax import checkpoints as ckpt_lib
from grefel_jax import evaluate, sharding
from grefel_jax.data import source
from grefel_jax.models import GReFEL, init_variables, make_model_config
from grefel_jax.preprocess import preprocess_eval_image

needs_8 = pytest.mark.skipif(
    jax.device_count() < 8, reason="run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
)


@needs_8
def test_evaluate_checkpoint_matches_direct_computation(tiny_faces_config, tmp_path):
    model_config = make_model_config(
        "tiny",
        num_classes=7,
        backbone_overrides={"image_size": 64, "ir_units": (1, 1, 1), "vit_depth": 1},
    )
    model = GReFEL(config=model_config)
    variables = jax.jit(lambda key: init_variables(model, key))(jax.random.key(3))
    ckpt_lib.save_inference_checkpoint(tmp_path / "ckpt", variables, model_config)

    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    # 70 test examples, batches of 16: the last batch holds 6 real examples and 10 padding.
    summary, paths = evaluate.evaluate_checkpoint(
        str(tmp_path / "ckpt"),
        tiny_faces_config,
        split="test",
        mesh=mesh,
        global_batch_size=16,
        output_dir=str(tmp_path / "out"),
    )

    # Direct computation: all 70 images in one batch, numpy metrics.
    records = source.data_source(tiny_faces_config, "test")
    images = np.stack([preprocess_eval_image(records[i]["image"], 64) for i in range(len(records))])
    labels = np.array([records[i]["label"] for i in range(len(records))])
    outputs = jax.jit(lambda x: model.apply(variables, x, train=False))(images)
    assert summary["num_examples"] == len(labels) == 70
    for name, key in (("primary", "probs"), ("corrected", "corrected_probs")):
        probs = np.asarray(outputs[key], np.float64)
        pred = probs.argmax(-1)
        confusion = np.zeros((7, 7), int)
        np.add.at(confusion, (labels, pred), 1)
        np.testing.assert_array_equal(summary[f"{name}/confusion_matrix"], confusion)
        np.testing.assert_allclose(summary[f"{name}/accuracy"], np.mean(pred == labels))
        nll = -np.mean(np.log(probs[np.arange(70), labels]))
        np.testing.assert_allclose(summary[f"{name}/nll"], nll, rtol=1e-4)
        # Each example once: the rows of the matrix are the class counts of the split.
        np.testing.assert_array_equal(
            np.sum(summary[f"{name}/confusion_matrix"], 1), np.bincount(labels, minlength=7)
        )

    report = json.loads(open(paths["json"]).read())
    assert report["num_examples"] == 70 and report["class_names"][0] == "surprise"
    for key in ("confusion_primary", "confusion_corrected"):
        assert open(paths[key], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
