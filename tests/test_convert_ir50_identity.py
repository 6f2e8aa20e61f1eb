"""The identity network converts both ways with face.evoLVe's `ir50.pth` (docs/checkpoints.md §6f).

* Import (`--kind ir50_identity`): a PyTorch reference IR-50 with random weights, saved as
  face.evoLVe saves it (`body.N` with the fourth stage, `output_layer`) plus an ArcFace head
  file, converts into `ir_back` + `margin_head`, and our `IdentityNet` reproduces the
  reference's embedding (eval mode) and the head's cosines.
* Export (`python -m grefel_jax.convert.export_ir50`): our variables, seeded random, load
  strictly into the reference, in face.evoLVe's key order, and give the same embedding; ours
  -> .pth -> ours is exact.
* The old `--kind ir50` still keeps stages 1-3 only from the same file, and both checkpoints
  serve as `init_from` of identity pretraining and of GReFEL.

Everything at the `tiny` size (image 64, dims (16, 32, 64), units (1, 1, 2), a one-unit fourth
stage, 128-d embedding); the paper's unit counts are checked on shapes only.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402
from torch_reference.files import save_state_dict  # noqa: E402

from grefel_jax.checkpoints import (  # noqa: E402
    expected_variable_shapes,
    load_inference_checkpoint,
    merge_pretrained,
    save_inference_checkpoint,
)
from grefel_jax.convert import ConversionError, build, convert  # noqa: E402
from grefel_jax.convert.api import build_from_state_dicts  # noqa: E402
from grefel_jax.convert.export_ir50 import main as export_main  # noqa: E402
from grefel_jax.convert.ir50 import identity_expected_shapes, identity_to_state_dicts  # noqa: E402
from grefel_jax.models import make_model_config  # noqa: E402
from grefel_jax.models.identity import (  # noqa: E402
    IDENTITY_SIZES,
    IdentityHeadConfig,
    IdentityNet,
    identity_sizes,  # noqa: E402
)

# The demo's and identity pretraining's input size (configs/demo.py), not tiny's default 96:
# the converter reads the size off `output_layer.3.weight`.
TINY = make_model_config("tiny", "grefel", 7, backbone_overrides={"image_size": 64})
SIZES = IDENTITY_SIZES["tiny"]  # one fourth-stage unit, 128-d embedding
NUM_IDENTITIES = 5
# Float32 parity: the largest embedding difference relative to the largest embedding value.
RTOL = 1e-5


def _reference(seed: int | None = None):
    b = TINY.backbone
    module = ref.IR50Backbone(
        b.dims,
        b.ir_units,
        b.image_size // 2,
        naming="body",
        stage4_units=SIZES["stage4_units"],
        embedding_dim=SIZES["embedding_dim"],
    )
    return module if seed is None else ref.randomize_(module, seed=seed).eval()


def _images(seed: int) -> np.ndarray:
    size = TINY.backbone.image_size
    return np.random.default_rng(seed).normal(size=(3, size, size, 3)).astype(np.float32)


def _torch_embedding(module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module.embed(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


def _our_outputs(variables, images: np.ndarray) -> dict:
    sizes = identity_sizes(variables["params"])
    model = IdentityNet(TINY.backbone, IdentityHeadConfig(**sizes))
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    return jax.tree.map(np.asarray, apply(variables, images))


def _assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    scale = np.abs(theirs).max()
    assert scale > 1e-2
    assert np.abs(ours - theirs).max() <= RTOL * scale, np.abs(ours - theirs).max() / scale


def _random_identity_variables(seed: int) -> dict:
    """Our IdentityNet's variables with seeded values of order one everywhere (the inits
    hide bugs: BN statistics 0/1, scales 1), as `torch_reference.randomize_` does."""
    shapes = identity_expected_shapes(
        TINY.backbone, SIZES["stage4_units"], SIZES["embedding_dim"], NUM_IDENTITIES
    )
    rng = np.random.default_rng(seed)
    flat = {}
    for (collection, path), shape in sorted(shapes.items()):
        leaf = path[-1]
        if leaf in ("var", "scale"):
            value = rng.uniform(0.5, 1.5, shape)
        elif leaf == "weight":  # PReLU slopes
            value = rng.uniform(0.0, 0.5, shape)
        elif leaf in ("mean", "bias"):
            value = rng.normal(0.0, 0.1, shape)
        else:  # conv HWIO / dense (in, out) kernels, margin head columns
            value = rng.normal(0.0, np.prod(shape[:-1]) ** -0.5, shape)
        flat[(collection, *path)] = value.astype(np.float32)
    from flax.traverse_util import unflatten_dict

    return unflatten_dict(flat)


def _face_evolve_files(tmp_path, seed: int = 7):
    """(reference module, ir50.pth, Head_ArcFace.pth with `weight (N, E)`)."""
    module = _reference(seed)
    ir50 = save_state_dict(module, tmp_path / "ir50.pth")
    weight = torch.randn(
        NUM_IDENTITIES, SIZES["embedding_dim"], generator=torch.Generator().manual_seed(seed)
    )
    head = tmp_path / "Head_ArcFace.pth"
    torch.save({"weight": weight}, head)
    return module, ir50, head


def test_import_reproduces_face_evolve_embedding_and_head(tmp_path):
    module, ir50, head = _face_evolve_files(tmp_path)
    out = tmp_path / "identity"
    convert("ir50_identity", [head, ir50], out, variant="tiny")
    variables, config, meta = load_inference_checkpoint(out, check_shapes=False)
    assert config.backbone == TINY.backbone  # image_size 64 read off the file
    assert meta["identity"] == {**SIZES, "num_identities": NUM_IDENTITIES}
    assert meta["not_loaded"] == [] and meta["filled_modules"] == ["ir_back", "margin_head"]
    # Every source tensor is loaded but the BatchNorm step counters.
    assert set(meta["unused_source_tensors"].values()) == {"BatchNorm step counter"}
    assert meta["num_loaded_tensors"] == 1 + sum(
        not k.endswith("num_batches_tracked") for k in module.state_dict()
    )
    backbone = variables["params"]["ir_back"]
    assert sorted(k for k in backbone if k.startswith("body4_")) == ["body4_0"]

    images = _images(0)
    ours = _our_outputs(variables, images)
    theirs = _torch_embedding(module, images)
    _assert_close(ours["embedding"], theirs)
    weight = torch.load(head)["weight"]
    cosine = torch.nn.functional.linear(
        torch.nn.functional.normalize(torch.from_numpy(theirs)),
        torch.nn.functional.normalize(weight),
    ).numpy()
    np.testing.assert_allclose(ours["cosine"], cosine, atol=1e-5, rtol=0)

    # Am_softmax / CurricularFace save `kernel (E, N)`: the same margin head.
    kernel_file = tmp_path / "Head_CurricularFace.pth"
    torch.save({"kernel": weight.T.contiguous()}, kernel_file)
    other = build("ir50_identity", [ir50, kernel_file], variant="tiny").variables
    np.testing.assert_array_equal(
        other["params"]["margin_head"]["kernel"], variables["params"]["margin_head"]["kernel"]
    )


def test_export_loads_strictly_into_face_evolve_backbone(tmp_path, capsys):
    variables = _random_identity_variables(seed=11)
    checkpoint = tmp_path / "ours"
    save_inference_checkpoint(checkpoint, variables, TINY)
    out, head = tmp_path / "torch" / "ir50.pth", tmp_path / "torch" / "Head_ArcFace.pth"
    argv = ["--checkpoint", str(checkpoint), "--out", str(out), "--head_out", str(head)]
    assert export_main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out

    state = torch.load(out)
    module = _reference()
    # Key order too: POSTER++'s renaming to body1/2/3 pairs keys by position.
    assert list(state) == list(module.state_dict())
    module.load_state_dict(state, strict=True)
    module.eval()
    images = _images(1)
    ours = _our_outputs(variables, images)
    _assert_close(ours["embedding"], _torch_embedding(module, images))
    np.testing.assert_array_equal(
        torch.load(head)["weight"].numpy(), variables["params"]["margin_head"]["kernel"].T
    )
    assert export_main(argv) == 2  # the files exist now: never overwritten
    assert "refusing to overwrite" in capsys.readouterr().err


def _save_workdir(workdir, variables) -> None:
    """A training workdir as identity pretraining leaves it (one step, the ModelRecord of
    the GReFEL model whose backbone it pretrains)."""
    from grefel_jax.checkpoints import ModelRecord, TrainCheckpointer

    checkpointer = TrainCheckpointer(workdir, best_metric="verification_accuracy")
    train = {"step": np.int32(30), "opt_state": {}, "rng": np.zeros((2,), np.uint32)}
    metrics = {"verification_accuracy": 0.5}
    checkpointer.save(30, variables, train, ModelRecord(TINY), metrics=metrics, force=True)
    checkpointer.close()


@pytest.mark.parametrize("source,head_layout", [("inference", "weight"), ("workdir", "kernel")])
def test_round_trip_ours_to_pth_to_ours_is_exact(tmp_path, source, head_layout):
    variables = _random_identity_variables(seed=12)
    checkpoint = tmp_path / "ours"
    if source == "workdir":
        _save_workdir(checkpoint, variables)
    else:
        save_inference_checkpoint(checkpoint, variables, TINY)
    out, head = tmp_path / "ir50.pth", tmp_path / "head.pth"
    argv = ["--checkpoint", str(checkpoint), "--out", str(out), "--head_out", str(head)]
    assert export_main([*argv, "--head_layout", head_layout]) == 0
    back = build("ir50_identity", [out, head], variant="tiny")
    assert back.metadata["not_loaded"] == [] and back.model_config.backbone == TINY.backbone
    want = jax.tree_util.tree_leaves_with_path(variables)
    got = dict(jax.tree_util.tree_leaves_with_path(back.variables))
    assert len(got) == len(want)
    for path, value in want:
        np.testing.assert_array_equal(got[path], value, err_msg=jax.tree_util.keystr(path))


def test_old_kind_keeps_stages_1_to_3_of_the_same_file(tmp_path):
    _, ir50, _ = _face_evolve_files(tmp_path)
    old = build("ir50", [ir50], variant="tiny")
    new = build("ir50_identity", [ir50], variant="tiny")
    old_backbone = old.variables["params"]["ir_back"]
    assert not any(k.startswith(("body4_", "output_layer_")) for k in old_backbone)
    assert set(old.variables["params"]) == {"ir_back"}
    reasons = old.metadata["unused_source_tensors"]
    stage4, output = f"{ir50}:body.4.res_layer.1.weight", f"{ir50}:output_layer.3.weight"
    assert reasons[stage4] == "IR-50 fourth stage (removed in POSTER++)"
    assert reasons[output] == "IR-50 output_layer (never run by POSTER++)"
    # Stages 1-3 are the same tensors either way; without a head file no margin_head.
    assert set(new.variables["params"]) == {"ir_back"}
    assert new.metadata["identity"]["num_identities"] == 0
    added = {"body4_0", "output_layer_0", "output_layer_3", "output_layer_4"}
    for collection in ("params", "batch_stats"):
        old_tree = old.variables[collection]["ir_back"]
        new_tree = new.variables[collection]["ir_back"]
        # output_layer_3 is the Linear: parameters only, no statistics.
        want = added if collection == "params" else added - {"output_layer_3"}
        assert set(new_tree) - set(old_tree) == want
        for name, tree in old_tree.items():
            jax.tree.map(np.testing.assert_array_equal, tree, new_tree[name])


def test_identity_checkpoint_is_init_from_of_identity_pretraining_and_grefel(tmp_path):
    _, ir50, head = _face_evolve_files(tmp_path)
    out = tmp_path / "identity"
    convert("ir50_identity", [ir50, head], out, variant="tiny")
    converted, _, _ = load_inference_checkpoint(out, check_shapes=False)

    # Identity pretraining (`merge_pretrained` into a fresh IdentityNet): everything loads.
    shapes = identity_expected_shapes(
        TINY.backbone, SIZES["stage4_units"], SIZES["embedding_dim"], NUM_IDENTITIES
    )
    from flax.traverse_util import unflatten_dict

    fresh = unflatten_dict({(c, *p): np.zeros(s, np.float32) for (c, p), s in shapes.items()})
    merged, loaded = merge_pretrained(fresh, out)
    assert loaded == ["ir_back", "margin_head"]
    for collection in ("params", "batch_stats"):
        jax.tree.map(np.testing.assert_array_equal, merged[collection], converted[collection])

    # GReFEL: stages 1-3 load, the fourth stage, output_layer and margin head stay out.
    grefel = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), expected_variable_shapes(TINY))
    merged, loaded = merge_pretrained(grefel, out)
    assert loaded == ["ir_back"]
    assert set(merged["params"]["ir_back"]) == set(grefel["params"]["ir_back"])
    np.testing.assert_array_equal(
        merged["params"]["ir_back"]["body3_1"]["res_layer_3"]["kernel"],
        converted["params"]["ir_back"]["body3_1"]["res_layer_3"]["kernel"],
    )


def test_init_from_refuses_another_fourth_stage_depth(tmp_path):
    """A fourth stage of 2 units does not load silently into an IdentityNet of 1 unit: the
    skipping of `body4_*` is for models without a fourth stage (GReFEL) only."""
    from flax.traverse_util import unflatten_dict

    from grefel_jax.checkpoints import CheckpointError

    b = TINY.backbone
    deeper = ref.IR50Backbone(b.dims, b.ir_units, b.image_size // 2, naming="body", stage4_units=2)
    src = save_state_dict(deeper, tmp_path / "ir50.pth")
    out = tmp_path / "identity"
    convert("ir50_identity", [src], out, variant="tiny")
    shapes = identity_expected_shapes(
        TINY.backbone, SIZES["stage4_units"], SIZES["embedding_dim"], NUM_IDENTITIES
    )
    fresh = unflatten_dict({(c, *p): np.zeros(s, np.float32) for (c, p), s in shapes.items()})
    with pytest.raises(CheckpointError, match="body4_1.*not in the model"):
        merge_pretrained(fresh, out)
    grefel = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), expected_variable_shapes(TINY))
    assert merge_pretrained(grefel, out)[1] == ["ir_back"]  # GReFEL: stages 1-3, as before


def _meta_state(module) -> dict[str, np.ndarray]:
    """Shapes and dtypes of a meta-device state_dict as zero-memory numpy arrays."""
    dtypes = {torch.float32: np.float32, torch.int64: np.int64}
    return {
        k: np.broadcast_to(np.zeros((), dtypes[v.dtype]), tuple(v.shape))
        for k, v in module.state_dict().items()
    }


def test_paper_unit_counts_map_both_ways():
    """face.evoLVe's IR-50 (3 + 4 + 14 + 3 units, 512-d embedding) at the paper size, on
    shapes only: `body.21-23` are the fourth stage, `output_layer.3` is (512, 512 * 7 * 7),
    and the export gives back face.evoLVe's exact keys, shapes and order."""
    with torch.device("meta"):
        module = ref.IR50Backbone(
            naming="body", stage4_units=IDENTITY_SIZES["paper"]["stage4_units"]
        )
    state = _meta_state(module)
    head = {"weight": np.broadcast_to(np.float32(0), (10, 512))}
    converted = build_from_state_dicts(
        "ir50_identity", {"ir50.pth": state, "head.pth": head}, variant="paper"
    )
    assert converted.metadata["identity"] == {**IDENTITY_SIZES["paper"], "num_identities": 10}
    assert converted.metadata["not_loaded"] == []
    backbone = converted.variables["params"]["ir_back"]
    assert sorted(k for k in backbone if k.startswith("body4_")) == [
        "body4_0",
        "body4_1",
        "body4_2",
    ]
    assert backbone["output_layer_3"]["kernel"].shape == (512 * 7 * 7, 512)
    assert backbone["body4_0"]["shortcut_layer_0"]["kernel"].shape == (1, 1, 256, 512)

    back, head_back = identity_to_state_dicts(converted.variables)
    assert [(k, v.shape) for k, v in back.items()] == [(k, v.shape) for k, v in state.items()]
    assert head_back["weight"].shape == (10, 512)


def test_bad_files_are_refused_with_the_reason(tmp_path):
    b = TINY.backbone
    full = _meta_state(_reference())
    # POSTER++'s body1/2/3 copy has neither a fourth stage nor output_layer to load.
    with torch.device("meta"):
        stages = ref.IR50Backbone(b.dims, b.ir_units, b.image_size // 2, naming="stages")
    no_output = {k: v for k, v in _meta_state(stages).items() if not k.startswith("output_layer")}
    with pytest.raises(ConversionError, match="use --kind ir50"):
        build_from_state_dicts("ir50_identity", {"poster.pth": no_output}, variant="tiny")
    # A file with stages 1-3 only.
    with torch.device("meta"):
        three = ref.IR50Backbone(b.dims, b.ir_units, b.image_size // 2, naming="body")
    with pytest.raises(ConversionError, match="no fourth stage"):
        build_from_state_dicts("ir50_identity", {"ir50.pth": _meta_state(three)}, variant="tiny")
    # A Softmax head (weight and bias) and a head of another embedding width.
    zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    softmax = {"weight": zeros(NUM_IDENTITIES, 128), "bias": zeros(NUM_IDENTITIES)}
    with pytest.raises(ConversionError, match="Softmax head"):
        build_from_state_dicts("ir50_identity", {"a": full, "h": softmax}, variant="tiny")
    with pytest.raises(ConversionError, match=r"expected \(N, E\) with E = 128"):
        build_from_state_dicts(
            "ir50_identity", {"a": full, "h": {"weight": zeros(5, 64)}}, variant="tiny"
        )
    # The model's unit counts decide the stages: a paper file is no tiny network.
    with pytest.raises(ConversionError, match="conversion failed"):
        build_from_state_dicts("ir50_identity", {"a": _meta_state(_paper_meta())}, variant="tiny")


def _paper_meta():
    with torch.device("meta"):
        return ref.IR50Backbone(naming="body", stage4_units=3)


def test_export_refuses_a_grefel_checkpoint(tmp_path, capsys):
    _, ir50, _ = _face_evolve_files(tmp_path)
    grefel = tmp_path / "grefel_ir50"
    convert("ir50", [ir50], grefel, variant="tiny")  # stages 1-3 only
    code = export_main(["--checkpoint", str(grefel), "--out", str(tmp_path / "x.pth")])
    assert code == 2
    err = capsys.readouterr().err
    assert "no fourth stage" in err and not (tmp_path / "x.pth").exists()
