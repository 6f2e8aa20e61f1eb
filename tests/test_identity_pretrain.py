"""Identity pretraining end to end on tiny generated identities (issue 26): the loss falls, a
second run resumes from the first one's checkpoint on the one training loop, the verification
report is written, and `init_from` with an identity and a landmark pretraining fills both of
GReFEL's backbones exactly."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from grefel_jax import checkpoints, settings
from grefel_jax.configs import identity_synthetic
from grefel_jax.models import make_model_config
from grefel_jax.pretrain import identity

IMAGE_SIZE = 64  # tiny_64's side: no resize


def _config(data_config, steps: int):
    config = identity_synthetic.get_config()
    config.data = data_config
    config.model.backbone.image_size = IMAGE_SIZE
    # A constant rate, so that the resumed run compiles the very step of the first one (the
    # persistent compilation cache serves it) instead of a step for another cosine length.
    config.optim.schedule = "constant"
    config.optim.warmup_steps = 0
    config.optim.lr_backbone = config.optim.lr_head = 3e-3
    config.identity.pairs_per_fold = 3
    config.batch_size = 16
    config.eval_batch_size = 32  # 60 held-out faces: a padded last batch
    config.num_train_steps = steps
    config.log_every_steps = 1
    config.eval_every_steps = 100  # only at the end
    config.checkpoint_every_steps = 100
    config.async_checkpoints = False
    return config


@pytest.fixture(scope="module")
def pretrained(tiny_identities_config, tmp_path_factory):
    """Two runs in one workdir: 10 steps, then resumed to 20."""
    workdir = tmp_path_factory.mktemp("identity")
    data = tiny_identities_config.copy_and_resolve_references()
    first = identity.pretrain(_config(data, 10), str(workdir))
    second = identity.pretrain(_config(data, 20), str(workdir))
    lines = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return workdir, first, second, lines


def test_identity_pretraining_lowers_the_loss_resumes_and_reports(pretrained):
    workdir, first, second, lines = pretrained
    train = [x for x in lines if x["split"] == "train"]
    assert [x["step"] for x in train] == list(range(1, 21))  # the second run went on from 10
    losses = [x["loss"] for x in train]
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    # Each finished run reported the held-out test identities, every image counted once.
    assert first["num_images"] == second["num_images"] == 60
    assert second["num_identities"] == 20 and second["num_pairs"] == 60
    assert 0.0 <= second["verification_accuracy"] <= 1.0
    # The report reads the best checkpoint by validation verification accuracy.
    validation = {
        x["step"]: x["verification_accuracy"] for x in lines if x["split"] == "validation"
    }
    assert sorted(validation) == [10, 20]
    assert first["step"] == 10
    assert validation[second["step"]] == max(validation.values())
    report = json.loads((workdir / "identity_eval.json").read_text())
    assert report["verification_accuracy"] == pytest.approx(second["verification_accuracy"])
    assert {"verification_accuracy", "tar_at_far_1e-3", "num_pairs"} <= set(report)
    assert len(report["neighbours"]) == 6 and len(report["neighbours"][0]["neighbours"]) == 5
    assert (workdir / "identity_neighbours.png").stat().st_size > 1000


def test_init_from_two_sources_fills_both_backbones(pretrained, tmp_path):
    """An identity pretraining (IR-50) and a landmark checkpoint (MobileFaceNet) in one
    `init_from`: each backbone equals its source, the parts GReFEL does not build are left
    out, the rest stays as initialised, and two sources of one module are refused."""
    workdir = pretrained[0]
    model_config = make_model_config(
        "tiny", "grefel", 7, backbone_overrides={"image_size": IMAGE_SIZE}
    )
    shapes = checkpoints.expected_variable_shapes(model_config)
    # A landmark checkpoint: random MobileFaceNet variables saved as a partial checkpoint.
    rng = np.random.default_rng(0)
    landmarks = {
        c: {
            "face_landback": jax.tree.map(
                lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes[c]["face_landback"]
            )
        }
        for c in ("params", "batch_stats")
    }
    landmark_dir = tmp_path / "landmarks"
    checkpoints.save_inference_checkpoint(landmark_dir, landmarks, model_config)

    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    sources = settings.init_from_sources(f"{workdir}, {landmark_dir}")
    merged, loaded = checkpoints.merge_pretrained_sources(fresh, sources)
    assert loaded == {str(workdir): ["ir_back"], str(landmark_dir): ["face_landback"]}
    saved, _, _ = checkpoints.load_inference_checkpoint(workdir, check_shapes=False)
    for collection in ("params", "batch_stats"):
        got = flatten_dict(merged[collection]["ir_back"])
        want = flatten_dict(saved[collection]["ir_back"])
        stages = {k: v for k, v in want.items() if not k[0].startswith(("body4_", "output_"))}
        assert len(stages) < len(want)  # the fourth stage and embedding were saved...
        assert set(got) == set(stages)  # ...and are not in GReFEL
        for key, value in stages.items():
            np.testing.assert_array_equal(got[key], value, err_msg=str(key))
        lm_got = flatten_dict(merged[collection]["face_landback"])
        for key, value in flatten_dict(landmarks[collection]["face_landback"]).items():
            np.testing.assert_array_equal(lm_got[key], value, err_msg=str(key))
    assert "margin_head" not in merged["params"]
    assert not any(np.any(v) for v in flatten_dict(merged["params"]["head"]).values())

    with pytest.raises(checkpoints.CheckpointError, match="both hold .*face_landback"):
        checkpoints.merge_pretrained_sources(fresh, [str(landmark_dir), str(landmark_dir)])


def test_an_expression_dataset_is_refused(tiny_faces_config, tmp_path):
    config = _config(tiny_faces_config.copy_and_resolve_references(), 2)
    with pytest.raises(ValueError, match="labelled by identity"):
        identity.pretrain(config, str(tmp_path / "w"))
    assert not (tmp_path / "w").exists()  # refused before anything was written


def test_init_from_with_ema_gives_the_ema_its_own_buffers(pretrained):
    """With EMA on, `init_from` copies the loaded parameters into the EMA: the jitted step
    donates the whole state, and an EMA sharing the parameters' buffers was a double donation
    (`Attempt to donate the same buffer twice`)."""
    from grefel_jax import loop, sharding
    from grefel_jax.train_state import TrainState

    workdir = pretrained[0]
    model_config = make_model_config(
        "tiny", "grefel", 7, backbone_overrides={"image_size": IMAGE_SIZE}
    )
    shapes = checkpoints.expected_variable_shapes(model_config)
    mesh = sharding.make_mesh({"data": -1, "fsdp": 1})
    replicated = sharding.replicated(mesh)
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["params"])
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["batch_stats"]),
        opt_state={},
        ema_params=jax.tree.map(jnp.copy, params),
        rng=jnp.zeros((2,), jnp.uint32),
    )
    shardings = jax.tree.map(lambda _: replicated, state)
    state = loop.load_pretrained(state, (str(workdir),), shardings)
    np.testing.assert_array_equal(
        state.ema_params["ir_back"]["input_layer_0"]["kernel"],
        state.params["ir_back"]["input_layer_0"]["kernel"],
    )
    donated = jax.jit(lambda s: s.replace(step=s.step + 1), donate_argnums=0)(state)
    assert int(donated.step) == 1


def test_package_writes_a_loadable_backbone_with_provenance_and_no_absolute_path(
    pretrained, tmp_path, monkeypatch
):
    """`python -m grefel_jax.pretrain.package`'s function on a finished identity workdir: the
    package keeps `ir_back` (no margin head), records its report and recipe, and carries no
    path of where it was built or packaged (orbax's commit marker included)."""
    from grefel_jax.pretrain import package

    workdir = pretrained[0]
    monkeypatch.chdir(workdir.parent)  # the workdir as `make pretrained` gives it: relative
    target = package.package("identity", workdir.name, str(tmp_path / "assets"))
    variables, _, _ = checkpoints.load_inference_checkpoint(str(target), check_shapes=False)
    assert set(variables["params"]) == {"ir_back"}
    provenance = json.loads((target / "provenance.json").read_text())
    assert provenance["init_from"] == f"package:{target.name}"
    assert provenance["report"]["verification_accuracy"] == pytest.approx(
        pretrained[2]["verification_accuracy"]
    )
    assert provenance["recipe"]["num_train_steps"] == 20
    for path in target.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert str(tmp_path).encode() not in data, path
            assert str(workdir).encode() not in data, path  # the recipe's data_dir stays as given
