"""Losses (grefel_jax/losses.py) against numpy written from docs/losses.md §3 (and torch NLL)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from grefel_jax import losses

B, C, K, D = 6, 5, 3, 8


def _softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _np_wce(q, y, w=None, eps=0.0, mask=None):
    # -Σ_b w_{y_b} Σ_c t_bc log q_bc / Σ_b w_{y_b}, t = (1-eps) onehot + eps/C.
    n, c = q.shape
    w = np.ones(c) if w is None else w
    mask = np.ones(n, bool) if mask is None else mask
    num = den = 0.0
    for b in range(n):
        if not mask[b]:
            continue
        t = np.full(c, eps / c)
        t[y[b]] += 1 - eps
        num += w[y[b]] * -(t * np.log(q[b])).sum()
        den += w[y[b]]
    return num / den


def _np_anchor_official(a):
    c, k, d = a.shape
    total = 0.0
    for i in range(c):
        for kk in range(c):
            for j in range(k):
                total += np.sum((a[i, j] - a[kk, j]) ** 2)
    return -total / (k * k * np.sqrt(d))


def _np_anchor_margin(a, margin):
    c, k, d = a.shape
    vals = []
    for i in range(c):
        for kk in range(c):
            if i == kk:
                continue
            for j in range(k):
                for m in range(k):
                    dist = np.sqrt(np.sum((a[i, j] - a[kk, m]) ** 2)) / np.sqrt(d)
                    vals.append(max(0.0, margin - dist))
    return np.mean(vals)


def _np_center(e, a, y, conf):
    n, d = e.shape
    vals = [
        conf[b] * min(np.sqrt(np.sum((e[b] - a[y[b], j]) ** 2)) for j in range(a.shape[1]))
        for b in range(n)
    ]
    return np.sum(vals) / n / np.sqrt(d)


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return dict(
        q=_softmax(rng.normal(size=(B, C)) * 2),
        y=rng.integers(0, C, size=B),
        w=rng.uniform(0.2, 3.0, size=C),
        e=rng.normal(size=(B, D)),
        a=rng.normal(size=(C, K, D)),
        conf=rng.uniform(0, 1, size=B),
    )


def f32(x):
    return jnp.asarray(x, jnp.float32)


@pytest.mark.parametrize("use_weights", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_weighted_cross_entropy_matches_numpy(batch, use_weights, smoothing):
    w = batch["w"] if use_weights else None
    got = losses.weighted_cross_entropy(
        losses.safe_log(f32(batch["q"])),
        jnp.asarray(batch["y"]),
        class_weights=None if w is None else f32(w),
        label_smoothing=smoothing,
    )
    np.testing.assert_allclose(got, _np_wce(batch["q"], batch["y"], w, smoothing), rtol=1e-5)


def test_weighted_cross_entropy_equals_torch_nll_and_ce(batch):
    q, y, w = batch["q"], batch["y"], batch["w"]
    ours = losses.weighted_cross_entropy(
        losses.safe_log(f32(q)), jnp.asarray(y), class_weights=f32(w)
    )
    ref = torch.nn.NLLLoss(weight=torch.tensor(w))(torch.log(torch.tensor(q)), torch.tensor(y))
    np.testing.assert_allclose(ours, ref.item(), rtol=1e-5)
    # Unweighted + smoothing: the same as PyTorch's CrossEntropyLoss on logits.
    logits = np.log(q) + 0.7
    ours = losses.weighted_cross_entropy(
        jax.nn.log_softmax(f32(logits)), jnp.asarray(y), label_smoothing=0.2
    )
    ref = torch.nn.CrossEntropyLoss(label_smoothing=0.2)(torch.tensor(logits), torch.tensor(y))
    np.testing.assert_allclose(ours, ref.item(), rtol=1e-5)


def test_masked_cross_entropy_ignores_padding(batch):
    q, y, w = batch["q"], batch["y"], batch["w"]
    mask = np.array([True, True, False, True, False, True])
    got = losses.weighted_cross_entropy(
        losses.safe_log(f32(q)), jnp.asarray(y), class_weights=f32(w), mask=jnp.asarray(mask)
    )
    np.testing.assert_allclose(got, _np_wce(q[mask], y[mask], w), rtol=1e-5)
    # Garbage in the padded rows (zeros, other labels) changes nothing.
    q2, y2 = q.copy(), y.copy()
    q2[~mask] = 0.0
    y2[~mask] = (y2[~mask] + 1) % C
    got2 = losses.weighted_cross_entropy(
        losses.safe_log(f32(q2)), jnp.asarray(y2), class_weights=f32(w), mask=jnp.asarray(mask)
    )
    np.testing.assert_allclose(got2, got, rtol=1e-6)
    all_padded = losses.weighted_cross_entropy(
        losses.safe_log(f32(q)), jnp.asarray(y), mask=jnp.zeros(B, bool)
    )
    assert float(all_padded) == 0.0


def test_cross_entropy_finite_on_zero_probability():
    q = jax.nn.one_hot(jnp.array([0, 1]), C)  # true class of sample 1 gets q = 0 below
    labels = jnp.array([0, 2])
    value, grad = jax.value_and_grad(
        lambda q: losses.weighted_cross_entropy(losses.safe_log(q), labels)
    )(q)
    assert np.isfinite(float(value)) and np.all(np.isfinite(np.asarray(grad)))


def test_anchor_loss_official_matches_numpy(batch):
    np.testing.assert_allclose(
        losses.anchor_loss(f32(batch["a"])), _np_anchor_official(batch["a"]), rtol=1e-5
    )


def test_anchor_loss_official_zero_at_zero_init():
    zeros = jnp.zeros((C, K, D))
    value, grad = jax.value_and_grad(losses.anchor_loss)(zeros)
    assert float(value) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_anchor_loss_margin_matches_numpy_and_is_bounded(batch):
    a = batch["a"] * 0.5
    np.testing.assert_allclose(
        losses.anchor_loss(f32(a), "margin", 1.0), _np_anchor_margin(a, 1.0), rtol=1e-5
    )
    # Bounded: margin at coincident anchors, 0 when far apart, never below 0 or above margin.
    assert float(losses.anchor_loss(jnp.zeros((C, K, D)), "margin", 0.7)) == pytest.approx(
        0.7, abs=1e-5
    )
    assert float(losses.anchor_loss(f32(batch["a"] * 1e3), "margin", 0.7)) == 0.0
    for scale in (0.01, 0.1, 1.0, 10.0):
        v = float(losses.anchor_loss(f32(batch["a"] * scale), "margin", 0.7))
        assert 0.0 <= v <= 0.7
    grad = jax.grad(lambda a: losses.anchor_loss(a, "margin"))(jnp.zeros((C, K, D)))
    assert np.all(np.isfinite(np.asarray(grad)))
    with pytest.raises(ValueError, match="form"):
        losses.anchor_loss(f32(a), "hinge")


def test_center_loss_matches_numpy(batch):
    got = losses.center_loss(
        f32(batch["e"]), f32(batch["a"]), jnp.asarray(batch["y"]), f32(batch["conf"])
    )
    ref = _np_center(batch["e"], batch["a"], batch["y"], batch["conf"])
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def test_center_loss_confidence_not_detached(batch):
    e, a, y = f32(batch["e"]), f32(batch["a"]), jnp.asarray(batch["y"])
    grad = jax.grad(lambda c: losses.center_loss(e, a, y, c))(f32(batch["conf"]))
    # d L / d c_b = min_j ||e_b - a_{y_b j}|| / (sqrt(d) B)
    ref = [
        min(np.linalg.norm(batch["e"][b] - batch["a"][batch["y"][b], j]) for j in range(K))
        / np.sqrt(D)
        / B
        for b in range(B)
    ]
    np.testing.assert_allclose(grad, ref, rtol=1e-5)


def test_center_loss_degenerate_gradients_and_mask(batch):
    y = jnp.asarray(batch["y"])
    a = f32(batch["a"])
    on_anchor = a[y, 0]  # each embedding exactly on an anchor of its class
    for e, anchors in ((jnp.zeros((B, D)), jnp.zeros((C, K, D))), (on_anchor, a)):
        grads = jax.grad(lambda e, an, c: losses.center_loss(e, an, y, c), argnums=(0, 1, 2))(
            e, anchors, jnp.ones(B)
        )
        for g in grads:
            assert np.all(np.isfinite(np.asarray(g)))
    mask = np.arange(B) % 2 == 0
    got = losses.center_loss(f32(batch["e"]), a, y, f32(batch["conf"]), jnp.asarray(mask))
    ref = _np_center(batch["e"][mask], batch["a"], batch["y"][mask], batch["conf"][mask])
    np.testing.assert_allclose(got, ref, rtol=1e-5)


def _grefel_outputs(batch, p, q_corr) -> dict:
    """A GReFEL head's output dict with primary p (B, C) and corrected q_corr (B, C)."""
    return {
        "logits": f32(np.log(p)),
        "probs": f32(p),
        "confidence": f32(batch["conf"]),
        "corrected_probs": f32(q_corr),
        "head_embedding": f32(batch["e"]),
        "anchors": f32(batch["a"]),
    }


def test_total_loss_grefel_matches_formula(batch):
    rng = np.random.default_rng(1)
    p, q_corr = batch["q"], _softmax(rng.normal(size=(B, C)))
    outputs = _grefel_outputs(batch, p, q_corr)
    tau, lce, la, lc = 0.4, 1.5, 0.3, 2.0
    loss, metrics = losses.total_loss(
        outputs,
        jnp.asarray(batch["y"]),
        tau=tau,
        class_weights=f32(batch["w"]),
        config=losses.LossConfig(
            label_smoothing=0.1,
            lambda_ce=lce,
            lambda_anchor=la,
            lambda_center=lc,
            anchor_loss_form="official",
        ),
    )
    q_final = (1 - tau) * p + tau * q_corr
    l_cls = _np_wce(q_final, batch["y"], batch["w"], 0.1)
    l_a = _np_anchor_official(batch["a"])
    l_c = _np_center(batch["e"], batch["a"], batch["y"], batch["conf"])
    np.testing.assert_allclose(loss, lce * l_cls + tau * (la * l_a + lc * l_c), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_cls"], l_cls, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_anchor"], l_a, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_center"], l_c, rtol=1e-5)
    assert float(metrics["tau"]) == pytest.approx(tau)
    assert float(metrics["loss"]) == float(loss)
    _, m_margin = losses.total_loss(
        outputs,
        jnp.asarray(batch["y"]),
        tau=tau,
        config=losses.LossConfig(anchor_loss_form="margin", anchor_margin=0.5),
    )
    np.testing.assert_allclose(
        m_margin["loss_anchor"], _np_anchor_margin(batch["a"], 0.5), rtol=1e-5
    )


@pytest.mark.parametrize("tau", [0.0, 0.4, 1.0])
def test_total_loss_trust_schedules(batch, tau):
    """loss.trust: 'none' = CE of p, 'full' = CE of q_corr at any step; aux losses keep τ."""
    rng = np.random.default_rng(3)
    p, q_corr = batch["q"], _softmax(rng.normal(size=(B, C)))
    outputs = _grefel_outputs(batch, p, q_corr)
    aux = _np_anchor_official(batch["a"]) + _np_center(
        batch["e"], batch["a"], batch["y"], batch["conf"]
    )
    cases = {"ramp": ((1 - tau) * p + tau * q_corr, tau), "none": (p, 0.0), "full": (q_corr, 1.0)}
    for trust, (q_final, trust_value) in cases.items():
        config = losses.LossConfig(anchor_loss_form="official", trust=trust)
        loss, metrics = losses.total_loss(outputs, jnp.asarray(batch["y"]), tau=tau, config=config)
        l_cls = _np_wce(q_final, batch["y"])
        np.testing.assert_allclose(metrics["loss_cls"], l_cls, rtol=1e-5, err_msg=trust)
        np.testing.assert_allclose(loss, l_cls + tau * aux, rtol=1e-5, err_msg=trust)
        assert float(metrics["trust"]) == pytest.approx(trust_value), trust
        assert float(metrics["tau"]) == pytest.approx(tau), trust
    # At an interior τ the three targets differ, so each branch above is really checked.
    if 0 < tau < 1:
        assert len({round(_np_wce(q, batch["y"]), 4) for q, _ in cases.values()}) == 3


def test_loss_trust_is_validated():
    with pytest.raises(ValueError, match=r"^loss\.trust='off': expected one of"):
        losses.LossConfig(trust="off")
    assert losses.make_loss_config("grefel", {"trust": "full"}).trust == "full"
    assert losses.make_loss_config("grefel").trust == "ramp"


def test_total_loss_poster_uses_logits(batch):
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(B, C)) * 3
    outputs = {"logits": f32(logits), "probs": f32(_softmax(logits))}
    loss, metrics = losses.total_loss(outputs, jnp.asarray(batch["y"]), tau=0.5, head_kind="poster")
    np.testing.assert_allclose(loss, _np_wce(_softmax(logits), batch["y"]), rtol=1e-5)
    assert float(metrics["loss_anchor"]) == 0.0 and float(metrics["loss_center"]) == 0.0
    mask = np.array([True, False] * 3)
    loss_m, _ = losses.total_loss(
        outputs,
        jnp.asarray(batch["y"]),
        tau=0.5,
        head_kind="poster",
        mask=jnp.asarray(mask),
        class_weights=f32(batch["w"]),
    )
    np.testing.assert_allclose(
        loss_m, _np_wce(_softmax(logits)[mask], batch["y"][mask], batch["w"]), rtol=1e-5
    )
