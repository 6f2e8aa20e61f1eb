"""The pretrained backbones shipped in grefel_jax/assets/pretrained (issue 26): each loads,
carries its provenance, and reproduces its recorded number on a small sample of the same
held-out data, rendered here from the same seeds: the identity network's verification
accuracy on held-out identities, the landmark network's NME on test faces. The tolerance is
the sampling error of the small sample (4 standard errors), not a loosened bound: a backbone
that does not match its provenance fails."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from grefel_jax import checkpoints
from grefel_jax.checkpoints.pretrained import packaged_dir, resolve_source
from grefel_jax.data import augment, synthetic_faces
from grefel_jax.data.builders import synthetic_faces as faces_builder
from grefel_jax.data.builders import synthetic_identities
from grefel_jax.data.landmark_layouts import layout_for
from grefel_jax.identity import verification
from grefel_jax.landmarks import losses as landmark_losses
from grefel_jax.models.identity import IdentityHeadConfig, IdentityNet, identity_sizes
from grefel_jax.models.landmarks import LandmarkNet
from grefel_jax.preprocess import preprocess_eval_image

IDENTITY = "tiny64_identity"
LANDMARKS = "tiny64_landmarks"


def _load(name):
    path = resolve_source(f"package:{name}")
    variables, model_config, _ = checkpoints.load_inference_checkpoint(path, check_shapes=False)
    provenance = json.loads((packaged_dir() / name / "provenance.json").read_text())
    return variables, model_config, provenance


def test_the_demo_backbones_are_packaged_with_their_provenance():
    shipped = sorted(p.name for p in packaged_dir().iterdir() if p.is_dir())
    assert {IDENTITY, LANDMARKS} <= set(shipped)
    for name in (IDENTITY, LANDMARKS):
        _, model_config, provenance = _load(name)
        assert provenance["rebuild"]["command"] == "make pretrained"
        assert provenance["machine"]["cpu"] and provenance["machine"]["cores"]
        assert provenance["commit"] and provenance["packaged_utc"]
        assert model_config.backbone.image_size == 64 and model_config.backbone.dims[0] == 16


def test_identity_backbone_reproduces_its_verification_accuracy():
    """120 images of 40 of the recorded test identities (the `synthetic_identities/96` test
    split: labels 1100-1299, rendered from the builder's seeds), flip-averaged embeddings,
    10 folds of balanced pairs."""
    variables, model_config, provenance = _load(IDENTITY)
    recorded = provenance["report"]
    assert recorded["split"] == "test" and recorded["num_pairs"] >= 6000
    cfg = synthetic_identities.CONFIGS[0]  # '96', the recipe's dataset
    first, _, _ = cfg.identities()["test"]
    size = model_config.backbone.image_size
    labels, images = [], []
    for identity in range(first, first + 40):
        for image in range(3):
            rgb = synthetic_identities.render_identity_image(cfg.seed, identity, image, 96)
            images.append(preprocess_eval_image(rgb, size))
            labels.append(identity)
    sizes = identity_sizes(variables["params"])
    net = IdentityNet(
        model_config.backbone,
        IdentityHeadConfig(sizes["stage4_units"], sizes["embedding_dim"], num_identities=1),
    )
    x = jnp.asarray(np.stack(images))
    embed = jax.jit(lambda v, x: net.apply(v, x, train=False, embed_only=True)["embedding"])
    embedding = np.asarray(embed(variables, x) + embed(variables, x[:, :, ::-1]))
    pairs = verification.make_pairs(np.asarray(labels), pairs_per_fold=30, seed=0)
    accuracy = verification.verification_accuracy(
        verification.pair_scores(embedding, pairs), pairs
    )["accuracy"]
    p = recorded["verification_accuracy"]
    tolerance = 4 * np.sqrt(max(p * (1 - p), 0.01 * 0.99) / len(pairs))
    assert accuracy == pytest.approx(p, abs=tolerance), (accuracy, p, len(pairs))


def test_landmark_backbone_reproduces_its_nme():
    """The first 120 faces of the recorded test split (`synthetic_faces/demo_96`, rendered
    from the builder's seeds) through the packaged MobileFaceNet and its GDC head."""
    variables, model_config, provenance = _load(LANDMARKS)
    recorded = provenance["report"]
    assert recorded["split"] == "test"
    config = next(c for c in faces_builder.CONFIGS if c.name == "demo_96")
    difficulty = synthetic_faces.Difficulty(
        intensity_range=(config.intensity_min, 1.0), max_blend=config.max_blend
    )
    size = model_config.backbone.image_size
    layout = layout_for("synthetic_faces")
    images, targets = [], []
    split = faces_builder._SPLIT_IDS["test"]
    for index in range(120):  # the builder's seed of test example `index`
        face = synthetic_faces.render_face(
            (config.seed, split, index), synthetic_faces.label_for_index(index), 96, difficulty
        )
        images.append(preprocess_eval_image(face["image"], size))
        targets.append(augment.pixels_to_unit(face["landmarks"], 96, 96))
    net = LandmarkNet(model_config.backbone, layout.num_points)
    pred = np.asarray(net.apply(variables, jnp.asarray(np.stack(images)), train=False))
    target = np.stack(targets)
    right = target[:, list(layout.right_eye)].mean(axis=1)
    left = target[:, list(layout.left_eye)].mean(axis=1)
    per_face = np.asarray(landmark_losses.nme(pred, target, left, right))
    nme = float(per_face.mean())
    tolerance = 4 * float(per_face.std(ddof=1)) / np.sqrt(len(per_face))
    assert nme == pytest.approx(recorded["nme"], abs=tolerance), (nme, recorded["nme"])
