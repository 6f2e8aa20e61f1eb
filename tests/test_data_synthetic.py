"""The procedural face renderer: determinism, landmarks, expression geometry, overlap."""

from __future__ import annotations

import numpy as np

from grefel_jax.data import classes, face_geometry
from grefel_jax.data import synthetic_faces as sf


def test_render_is_deterministic_and_varied():
    a = sf.render_face((0, 0, 5), 3, 64)
    b = sf.render_face((0, 0, 5), 3, 64)
    c = sf.render_face((0, 0, 6), 3, 64)
    assert a["image"].shape == (64, 64, 3) and a["image"].dtype == np.uint8
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert np.abs(a["image"].astype(int) - c["image"].astype(int)).mean() > 10


def test_landmarks_are_the_drawn_points():
    names = sf.LANDMARK_NAMES
    assert len(names) == sf.NUM_LANDMARKS == 35
    for index in range(6):
        face = sf.render_face((1, 0, index), classes.RAF_DB.index("neutral"), 224)
        lm = face["landmarks"]
        assert lm.shape == (35, 2) and lm.dtype == np.float32
        inner = lm[9:]  # all but the jaw contour stay inside the frame
        assert (inner >= 0).all() and (inner < 224).all()
        grey = face["image"].astype(np.float32).mean(-1)
        for name in ("pupil_r", "pupil_l"):  # pupils are drawn near-black
            x, y = np.round(lm[names.index(name)]).astype(int)
            assert grey[y - 1 : y + 2, x - 1 : x + 2].mean() < 90, (index, name)
        # Subject's right eye is on the image left; the mouth is below the nose tip.
        assert lm[names.index("pupil_r"), 0] < lm[names.index("pupil_l"), 0]
        assert lm[names.index("upper_lip_top"), 1] > lm[names.index("nose_tip"), 1]


def test_expression_geometry_follows_action_units():
    rng = np.random.default_rng(0)
    ident = face_geometry.Identity(rng)
    names = sf.LANDMARK_NAMES

    def geometry(class_name):
        return face_geometry.face_geometry(ident, sf.PROTOTYPES[classes.RAF_DB.index(class_name)])[
            "landmarks"
        ]

    neutral, happy, sad = geometry("neutral"), geometry("happiness"), geometry("sadness")
    corner = names.index("mouth_corner_r")
    assert happy[corner, 1] < neutral[corner, 1] < sad[corner, 1]  # y grows downwards
    brow = names.index("brow_r_inner")
    assert geometry("surprise")[brow, 1] < neutral[brow, 1] < geometry("anger")[brow, 1]
    gap = names.index("lower_lip_inner")
    top = names.index("upper_lip_inner")
    assert geometry("surprise")[gap, 1] - geometry("surprise")[top, 1] > 0.2  # jaw drop


def test_classes_overlap_only_where_intended():
    """Nearest-prototype accuracy on sampled AU vectors: high but not perfect, with errors
    only inside the confusable pairs (fear/surprise, anger/disgust, sadness/neutral)."""
    n = 3500
    aus = np.stack(
        [sf.sample_action_units(np.random.default_rng((9, i)), i % 7)[0] for i in range(n)]
    )
    labels = np.arange(n) % 7
    # Compare directions (intensity varies), except neutral, whose prototype is zero.
    norms = np.linalg.norm(aus, axis=1, keepdims=True)
    proto = sf.PROTOTYPES / np.maximum(np.linalg.norm(sf.PROTOTYPES, axis=1, keepdims=True), 1e-6)
    scores = (aus / np.maximum(norms, 1e-6)) @ proto.T
    neutral = classes.RAF_DB.index("neutral")
    scores[:, neutral] = 0.9 - norms[:, 0]  # small AU vectors read as neutral
    predicted = scores.argmax(1)
    accuracy = (predicted == labels).mean()
    assert 0.8 < accuracy < 0.995
    errors = {(int(a), int(b)) for a, b in zip(labels, predicted) if a != b}
    partner_or_neutral = (
        {(c, int(sf.PARTNERS[c])) for c in range(7)}
        | {(c, neutral) for c in range(7)}
        | {(neutral, c) for c in range(7)}
    )
    frequent = [e for e in errors if sum((labels == e[0]) & (predicted == e[1])) > 0.01 * n / 7]
    assert set(frequent) <= partner_or_neutral, frequent
