"""Face-identity pretraining pieces (issue 26): the identity sampler, the identity datasets,
the angular-margin losses on hand-made cases, and verification on a hand-made pair set."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grefel_jax.data import synthetic_faces
from grefel_jax.data.builders import identity_folder, synthetic_identities
from grefel_jax.identity import losses, verification

# --- the identity sampler ------------------------------------------------------------------


def _identity_params(identity) -> dict:
    return {k: np.asarray(v) for k, v in vars(identity).items()}


def test_identity_sampler_repeats_an_identity_and_tells_identities_apart():
    a = _identity_params(synthetic_faces.sample_identity((0, 7)))
    again = _identity_params(synthetic_faces.sample_identity((0, 7)))
    other = _identity_params(synthetic_faces.sample_identity((0, 8)))
    assert a.keys() == again.keys() == other.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], again[key], err_msg=key)
    differing = [k for k in a if not np.array_equal(a[k], other[k])]
    assert len(differing) >= len(a) - 3, differing  # continuous draws all differ


def test_images_of_one_identity_share_the_face_and_vary_the_rest():
    """Two images of one identity differ (pose, lighting, expression) but are far more alike
    in colour than images of two identities; the expression datasets are unchanged by the
    identity argument (None draws the identity from the image seed, as before)."""
    first = synthetic_identities.render_identity_image(0, 3, 0, 64).astype(np.float32)
    second = synthetic_identities.render_identity_image(0, 3, 1, 64).astype(np.float32)
    assert np.abs(first - second).mean() > 5  # not the same picture
    same = synthetic_faces.render_face((1, 0, 5), 2, 64)
    explicit = synthetic_faces.render_face(
        (1, 0, 5), 2, 64, identity=synthetic_faces.sample_identity((9, 9))
    )
    plain = synthetic_faces.render_face((1, 0, 5), 2, 64)
    np.testing.assert_array_equal(same["image"], plain["image"])
    assert not np.array_equal(explicit["image"], plain["image"])


def test_identity_datasets_store_no_expression():
    from grefel_jax.data.builders import synthetic_faces as expression_builder

    builder = synthetic_identities.SyntheticIdentities(
        data_dir="/nonexistent", config="tiny_64", num_workers=0
    )
    features = set(builder.info.features)
    assert features == {"image", "label", "file_name"}
    expression = expression_builder.SyntheticFaces(data_dir="/nonexistent", config="tiny_64")
    assert {"action_units", "intensity"} <= set(expression.info.features)


def test_synthetic_identity_splits_hold_disjoint_identities():
    cfg = synthetic_identities.CONFIGS[0]
    spans = cfg.identities()
    ranges = [set(range(first, first + n)) for first, n, _ in spans.values()]
    assert spans["train"][0] == 0  # training identities are labels 0 .. N-1
    for i in range(len(ranges)):
        for j in range(i + 1, len(ranges)):
            assert not ranges[i] & ranges[j]
    assert sum(len(r) for r in ranges) == cfg.num_identities


def test_identity_folder_holds_out_whole_identities(tmp_path):
    from PIL import Image

    names = [f"person{i:02d}" for i in range(50)]
    for name in names:
        (tmp_path / name).mkdir()
        for j in range(2):
            Image.new("RGB", (8, 8), (j * 40, 0, 0)).save(tmp_path / name / f"{j}.png")
    plan = identity_folder.IdentityFolder.check_manual_dir(tmp_path)
    splits = plan["split_identities"]
    assert len(splits["validation"]) == len(splits["test"]) == 20  # the minimum held out
    assert set(splits["train"]) | set(splits["validation"]) | set(splits["test"]) == set(names)
    assert not set(splits["train"]) & (set(splits["validation"]) | set(splits["test"]))
    assert not set(splits["validation"]) & set(splits["test"])
    # Labels: training identities first, so the margin head's classes are 0 .. N-1.
    assert plan["label_names"][: len(splits["train"])] == splits["train"]
    # The split depends on the names only, not on the order they are listed in.
    assert identity_folder.split_identities(names[::-1]) == splits
    assert identity_folder.held_out_count(10_000) == 500


def test_identity_folder_too_small_is_one_clear_error(tmp_path):
    from grefel_jax.data import errors

    (tmp_path / "a").mkdir()
    with pytest.raises(errors.ManualDataMissingError, match="at least 42 needed"):
        identity_folder.IdentityFolder.check_manual_dir(tmp_path)


# --- the margin losses ---------------------------------------------------------------------


def test_cosface_and_arcface_logits_on_a_hand_made_case():
    theta = np.array([[math.radians(60), math.radians(80), math.radians(100)]])
    cosine = np.cos(theta).astype(np.float32)
    labels = np.array([0])
    cos_face = np.asarray(
        losses.margin_logits(cosine, labels, kind="cosface", scale=10, margin=0.35)
    )
    np.testing.assert_allclose(cos_face[0], 10 * (np.cos(theta[0]) - [0.35, 0, 0]), rtol=1e-5)
    arc = np.asarray(losses.margin_logits(cosine, labels, kind="arcface", scale=10, margin=0.5))
    expected = 10 * np.array([math.cos(math.radians(60) + 0.5), *np.cos(theta[0, 1:])])
    np.testing.assert_allclose(arc[0], expected, rtol=1e-5)
    # Past theta = pi - m the target logit goes on linearly (the loss stays monotone).
    wide = np.array([[math.cos(math.pi - 0.2), 0.0]], np.float32)
    far = np.asarray(losses.margin_logits(wide, labels, kind="arcface", scale=1, margin=0.5))
    np.testing.assert_allclose(far[0, 0], wide[0, 0] - 0.5 * math.sin(0.5), rtol=1e-5)
    # The loss is the cross-entropy of those logits, and zero margin is a plain softmax.
    loss = float(losses.margin_loss(cosine, labels, kind="cosface", scale=10, margin=0.35))
    log_probs = cos_face[0] - np.log(np.sum(np.exp(cos_face[0])))
    assert loss == pytest.approx(-log_probs[0], rel=1e-5)
    plain = np.asarray(losses.margin_logits(cosine, labels, kind="arcface", scale=10, margin=0.0))
    np.testing.assert_allclose(plain, 10 * cosine, rtol=1e-5)


@pytest.mark.parametrize("kind", ["arcface", "cosface"])
def test_margin_loss_takes_a_traced_margin(kind):
    """The margin warm-up makes m a function of the step: the loss must trace with it."""
    import jax

    cosine = np.array([[0.5, 0.1, -0.2]], np.float32)
    labels = np.array([0])
    traced = jax.jit(lambda c, m: losses.margin_loss(c, labels, kind=kind, scale=30.0, margin=m))(
        cosine, np.float32(0.3)
    )
    plain = losses.margin_loss(cosine, labels, kind=kind, scale=30.0, margin=0.3)
    assert float(traced) == pytest.approx(float(plain), rel=1e-5)


def test_margin_loss_has_finite_gradients_at_the_poles():
    import jax

    cosine = np.array([[1.0, -1.0, 0.0]], np.float32)
    grad = jax.grad(
        lambda c: losses.margin_loss(c, np.array([0]), kind="arcface", scale=30, margin=0.5)
    )(cosine)
    assert np.all(np.isfinite(np.asarray(grad)))
    with pytest.raises(ValueError, match="identity.loss='sphereface'"):
        losses.margin_logits(cosine, np.array([0]), kind="sphereface", scale=1, margin=0.1)


# --- verification --------------------------------------------------------------------------


def test_pairs_are_balanced_distinct_and_folds_share_no_identity():
    labels = np.repeat(np.arange(40), 4)
    pairs = verification.make_pairs(labels, pairs_per_fold=5, seed=1)
    assert len(pairs) == 10 * 10
    for fold in range(10):
        in_fold = pairs.fold == fold
        assert pairs.same[in_fold].sum() == (~pairs.same[in_fold]).sum() == 5
    same = labels[pairs.first] == labels[pairs.second]
    np.testing.assert_array_equal(same, pairs.same)
    assert np.all(pairs.first != pairs.second)
    keys = {(min(a, b), max(a, b)) for a, b in zip(pairs.first, pairs.second)}
    assert len(keys) == len(pairs)
    ids_by_fold = [
        set(labels[pairs.first[pairs.fold == f]]) | set(labels[pairs.second[pairs.fold == f]])
        for f in range(10)
    ]
    for i in range(10):
        for j in range(i + 1, 10):
            assert not ids_by_fold[i] & ids_by_fold[j]
    with pytest.raises(ValueError, match="at least 20 identities"):
        verification.make_pairs(np.repeat(np.arange(5), 3))


def test_verification_accuracy_and_tar_on_a_hand_made_pair_set():
    """Ten folds of 2 same + 2 different pairs whose scores are set by hand: same pairs score
    0.9, different pairs 0.1, except one different pair in fold 3 that scores 0.95 (a false
    accept at any threshold that keeps the same pairs)."""
    folds = np.repeat(np.arange(10), 4)
    same = np.tile([True, True, False, False], 10)
    scores = np.where(same, 0.9, 0.1)
    scores[3 * 4 + 2] = 0.95
    pairs = verification.Pairs(
        first=np.arange(40), second=np.arange(40) + 40, same=same, fold=folds
    )
    result = verification.verification_accuracy(scores, pairs)
    # Every fold's threshold (from the other folds) lies between 0.1 and 0.9.
    assert all(0.1 < t < 0.9 for t in result["thresholds"])
    expected = [1.0] * 10
    expected[3] = 0.75
    np.testing.assert_allclose(result["fold_accuracies"], expected)
    assert result["accuracy"] == pytest.approx(0.975)
    # 20 different pairs: FAR 1e-3 allows floor(0.02) = 0 false accepts, so the threshold is
    # the top different score 0.95 and no same pair (0.9) is above it; at FAR = 0.05 one
    # false accept is allowed and every same pair passes.
    strict = verification.tar_at_far(scores, same, 1e-3)
    assert strict["tar"] == 0.0 and strict["far"] == 0.0 and strict["threshold"] == 0.95
    loose = verification.tar_at_far(scores, same, 0.05)
    assert loose["tar"] == 1.0 and loose["far"] == pytest.approx(1 / 20)


def test_pair_scores_are_cosines():
    embeddings = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, -2.0]])
    pairs = verification.Pairs(
        first=np.array([0, 0]),
        second=np.array([1, 2]),
        same=np.array([True, False]),
        fold=np.array([0, 0]),
    )
    np.testing.assert_allclose(verification.pair_scores(embeddings, pairs), [2**-0.5, 0.0])
