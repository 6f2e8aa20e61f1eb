"""Heads (grefel_jax/models/heads.py): outputs, batch (in)dependence, PyTorch parity, sizes."""

import dataclasses

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from grefel_jax import losses, reliability
from grefel_jax.convert import arbex_names
from grefel_jax.models import heads
from grefel_jax.models.config import HEAD_PRESETS, HeadConfig

B, D, C = 6, 32, 5

GREFEL_KEYS = {
    "logits",
    "probs",
    "confidence",
    "corrected_probs",
    "head_embedding",
    "anchors",
    "anchor_probs",
    "anchor_confidence",
    "attention_probs",
    "attention_confidence",
}

TINY = HeadConfig(
    num_classes=C,
    reduction_dim=16,
    mlp_hidden=(24, 12),
    num_anchors=3,
    attention_tokens=4,
    attention_heads=2,
)
ARBEX_TINY = HeadConfig(num_classes=C, mlp_hidden=(24, 12), **HEAD_PRESETS["arbex_code"])


def _embeddings(seed=0, batch=B, dim=D):
    return jax.random.normal(jax.random.key(seed), (batch, dim), jnp.float32)


def _init_fn(module):
    return lambda x: module.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, x)


def _init(module, x):
    # jit: one compilation instead of op-by-op dispatch keeps these tests fast.
    return jax.jit(_init_fn(module))(x)


def _jit_apply(module, train=False, **kwargs):
    return jax.jit(lambda v, x: module.apply(v, x, train, **kwargs))


def _apply(module, variables, x, train=False, **kwargs):
    return _jit_apply(module, train, **kwargs)(variables, x)


def test_grefel_head_outputs():
    x = _embeddings()
    module = heads.GReFELHead(TINY)
    variables = _init(module, x)
    out = _apply(module, variables, x)
    assert set(out) == GREFEL_KEYS == set(heads.head_output_keys(TINY))
    d = TINY.reduction_dim
    expected = {
        "logits": (B, C),
        "probs": (B, C),
        "confidence": (B,),
        "corrected_probs": (B, C),
        "head_embedding": (B, d),
        "anchors": (C, TINY.num_anchors, d),
        "anchor_probs": (B, C),
        "anchor_confidence": (B,),
        "attention_probs": (B, C),
        "attention_confidence": (B,),
    }
    for key, shape in expected.items():
        assert out[key].shape == shape, key
        assert out[key].dtype == jnp.float32, key
        assert np.all(np.isfinite(np.asarray(out[key]))), key
    for key in ("probs", "corrected_probs", "anchor_probs", "attention_probs"):
        np.testing.assert_allclose(out[key].sum(-1), np.ones(B), atol=1e-5)
    np.testing.assert_allclose(out["probs"], jax.nn.softmax(out["logits"]), atol=1e-6)
    assert float(jnp.std(out["anchors"])) > 0  # 'normal' init
    # Train mode: BatchNorm statistics update, dropout needs its rng.
    out_t, updates = _apply(
        module, variables, x, True, rngs={"dropout": jax.random.key(3)}, mutable=["batch_stats"]
    )
    assert set(out_t) == GREFEL_KEYS
    assert not np.allclose(
        updates["batch_stats"]["classifier"]["bn0"]["mean"],
        variables["batch_stats"]["classifier"]["bn0"]["mean"],
    )


def test_grefel_head_correction_ablations():
    """model.head.correction: same parameters for every value; q_corr leans on g, m or both."""
    x = _embeddings(4)
    configs = {k: dataclasses.replace(TINY, correction=k) for k in ("both", "anchors", "attention")}
    modules = {k: heads.GReFELHead(cfg) for k, cfg in configs.items()}
    shapes = {
        k: jax.tree.map(lambda a: (a.shape, a.dtype), jax.eval_shape(_init_fn(m), x))
        for k, m in modules.items()
    }
    assert shapes["anchors"] == shapes["both"] == shapes["attention"]
    variables = _init(modules["both"], x)
    # One compilation for all three heads (a jit per config would compile three times).
    outs = jax.jit(lambda v, x: {k: m.apply(v, x, False) for k, m in modules.items()})(variables, x)
    both, anchors, attention = outs["both"], outs["anchors"], outs["attention"]
    for key in GREFEL_KEYS - {"corrected_probs"}:  # everything else is untouched
        np.testing.assert_array_equal(anchors[key], both[key], err_msg=key)
        np.testing.assert_array_equal(attention[key], both[key], err_msg=key)
    p, c_p = both["probs"], both["confidence"]
    g, c_g = both["anchor_probs"], both["anchor_confidence"]
    m, c_m = both["attention_probs"], both["attention_confidence"]
    tol = dict(rtol=1e-6, atol=1e-7)  # float32 rounding of a fused vs an eager expression
    np.testing.assert_allclose(anchors["corrected_probs"], reliability.balance(p, c_p, g), **tol)
    np.testing.assert_allclose(attention["corrected_probs"], reliability.balance(p, c_p, m), **tol)
    r = reliability.combine_corrections(g, c_g, m, c_m)
    np.testing.assert_allclose(both["corrected_probs"], reliability.balance(p, c_p, r), **tol)
    # The three corrected distributions differ: the switch is not a no-op.
    for other in (anchors, attention):
        assert np.abs(other["corrected_probs"] - both["corrected_probs"]).max() > 1e-4
    with pytest.raises(ValueError, match=r"^model\.head\.correction='anchor': expected one of"):
        dataclasses.replace(TINY, correction="anchor")


def test_poster_head_outputs():
    cfg = HeadConfig(kind="poster", num_classes=C, temperature=2.0)
    x = _embeddings()
    module = heads.make_head(cfg)
    assert isinstance(module, heads.PosterHead)
    variables = _init(module, x)
    assert variables["params"]["linear"]["kernel"].shape == (D, C)
    out = _apply(module, variables, x, True)
    assert (
        set(out)
        == set(heads.head_output_keys(cfg))
        == {
            "logits",
            "probs",
            "confidence",
            "corrected_probs",
            "head_embedding",
        }
    )
    np.testing.assert_allclose(out["probs"], jax.nn.softmax(out["logits"] / 2.0), atol=1e-6)
    np.testing.assert_array_equal(out["corrected_probs"], out["probs"])
    np.testing.assert_array_equal(out["head_embedding"], x)
    assert out["confidence"].shape == (B,)


def test_per_sample_attention_is_batch_independent():
    module = heads.GReFELHead(TINY)
    x = _embeddings()
    variables = _init(module, x)
    apply = _jit_apply(module)
    out = apply(variables, x)
    out2 = apply(variables, x.at[0].set(x[0] * 3.0 + 1.0))
    assert not np.allclose(out["attention_probs"][0], out2["attention_probs"][0])
    for key in GREFEL_KEYS - {"anchors"}:
        np.testing.assert_allclose(out2[key][1:], out[key][1:], atol=1e-6, err_msg=key)


def test_batch_attention_mixes_samples():
    module = heads.GReFELHead(ARBEX_TINY)
    x = _embeddings()
    variables = _init(module, x)
    apply = _jit_apply(module)
    out = apply(variables, x)
    out2 = apply(variables, x.at[0].set(x[0] * 3.0 + 1.0))
    assert np.max(np.abs(out["attention_probs"][1] - out2["attention_probs"][1])) > 1e-4


def test_per_sample_dims_are_validated():
    bad = dataclasses.replace(TINY, attention_tokens=5)  # 16 % 5 != 0
    with pytest.raises(ValueError, match="attention_tokens"):
        _init(heads.GReFELHead(bad), _embeddings())
    bad = dataclasses.replace(TINY, attention_tokens=4, attention_heads=3)  # token dim 4 % 3
    with pytest.raises(ValueError, match="attention_heads"):
        _init(heads.GReFELHead(bad), _embeddings())


# ---------------------------------------------------------------------------------------------
# PyTorch parity with the official ARBEx head (models/head.py, anchors.py, attn.py, train.py).


class _TorchSelfAttn(torch.nn.Module):
    """ARBEx SelfAttn with n_anchors=1, nhead=1 (models/attn.py)."""

    def __init__(self, n_classes, size_emb):
        super().__init__()
        self.Q = torch.nn.Linear(size_emb, n_classes)
        self.K = torch.nn.Linear(size_emb, n_classes)
        self.V = torch.nn.Linear(size_emb, n_classes)
        self.attn_fn = torch.nn.MultiheadAttention(n_classes, num_heads=1)

    def forward(self, x):
        out, _ = self.attn_fn(self.Q(x), self.K(x), self.V(x))  # 2-D input: one sequence of B
        return torch.softmax(out, -1)


def _torch_head(cfg, dim):
    layers, size_in = [], dim
    for h in cfg.mlp_hidden:
        layers += [
            torch.nn.Linear(size_in, h),
            torch.nn.ReLU(),
            torch.nn.BatchNorm1d(h),
            torch.nn.Dropout(cfg.mlp_dropout),
        ]
        size_in = h
    layers.append(torch.nn.Linear(size_in, cfg.num_classes))
    mods = torch.nn.ModuleDict(
        {
            "classifier": torch.nn.ModuleDict({"net": torch.nn.Sequential(*layers)}),
            "selfattn": _TorchSelfAttn(cfg.num_classes, dim),
        }
    )
    # Random running statistics and BN affine so that eval mode is a real test.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in mods.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            if isinstance(m, torch.nn.MultiheadAttention):
                m.in_proj_bias.copy_(torch.randn(m.in_proj_bias.shape, generator=gen) * 0.1)
                m.out_proj.bias.copy_(torch.randn(m.out_proj.bias.shape, generator=gen) * 0.1)
    return mods


def _torch_forward(mods, anchors, x, temperature=1.0, delta=1.0):
    """ARBEx train.py forward: primary, geometric and attentive corrections, balance."""
    ent_conf = lambda q: 1 - (-(torch.log(q) * q).sum(-1) / np.log(q.shape[-1])).view(-1, 1)
    logits = mods["classifier"]["net"](x)
    prob = torch.softmax(logits / temperature, -1)
    conf = ent_conf(prob)
    dist = torch.sqrt(((anchors.unsqueeze(0) - x.view(x.shape[0], 1, 1, -1)) ** 2).sum(-1))
    sim = torch.softmax(-dist.view(dist.shape[0], -1) / delta, -1).view_as(dist).sum(-1)
    conf_g = ent_conf(sim)
    attn = mods["selfattn"](x)
    conf_a = ent_conf(attn)
    correction = (sim * conf_g + attn * conf_a) / (conf_g + conf_a)
    corrected = conf * prob + (1 - conf) * correction
    return {
        "logits": logits,
        "probs": prob,
        "confidence": conf.view(-1),
        "anchor_probs": sim,
        "attention_probs": attn,
        "attention_confidence": conf_a.view(-1),
        "corrected_probs": corrected,
    }


def _copy_torch_weights(cfg, mods, anchors, variables):
    state = {k: v.detach().numpy() for k, v in mods.state_dict().items()}
    state["anchors.anchors"] = anchors.detach().numpy()
    variables = flax.core.unfreeze(jax.tree.map(np.asarray, variables))
    mapping = arbex_names.head_key_map(cfg)
    assert set(mapping) == {k for k in state if not k.endswith("num_batches_tracked")}
    for key, (collection, path, transpose) in mapping.items():
        value = state[key].T if transpose else state[key]
        node = variables[collection]
        for name in path[:-1]:
            node = node[name]
        assert node[path[-1]].shape == value.shape, key
        node[path[-1]] = jnp.asarray(value)
    return variables


@pytest.mark.parametrize("random_anchors", [False, True])
def test_arbex_head_matches_pytorch(random_anchors):
    torch.manual_seed(0)
    cfg = dataclasses.replace(ARBEX_TINY, mlp_hidden=(24, 12, 8))
    dim = 48
    mods = _torch_head(cfg, dim).eval()
    anchors = torch.zeros(cfg.num_classes, cfg.num_anchors, dim)
    if random_anchors:
        anchors = torch.randn(cfg.num_classes, cfg.num_anchors, dim)
    x_np = np.random.default_rng(0).normal(size=(B, dim)).astype(np.float32)
    module = heads.GReFELHead(cfg)
    variables = _copy_torch_weights(cfg, mods, anchors, _init(module, jnp.asarray(x_np)))
    out = _apply(module, variables, jnp.asarray(x_np))
    with torch.no_grad():
        ref = _torch_forward(mods, anchors, torch.from_numpy(x_np))
    for key, value in ref.items():
        np.testing.assert_allclose(out[key], value.numpy(), atol=1e-5, rtol=0, err_msg=key)


def test_arbex_head_train_mode_matches_pytorch_batchnorm():
    """Train mode with dropout 0: batch statistics and the running-mean update agree."""
    cfg = dataclasses.replace(ARBEX_TINY, mlp_dropout=0.0)
    dim = 40
    mods = _torch_head(cfg, dim).train()
    anchors = torch.zeros(cfg.num_classes, cfg.num_anchors, dim)
    x_np = np.random.default_rng(1).normal(size=(B, dim)).astype(np.float32)
    module = heads.GReFELHead(cfg)
    variables = _copy_torch_weights(cfg, mods, anchors, _init(module, jnp.asarray(x_np)))
    out, updates = _apply(
        module,
        variables,
        jnp.asarray(x_np),
        True,
        rngs={"dropout": jax.random.key(0)},
        mutable=["batch_stats"],
    )
    ref = _torch_forward(mods, anchors, torch.from_numpy(x_np))
    np.testing.assert_allclose(out["logits"], ref["logits"].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(
        updates["batch_stats"]["classifier"]["bn0"]["mean"],
        mods["classifier"]["net"][2].running_mean.numpy(),
        atol=1e-6,
    )


def test_arbex_key_map_rejects_grefel_config():
    with pytest.raises(ValueError, match="arbex_code"):
        arbex_names.head_key_map(TINY)


def test_arbex_paper_head_parameter_count():
    """docs/model.md §1g: MLP 389,864; anchors 61,440; SelfAttn 18,744 (d=768, C=8, K=10)."""
    cfg = HeadConfig(
        num_classes=8,
        reduction_dim=None,
        mlp_hidden=(384, 192, 96),
        num_anchors=10,
        anchor_init="zeros",
        attention="batch",
    )
    shapes = jax.eval_shape(
        lambda x: _init(heads.GReFELHead(cfg), x), jax.ShapeDtypeStruct((2, 768), jnp.float32)
    )
    count = lambda tree: sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))
    params = shapes["params"]
    assert count(params["classifier"]) == 389_864
    assert count(params["anchors"]) == 61_440
    assert count(params["attention"]) == 18_744
    assert set(params) == {"classifier", "anchors", "attention"}
    assert count(shapes["batch_stats"]) == 2 * (384 + 192 + 96)


# ---------------------------------------------------------------------------------------------
# Gradients through head + loss.


def _loss_fn(module, variables, x, labels, tau):
    def fn(params):
        out, updates = module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            True,
            rngs={"dropout": jax.random.key(5)},
            mutable=["batch_stats"],
        )
        loss, metrics = losses.total_loss(
            out,
            labels,
            tau=tau,
            class_weights=jnp.linspace(0.5, 2.0, C),
            config=losses.LossConfig(label_smoothing=0.1),
        )
        return loss, (metrics, updates)

    return fn


def test_jit_grad_total_loss_through_grefel_head():
    module = heads.GReFELHead(TINY)
    x = _embeddings(7)
    labels = jnp.arange(B) % C
    variables = _init(module, x)

    @jax.jit
    def step(params, tau):
        fn = _loss_fn(module, variables, x, labels, tau)
        return jax.value_and_grad(fn, has_aux=True)(params)

    (loss, (metrics, _)), grads = step(variables["params"], jnp.float32(0.5))
    assert np.isfinite(float(loss))
    assert set(metrics) == {"loss", "loss_cls", "loss_anchor", "loss_center", "tau", "trust"}
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.all(np.isfinite(np.asarray(g))), path
    for name in ("reduction", "classifier", "anchors", "attention"):
        assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads[name])), name


def test_grads_finite_on_degenerate_inputs():
    """Zero anchors (arbex_code init) with zero / identical embeddings; embedding == anchor."""
    cfg = dataclasses.replace(ARBEX_TINY, mlp_dropout=0.0)
    module = heads.GReFELHead(cfg)
    x = _embeddings(8)
    variables = flax.core.unfreeze(_init(module, x))
    labels = jnp.arange(B) % C
    grad_fn = jax.jit(
        lambda params, x, tau: jax.value_and_grad(
            _loss_fn(module, variables, x, labels, tau), has_aux=True
        )(params)
    )
    zero_params = variables["params"]
    anchors = jax.random.normal(jax.random.key(9), zero_params["anchors"].shape)
    cases = {
        "zero_embeddings": (zero_params, jnp.zeros_like(x)),
        "identical_embeddings": (zero_params, jnp.tile(x[:1], (B, 1))),
        "on_anchor": ({**zero_params, "anchors": anchors}, anchors[labels, 0]),
    }
    for case, (params, x_case) in cases.items():
        for tau in (0.0, 1.0):
            (loss, _), grads = grad_fn(params, x_case, jnp.float32(tau))
            assert np.isfinite(float(loss)), (case, tau)
            for path, g in jax.tree_util.tree_leaves_with_path(grads):
                assert np.all(np.isfinite(np.asarray(g))), (case, tau, path)
