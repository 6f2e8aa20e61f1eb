"""Landmark pretraining end to end on tiny generated faces: the loss falls, a second run
resumes from the first one's checkpoint, the report is written, and `init_from` loads the
pretrained trunk into GReFEL (issue 10)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from grefel_jax import checkpoints
from grefel_jax.configs import landmarks_synthetic
from grefel_jax.models import make_model_config
from grefel_jax.pretrain import landmarks as pretrain

IMAGE_SIZE = 64  # tiny_64's side: no resize


def _config(data_config, steps: int):
    config = landmarks_synthetic.get_config()
    config.data = data_config
    config.data.augment.hflip = True
    config.data.augment.rotation_degrees = 8.0
    config.data.eval_split = "validation"
    config.model.backbone.image_size = IMAGE_SIZE
    # A constant rate, so that the resumed run compiles the very step of the first one (the
    # persistent compilation cache serves it) instead of a step for another cosine length.
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 0
    config.optim.lr_backbone = 1e-2  # a visible fall within 16 steps
    config.batch_size = 16
    config.eval_batch_size = 40  # 35 validation / 70 test faces: padded last batches
    config.num_train_steps = steps
    config.log_every_steps = 1
    config.eval_every_steps = 100  # only at the end
    config.checkpoint_every_steps = 100
    config.async_checkpoints = False
    return config


@pytest.fixture(scope="module")
def pretrained(tiny_faces_config, tmp_path_factory):
    """Two runs in one workdir: 8 steps, then resumed to 16."""
    workdir = tmp_path_factory.mktemp("landmarks")
    data = tiny_faces_config.copy_and_resolve_references()
    data.eval_split = "validation"
    first = pretrain.pretrain(_config(data, 8), str(workdir))
    second = pretrain.pretrain(_config(data, 16), str(workdir))
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return workdir, first, second, lines


def test_pretrain_lowers_the_loss_resumes_and_reports(pretrained, tiny_faces_config):
    workdir, first, second, lines = pretrained
    train = [x for x in lines if x["split"] == "train"]
    steps = [x["step"] for x in train]
    assert steps == list(range(1, 17)), steps  # the second run went on from step 8
    losses = [x["loss"] for x in train]
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    # Each finished run reported the held-out test split once, every face counted.
    assert first["num_examples"] == second["num_examples"] == 70
    assert first["step"] == 8 and second["step"] == 16
    report = json.loads((workdir / "landmarks_eval.json").read_text())
    assert report["nme"] == pytest.approx(second["nme"]) and np.isfinite(report["nme"])
    assert (workdir / "landmarks_eval.png").stat().st_size > 1000
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))


def test_init_from_loads_the_pretrained_trunk_into_grefel(pretrained):
    workdir = pretrained[0]
    saved, _, _ = checkpoints.load_inference_checkpoint(workdir, check_shapes=False)
    config = make_model_config("tiny", "grefel", 7, backbone_overrides={"image_size": IMAGE_SIZE})
    shapes = checkpoints.expected_variable_shapes(config)
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    merged, loaded = checkpoints.merge_pretrained(fresh, workdir)
    assert loaded == ["face_landback"]
    for collection in ("params", "batch_stats"):
        want = flatten_dict(saved[collection]["face_landback"])
        got = flatten_dict(merged[collection]["face_landback"])
        trunk = {k: v for k, v in want.items() if k[0] != "output_layer"}
        assert len(trunk) < len(want)  # the GDC head was saved, and is not in GReFEL
        assert set(got) == set(trunk)
        for key, value in trunk.items():
            np.testing.assert_array_equal(got[key], value, err_msg=str(key))
    # Everything else stays as initialised.
    assert not any(np.any(v) for v in flatten_dict(merged["params"]["ir_back"]).values())


def test_datasets_without_the_layout_fail_in_one_line(tiny_faces_config):
    from grefel_jax.data import landmark_layouts as points
    from grefel_jax.landmarks import data

    with pytest.raises(ValueError, match=r"synthetic_faces/tiny_64 stores landmarks of shape"):
        data.check_landmark_dataset(tiny_faces_config, points.IBUG_68)
    with pytest.raises(ValueError, match=r"config.data.name='raf_db' has no landmark layout"):
        points.layout_for("raf_db")
