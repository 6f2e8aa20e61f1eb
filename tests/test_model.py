"""The GReFEL backbone: shapes, parameter counts, exact numerics of the building blocks."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from grefel_jax.models import GReFEL, init_variables, make_model_config
from grefel_jax.models.config import model_config_from_dict, model_config_to_dict
from grefel_jax.models.layers import PReLU, exact_gelu, subsample_by_two
from grefel_jax.models.summary import parameter_counts
from grefel_jax.models.window_attention import relative_position_index


def _intermediate_shapes(config, batch=2):
    """Shapes of every sown stage feature and of the outputs, via eval_shape (nothing runs)."""
    model = GReFEL(config)
    size = config.backbone.image_size

    def forward(rng):
        variables = init_variables(model, rng)
        images = jnp.zeros((batch, size, size, 3))
        return model.apply(variables, images, train=False, mutable=["intermediates"])

    outputs, state = jax.eval_shape(forward, jax.random.PRNGKey(0))
    inter = {k: v[0].shape for k, v in state["intermediates"].items()}
    return {k: v.shape for k, v in outputs.items()}, inter


def test_paper_stage_shapes_match_reference():
    outputs, inter = _intermediate_shapes(make_model_config("paper", "grefel", 7))
    # docs/model.md §1a-§1e, all confirmed with forward hooks on the official code.
    assert inter["face1"] == (2, 28, 28, 64)
    assert inter["face2"] == (2, 14, 14, 128)
    assert inter["face3"] == (2, 7, 7, 256)  # after last_face_conv 512 -> 256
    assert inter["ir1"] == (2, 56, 56, 64)
    assert inter["ir2"] == (2, 28, 28, 128)
    assert inter["ir3"] == (2, 14, 14, 256)
    assert inter["attended1"] == (2, 28, 28, 64)
    assert inter["attended2"] == (2, 14, 14, 128)
    assert inter["attended3"] == (2, 7, 7, 256)
    assert inter["tokens"] == (2, 147, 768)
    assert outputs["embedding"] == (2, 768)
    assert outputs["logits"] == (2, 7)
    assert outputs["head_embedding"] == (2, 128)
    assert outputs["anchors"] == (7, 10, 128)


def test_tiny_stage_shapes():
    outputs, inter = _intermediate_shapes(make_model_config("tiny", "grefel", 5))
    assert inter["face1"] == (2, 12, 12, 16)
    assert inter["ir1"] == (2, 24, 24, 16)
    assert inter["attended3"] == (2, 3, 3, 64)
    assert inter["tokens"] == (2, 27, 64)
    assert outputs["probs"] == (2, 5)
    assert outputs["corrected_probs"] == (2, 5)


def test_paper_poster_parameter_count_is_exact():
    counts = parameter_counts(make_model_config("paper", "poster", 7))
    # The parameters the official POSTER++ forward pass uses (its state_dict has 14.5M dead).
    assert sum(counts.values()) == 43_753_941
    # Per-module counts of docs/model.md §1g.
    assert counts["ir_back"] == 17_611_968
    assert counts["face_landback"] == 911_232  # MobileFaceNet without its GDC head
    assert counts["last_face_conv"] == 1_179_904
    assert counts["embed_q"] == 5_752_320
    assert counts["head"] == 768 * 7 + 7
    assert counts["attn1"] + counts["attn2"] + counts["attn3"] == 269_710
    assert (
        counts["ffn1"]
        + counts["ffn2"]
        + counts["ffn3"]
        + sum(counts[f"window{i}"] for i in (1, 2, 3))
        == 692_160 + 896
    )


def test_arbex_head_parameter_count():
    counts = parameter_counts(make_model_config("paper", "arbex_code", 8))
    # MLP 389,864 + anchors 8*1*768 + SelfAttn 18,744 (docs/model.md §1g).
    assert counts["head"] == 389_864 + 8 * 768 + 18_744


def test_relative_position_index_equals_swin_construction():
    for window in (7, 3):
        # The official construction, in torch, as written in Swin / POSTER++.
        coords_h = torch.arange(window)
        coords_w = torch.arange(window)
        coords = torch.stack(torch.meshgrid([coords_h, coords_w], indexing="ij"))
        flat = torch.flatten(coords, 1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += window - 1
        rel[:, :, 1] += window - 1
        rel[:, :, 0] *= 2 * window - 1
        expected = rel.sum(-1).numpy()
        np.testing.assert_array_equal(relative_position_index(window), expected)
    assert relative_position_index(28).max() == (2 * 28 - 1) ** 2 - 1


def test_subsampling_equals_torch_nearest_interpolation():
    x = np.random.default_rng(0).normal(size=(2, 3, 224, 224)).astype(np.float32)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=112).numpy()
    got = subsample_by_two(jnp.asarray(x.transpose(0, 2, 3, 1)))
    np.testing.assert_array_equal(np.asarray(got).transpose(0, 3, 1, 2), expected)


def test_prelu_is_per_channel_and_matches_torch():
    x = np.random.default_rng(1).normal(size=(2, 5, 5, 4)).astype(np.float32)
    module = PReLU()
    params = module.init(jax.random.PRNGKey(0), x)
    slopes = np.array([0.1, 0.2, -0.3, 0.4], np.float32)
    params = {"params": {"weight": jnp.asarray(slopes)}}
    torch_prelu = torch.nn.PReLU(4)
    torch_prelu.weight.data = torch.from_numpy(slopes)
    expected = torch_prelu(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy()
    got = np.asarray(module.apply(params, x)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_gelu_is_exact():
    x = np.linspace(-4, 4, 101).astype(np.float32)
    expected = torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(exact_gelu(jnp.asarray(x))), expected, atol=1e-6)


@pytest.fixture(scope="module")
def tiny():
    """The tiny model at 32x32: the tests below need *a* model, whose image size is not what
    they check; smaller images run faster."""
    config = make_model_config("tiny", "grefel", 7, backbone_overrides={"image_size": 32})
    model = GReFEL(config)
    variables = init_variables(model, jax.random.PRNGKey(0))
    return model, variables


def test_tiny_jit_grad_is_finite_and_landmark_net_gets_no_gradient(tiny):
    model, variables = tiny
    size = model.config.backbone.image_size
    images = jax.random.normal(jax.random.PRNGKey(1), (4, size, size, 3))
    labels = jnp.array([0, 1, 2, 3])

    @jax.jit
    def loss_and_grad(params, images):
        def loss_fn(p):
            out, _ = model.apply(
                {"params": p, "batch_stats": variables["batch_stats"]},
                images,
                train=True,
                rngs={"dropout": jax.random.PRNGKey(2)},
                mutable=["batch_stats"],
            )
            log_q = jnp.log(out["corrected_probs"] + 1e-8)
            return -jnp.take_along_axis(log_q, labels[:, None], 1).mean()

        return jax.value_and_grad(loss_fn)(params)

    for batch in (images, jnp.zeros_like(images), jnp.full_like(images, 3.0)):
        loss, grads = loss_and_grad(variables["params"], batch)
        assert np.isfinite(float(loss))
        assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
        face_grads = jax.tree.leaves(grads["face_landback"])
        assert all(float(jnp.abs(g).max()) == 0.0 for g in face_grads)
        ir_grad = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads["ir_back"]))
        assert ir_grad > 0.0


def test_eval_is_deterministic_and_per_sample(tiny):
    model, variables = tiny
    size = model.config.backbone.image_size
    images = jax.random.normal(jax.random.PRNGKey(3), (3, size, size, 3))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    out = apply(variables, images)
    again = apply(variables, images)
    np.testing.assert_array_equal(np.asarray(out["probs"]), np.asarray(again["probs"]))
    # With stored BN statistics and per-sample attention, sample 1 ignores sample 0.
    perturbed = images.at[0].add(1.0)
    out2 = apply(variables, perturbed)
    for key in ("probs", "corrected_probs", "embedding"):
        np.testing.assert_allclose(np.asarray(out[key][1:]), np.asarray(out2[key][1:]), atol=1e-6)
    assert not np.allclose(np.asarray(out["embedding"][0]), np.asarray(out2["embedding"][0]))


def test_drop_path_is_active_only_in_training(tiny):
    model, variables = tiny
    size = model.config.backbone.image_size
    images = jax.random.normal(jax.random.PRNGKey(4), (8, size, size, 3))

    @jax.jit
    def run_jit(seed):
        out, _ = model.apply(
            variables,
            images,
            train=True,
            features_only=True,
            rngs={"dropout": jax.random.PRNGKey(seed)},
            mutable=["batch_stats"],
        )
        return out["embedding"]

    def run(seed):
        return np.asarray(run_jit(seed))

    assert not np.allclose(run(0), run(1))  # drop path (and BN batch stats) in training
    np.testing.assert_array_equal(run(5), run(5))


def test_bf16_compute_keeps_float32_params(tiny):
    model, variables = tiny
    bf16 = GReFEL(model.config, dtype=jnp.bfloat16)
    size = model.config.backbone.image_size
    images = jax.random.normal(jax.random.PRNGKey(5), (2, size, size, 3))
    out = jax.jit(lambda v, x: bf16.apply(v, x, train=False))(variables, images)
    ref = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    assert out["probs"].dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    np.testing.assert_allclose(np.asarray(out["probs"]), np.asarray(ref["probs"]), atol=0.05)


def test_wrong_image_size_is_a_clear_error(tiny):
    model, variables = tiny
    with pytest.raises(ValueError, match="image_size=32"):
        model.apply(variables, jnp.zeros((1, 64, 64, 3)), train=False)


def test_model_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="unknown field"):
        make_model_config("tiny", "grefel", 7, head_overrides={"num_anchor": 3})
    with pytest.raises(ValueError, match="model.variant"):
        make_model_config("huge")
    with pytest.raises(ValueError, match="divisible by 32"):
        make_model_config("tiny", backbone_overrides={"image_size": 100})
    config = make_model_config("tiny", "arbex_code", 8, head_overrides={"num_anchors": 3})
    assert model_config_from_dict(model_config_to_dict(config)) == config
    assert config.head.attention == "batch" and config.head.num_anchors == 3


def test_paper_variant_is_about_8_gmacs():
    """XLA counts 2 FLOPs per multiply-add; thop reports 8.48 GMACs for POSTER++."""
    from grefel_jax.models.summary import flops_per_image

    flops = flops_per_image(make_model_config("paper", "poster", 7))
    assert math.isclose(flops / 2e9, 8.48, rel_tol=0.05), flops


def test_constant_landmark_queries_cut_the_landmark_network_off():
    """`landmark_queries='constant'` (the geometry ablation): the same parameters load, and
    the output no longer depends on the landmark network, which it does under 'network'.
    Layer scale 1 instead of 1e-5, so that the attention's share is visible at init."""

    def model(queries):
        overrides = {"landmark_queries": queries, "layer_scale_init": 1.0, "image_size": 32}
        return GReFEL(make_model_config("tiny", "grefel", 7, backbone_overrides=overrides))

    variables = init_variables(model("network"), jax.random.PRNGKey(0))
    size = model("network").config.backbone.image_size
    images = jax.random.normal(jax.random.PRNGKey(6), (2, size, size, 3))
    scrambled = dict(variables["params"])
    scrambled["face_landback"] = jax.tree.map(lambda p: p * 1.5 + 0.1, scrambled["face_landback"])
    scrambled = {"params": scrambled, "batch_stats": variables["batch_stats"]}

    for queries in ("network", "constant"):  # the head starts uniform: compare what it reads
        module = model(queries)
        embed = jax.jit(lambda v, m=module: m.apply(v, images, train=False)["embedding"])
        original, changed = np.asarray(embed(variables)), np.asarray(embed(scrambled))
        if queries == "network":
            assert not np.allclose(original, changed, atol=1e-3)
        else:
            np.testing.assert_array_equal(original, changed)
    with pytest.raises(ValueError, match=r"landmark_queries='zeros': expected one of"):
        make_model_config("tiny", backbone_overrides={"landmark_queries": "zeros"})
