"""IR-50 and MobileFaceNet checkpoints -> partial checkpoints -> same stage features.

Reference modules (tests/torch_reference) with random weights are saved in each official
naming (face.evoLVe `body.N` with a fourth stage, POSTER++ `body1/2/3`, ARBEx `net_*` /
`path_*`, pytorch_face_landmark `{'state_dict': ...}` with the GDC head), converted into
backbone-only checkpoints, and our Flax `IR50` / `MobileFaceNet` modules run on the converted
variables must reproduce the three stage maps to 1e-4. Paper-size files are converted too
(shapes only).
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402
from torch_reference.files import save_mobilefacenet_checkpoint, save_state_dict  # noqa: E402

from grefel_jax.checkpoints import (  # noqa: E402
    expected_variable_shapes,
    load_inference_checkpoint,
    merge_pretrained,
)
from grefel_jax.convert import ConversionError, build, convert  # noqa: E402
from grefel_jax.models import make_model_config  # noqa: E402
from grefel_jax.models.ir50 import IR50  # noqa: E402
from grefel_jax.models.layers import subsample_by_two  # noqa: E402
from grefel_jax.models.mobilefacenet import MobileFaceNet  # noqa: E402

ATOL = 1e-4
TINY = make_model_config("tiny", "grefel", 7).backbone


def _images(seed: int) -> np.ndarray:
    size = TINY.image_size
    return np.random.default_rng(seed).normal(size=(2, size, size, 3)).astype(np.float32)


def _torch_stages(module, images):
    with torch.no_grad():
        outs = module(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    return [o.numpy().transpose(0, 2, 3, 1) for o in outs]


def _submodule_variables(variables, name):
    return {c: variables[c][name] for c in ("params", "batch_stats")}


def _ir50_reference(naming: str):
    internal = TINY.image_size // 2
    if naming == "arbex":
        return ref.ArbexIR50(TINY.dims, TINY.ir_units, internal)
    stage4 = 2 if naming == "body" else 0
    return ref.IR50Backbone(TINY.dims, TINY.ir_units, internal, naming, stage4_units=stage4)


@pytest.mark.parametrize("naming", ["body", "stages", "arbex"])
def test_ir50_parity(naming, tmp_path):
    torch_ir = ref.randomize_(_ir50_reference(naming), seed=3).eval()
    src = save_state_dict(torch_ir, tmp_path / "ir50.pth")
    out = tmp_path / "converted"
    convert("ir50", [src], out, variant="tiny")
    variables, config, meta = load_inference_checkpoint(out)
    assert meta["partial"] and set(variables["params"]) == {"ir_back"}
    if naming == "body":  # The fourth stage and output_layer are dropped, by name.
        reasons = meta["unused_source_tensors"]
        assert any(k.endswith(":body.5.res_layer.1.weight") for k in reasons)
        assert any(":output_layer." in k for k in reasons)

    images = _images(0)
    module = IR50(config.backbone.dims, config.backbone.ir_units)
    apply = jax.jit(lambda v, x: module.apply(v, subsample_by_two(x), train=False))
    ours = apply(_submodule_variables(variables, "ir_back"), images)
    for s, (a, b) in enumerate(zip(ours, _torch_stages(torch_ir, images)), start=1):
        assert np.abs(b).max() > 1e-2
        np.testing.assert_allclose(np.asarray(a), b, atol=ATOL, rtol=0, err_msg=f"stage {s}")


@pytest.mark.parametrize("naming", ["pfl", "arbex"])
def test_mobilefacenet_parity(naming, tmp_path):
    internal = TINY.image_size // 2
    if naming == "pfl":
        torch_mfn = ref.MobileFaceNet(TINY.dims[0], TINY.mfn_units, 136, internal, gdc=True)
        torch_mfn = ref.randomize_(torch_mfn, seed=4).eval()
        src = save_mobilefacenet_checkpoint(torch_mfn, tmp_path / "mobilefacenet.pth.tar")
    else:
        torch_mfn = ref.randomize_(ref.ArbexMobileFaceNet(TINY.dims[0], TINY.mfn_units), 5).eval()
        src = save_state_dict(torch_mfn, tmp_path / "mobilefacenet.pth")
    out = tmp_path / "converted"
    convert("mobilefacenet", [src], out, variant="tiny")
    variables, config, meta = load_inference_checkpoint(out)
    assert set(variables["params"]) == {"face_landback"}
    if naming == "pfl":
        reasons = set(meta["unused_source_tensors"].values())
        assert "MobileFaceNet GDC landmark head (output discarded)" in reasons

    images = _images(1)
    module = MobileFaceNet(config.backbone.dims[0], config.backbone.mfn_units)
    apply = jax.jit(lambda v, x: module.apply(v, subsample_by_two(x)))
    ours = apply(_submodule_variables(variables, "face_landback"), images)
    theirs = _torch_stages(
        lambda x: torch_mfn(torch.nn.functional.interpolate(x, size=internal)), images
    )
    for s, (a, b) in enumerate(zip(ours, theirs), start=1):
        assert np.abs(b).max() > 1e-2
        np.testing.assert_allclose(np.asarray(a), b, atol=ATOL, rtol=0, err_msg=f"map {s}")


def test_paper_size_files_fill_every_backbone_variable(tmp_path):
    ir = save_state_dict(ref.IR50Backbone(naming="body", stage4_units=1), tmp_path / "ir50.pth")
    converted = build("ir50", [ir], variant="paper")
    meta = converted.metadata
    assert meta["not_loaded"] == [] and meta["filled_modules"] == ["ir_back"]
    # 21 units (3 + 4 + 14) fill body1-3; unit 21 (stage 4) and output_layer are dropped.
    units = {k for k in converted.variables["params"]["ir_back"] if k.startswith("body")}
    assert len(units) == 21
    dropped_units = {
        int(m[1])
        for k, reason in meta["unused_source_tensors"].items()
        if (m := re.search(r":body\.(\d+)\.", k)) and reason != "BatchNorm step counter"
    }
    assert dropped_units == {21}

    torch_mfn = ref.MobileFaceNet()
    mfn = save_mobilefacenet_checkpoint(torch_mfn, tmp_path / "mfn.pth.tar")
    converted = build("mobilefacenet", [mfn], variant="paper")
    kernel = converted.variables["params"]["face_landback"]["conv_23"]["conv_dw"]["conv"]["kernel"]
    assert kernel.shape == (3, 3, 1, 128)  # depthwise (C,1,kh,kw) -> (kh,kw,1,C)
    used = [
        k
        for k in torch_mfn.state_dict()
        if not k.startswith("output_layer.") and not k.endswith("num_batches_tracked")
    ]
    assert converted.metadata["num_loaded_tensors"] == len(used)


def test_backbone_checkpoints_merge_into_a_fresh_model(tmp_path):
    """`init_from` (grefel_jax.checkpoints.merge_pretrained) loads a partial checkpoint."""
    torch_ir = ref.randomize_(_ir50_reference("body"), seed=3).eval()
    ir_file = save_state_dict(torch_ir, tmp_path / "ir50.pth")
    mfn = ref.MobileFaceNet(TINY.dims[0], TINY.mfn_units, 136, TINY.image_size // 2)
    mfn_file = save_mobilefacenet_checkpoint(mfn, tmp_path / "mfn.pth.tar")
    out = tmp_path / "backbones"
    convert("backbones", [mfn_file, ir_file], out, variant="tiny")
    # Stand-in for freshly initialised variables: zeros of the right shapes (no compute).
    shapes = expected_variable_shapes(make_model_config("tiny", "grefel", 7))
    fresh = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    merged, loaded = merge_pretrained(fresh, out)
    assert loaded == ["face_landback", "ir_back"]
    converted, _, _ = load_inference_checkpoint(out)
    got = merged["params"]["ir_back"]["body3_1"]["res_layer_1"]["kernel"]
    np.testing.assert_array_equal(
        got, converted["params"]["ir_back"]["body3_1"]["res_layer_1"]["kernel"]
    )
    np.testing.assert_array_equal(
        merged["params"]["VIT"]["pos_embed"], fresh["params"]["VIT"]["pos_embed"]
    )


def test_ir50_wrong_unit_counts_are_reported(tmp_path):
    ir = ref.IR50Backbone(TINY.dims, (1, 2, 2), TINY.image_size // 2, naming="body")
    src = save_state_dict(ir, tmp_path / "ir50.pth")
    with pytest.raises(ConversionError, match="not filled|neither used"):
        build("ir50", [src], variant="tiny")
    copy = tmp_path / "ir50_copy.pth"
    copy.write_bytes(src.read_bytes())
    with pytest.raises(ConversionError, match="two ir_back files"):
        build("backbones", [src, copy], variant="tiny")


def test_landmark_net_with_gdc_head_converts_both_ways():
    """The pretrained landmark network (trunk + GDC head, `grefel_jax.landmarks`) and the
    official pytorch_face_landmark state_dict map onto each other: same 68 points from the
    same weights, and our variables load strictly back into the PyTorch module."""
    from grefel_jax.convert.mobilefacenet import (
        landmark_net_from_state_dict,
        landmark_net_to_state_dict,
    )

    internal = TINY.image_size // 2
    torch_mfn = ref.MobileFaceNet(TINY.dims[0], TINY.mfn_units, 136, internal, gdc=True)
    torch_mfn = ref.randomize_(torch_mfn, seed=6).eval()
    state = {k: v.numpy() for k, v in torch_mfn.state_dict().items()}
    variables = landmark_net_from_state_dict(state)
    module = MobileFaceNet(TINY.dims[0], TINY.mfn_units, num_landmarks=68)
    images = _images(2)
    *_, points = jax.jit(lambda v, x: module.apply(v, subsample_by_two(x)))(
        _submodule_variables(variables, "face_landback"), images
    )
    _torch_stages(lambda x: torch_mfn(torch.nn.functional.interpolate(x, size=internal)), images)
    theirs = torch_mfn.last_landmarks.detach().numpy().reshape(-1, 68, 2)
    assert np.abs(theirs).max() > 1e-2
    np.testing.assert_allclose(np.asarray(points), theirs, atol=ATOL, rtol=0)

    back = landmark_net_to_state_dict(variables)
    fresh = ref.MobileFaceNet(TINY.dims[0], TINY.mfn_units, 136, internal, gdc=True)
    fresh.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in back.items()})
    for key, value in fresh.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(value.numpy(), state[key], err_msg=key)
