"""POSTER++ checkpoint -> converter -> our model gives the official module's numbers.

A randomly initialised reference `pyramid_trans_expr2` (tests/torch_reference, `tiny`
sizes) is saved exactly like a released POSTER++ checkpoint (DataParallel keys, pickled
`__main__.RecorderMeter` objects), converted, loaded with `load_inference_checkpoint`, and
run next to the PyTorch module in eval mode: every stage feature and the logits must agree to
1e-4 in float32.
"""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402
from torch_reference.files import save_mobilefacenet_checkpoint, save_poster_checkpoint  # noqa: E402

from grefel_jax.checkpoints import load_inference_checkpoint  # noqa: E402
from grefel_jax.convert import ConversionError, build, convert  # noqa: E402
from grefel_jax.models import GReFEL, make_model_config  # noqa: E402

ATOL = 1e-4
NUM_CLASSES = 7


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def tiny_config():
    return make_model_config("tiny", "poster", NUM_CLASSES)


@pytest.fixture(scope="module")
def torch_poster(tiny_config):
    torch.manual_seed(0)
    model = ref.PosterV2(NUM_CLASSES, **ref.sizes_from_backbone_config(tiny_config.backbone))
    return ref.randomize_(model, seed=1).eval()


@pytest.fixture(scope="module")
def poster_file(torch_poster, tmp_path_factory):
    return save_poster_checkpoint(torch_poster, tmp_path_factory.mktemp("src") / "model_best.pth")


@pytest.fixture(scope="module")
def outputs(torch_poster, poster_file, tiny_config, tmp_path_factory):
    """(ours, theirs): name -> array for every compared tensor, NHWC for feature maps."""
    out = tmp_path_factory.mktemp("converted") / "posterv2"
    convert("poster_v2", [poster_file], out, variant="tiny")
    variables, model_config, metadata = load_inference_checkpoint(out)
    assert model_config == tiny_config
    assert not metadata["partial"]

    size = tiny_config.backbone.image_size
    images = np.random.default_rng(0).normal(size=(3, size, size, 3)).astype(np.float32)
    model = GReFEL(model_config)
    # jit: compiling once is ~3x faster than running the model op by op.
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))
    got, state = apply(variables, images)
    ours = {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}
    ours.update(embedding=np.asarray(got["embedding"]), logits=np.asarray(got["logits"]))

    with torch.no_grad():
        f = torch_poster.features(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    theirs = {
        **{f"face{i}": _nhwc(f[f"face{i}"]) for i in (1, 2, 3)},
        **{f"ir{i}": _nhwc(f[f"ir{i}"]) for i in (1, 2, 3)},
        **{f"attended{i}": f[f"o{i}"].numpy() for i in (1, 2, 3)},
        "tokens": f["tokens"].numpy(),
        "embedding": f["embedding"].numpy(),
        "logits": f["logits"].numpy(),
    }
    return ours, theirs


COMPARED = [
    "face1", "face2", "face3", "ir1", "ir2", "ir3",
    "attended1", "attended2", "attended3", "tokens", "embedding", "logits",
]  # fmt: skip


@pytest.mark.parametrize("name", COMPARED)
def test_feature_parity(outputs, name):
    ours, theirs = outputs
    assert ours[name].shape == theirs[name].shape, name
    # Sanity: the compared tensors are not trivially tiny (random weights of order one).
    assert np.abs(theirs[name]).max() > 1e-2, name
    np.testing.assert_allclose(ours[name], theirs[name], atol=ATOL, rtol=0, err_msg=name)


def test_conversion_record(poster_file, tiny_config):
    converted = build("poster_v2", [poster_file], variant="tiny")
    meta = converted.metadata
    reasons = set(meta["unused_source_tensors"].values())
    assert "dead ViT parameter" in reasons and "BatchNorm step counter" in reasons
    assert any(k.endswith("relative_position_index") for k in meta["unused_source_tensors"])
    n_source = len(torch_state_keys(poster_file))
    assert meta["num_loaded_tensors"] + len(meta["unused_source_tensors"]) == n_source
    assert meta["not_loaded"] == []


def torch_state_keys(path):
    from grefel_jax.convert.common import read_state_dict

    return list(read_state_dict(path))


def test_head_choice_gives_a_partial_backbone_checkpoint(poster_file):
    converted = build("poster_v2", [poster_file], variant="tiny", head="grefel")
    assert converted.metadata["partial"]
    assert "head" not in converted.variables["params"]
    assert "VIT" in converted.variables["params"]
    assert converted.model_config.head.kind == "grefel"


def test_wrong_kind_and_wrong_size_are_clear_errors(poster_file, tmp_path):
    mfn = ref.MobileFaceNet(width=16, units=(1, 1, 1), input_size=48)
    mfn_file = save_mobilefacenet_checkpoint(mfn, tmp_path / "mobilefacenet_model_best.pth.tar")
    with pytest.raises(ConversionError, match="looks like a MobileFaceNet landmark checkpoint"):
        build("poster_v2", [mfn_file], variant="tiny")
    with pytest.raises(ConversionError, match="looks like a POSTER.. model checkpoint"):
        build("mobilefacenet", [poster_file], variant="tiny")
    with pytest.raises(
        ConversionError, match=r"face_landback/conv1/conv/kernel has \(3, 3, 3, 64\)"
    ):
        build("poster_v2", [poster_file], variant="paper")
    with pytest.raises(ConversionError, match="--num_classes=8"):
        build("poster_v2", [poster_file], variant="tiny", num_classes=8)


def test_unknown_and_missing_keys_are_errors(torch_poster, tmp_path):
    class Extra(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch_poster
            self.surprise = torch.nn.Linear(2, 2)

    state = {k.replace("inner.", ""): v for k, v in Extra().state_dict().items()}
    path = tmp_path / "extra.pth"
    torch.save(state, path)
    with pytest.raises(ConversionError, match=r"neither used .*\n.*surprise\.weight"):
        build("poster_v2", [path], variant="tiny")
    state = dict(torch_poster.state_dict())
    del state["ffn2.gamma1"]
    torch.save(state, path)
    with pytest.raises(ConversionError, match=r"not filled .*\n.*params/ffn2/gamma1"):
        build("poster_v2", [path], variant="tiny")


def test_command_line(poster_file, tmp_path):
    out = tmp_path / "cli_out"
    cmd = [sys.executable, "-m", "grefel_jax.convert", "--kind", "poster_v2"]
    cmd += ["--src", str(poster_file), "--out", str(out), "--variant", "tiny"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_cpu_env())
    assert done.returncode == 0, done.stderr
    assert "loaded" in done.stdout and "dead ViT parameter" in done.stdout
    marker = json.loads((out / "grefel_inference.json").read_text())
    assert marker["model_config"]["head"]["kind"] == "poster"
    # A second run into the same folder must not overwrite it.
    again = subprocess.run(cmd, capture_output=True, text=True, env=_cpu_env())
    assert again.returncode == 2 and "not empty" in again.stderr
    assert "Traceback" not in again.stderr


def _cpu_env():
    import os

    return {**os.environ, "JAX_PLATFORMS": "cpu"}


@pytest.mark.slow
def test_paper_size_parity(tmp_path):
    """The exact POSTER++ sizes (windows 28/14/7, 8-head ViT, 747-key file), batch of 2.

    Random weights of order one make IR-50's 14-unit third stage reach values near 1e3
    (there is no normalisation after the residual adds), so the tolerance scales with the
    largest value of each tensor: 1e-4 relative to max(1, max |reference|).
    """
    torch.manual_seed(0)
    torch_model = ref.randomize_(ref.PosterV2(NUM_CLASSES), seed=7).eval()
    src = save_poster_checkpoint(torch_model, tmp_path / "model_best.pth")
    converted = build("poster_v2", [src], variant="paper")
    assert converted.metadata["num_loaded_tensors"] + len(
        converted.metadata["unused_source_tensors"]
    ) == len(torch_model.state_dict())
    model = GReFEL(converted.model_config)
    images = np.random.default_rng(0).normal(size=(2, 224, 224, 3)).astype(np.float32)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))
    got, state = apply(converted.variables, images)
    with torch.no_grad():
        f = torch_model.features(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    pairs = {
        f"face{i}": (state["intermediates"][f"face{i}"][0], _nhwc(f[f"face{i}"])) for i in (1, 2, 3)
    }
    pairs.update(
        {f"ir{i}": (state["intermediates"][f"ir{i}"][0], _nhwc(f[f"ir{i}"])) for i in (1, 2, 3)}
    )
    pairs.update(
        {
            f"attended{i}": (state["intermediates"][f"attended{i}"][0], f[f"o{i}"].numpy())
            for i in (1, 2, 3)
        }
    )
    pairs["tokens"] = (state["intermediates"]["tokens"][0], f["tokens"].numpy())
    pairs["embedding"] = (got["embedding"], f["embedding"].numpy())
    pairs["logits"] = (got["logits"], f["logits"].numpy())
    for name, (ours, theirs) in pairs.items():
        tol = ATOL * max(1.0, float(np.abs(theirs).max()))
        np.testing.assert_allclose(np.asarray(ours), theirs, atol=tol, rtol=0, err_msg=name)
