"""ARBEx checkpoint files -> converter -> our `arbex_code` model gives ARBEx's numbers.

The reference ARBEx model (renamed POSTER++ + MLP classifier + anchors + SelfAttn, `tiny`
sizes, random weights) is saved as ARBEx does (three files; SelfAttn is never saved, so a
fourth SelfAttn state_dict file is written for the attention parity check), converted and
compared: stage features, embedding, logits, anchor and attention corrections to 1e-4.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_reference as ref  # noqa: E402
from torch_reference.files import save_arbex  # noqa: E402

from grefel_jax.checkpoints import load_inference_checkpoint  # noqa: E402
from grefel_jax.convert import ConversionError, build, convert  # noqa: E402
from grefel_jax.models import GReFEL, make_model_config  # noqa: E402

ATOL = 1e-4
C, K = 8, 3


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def torch_arbex():
    cfg = make_model_config("tiny", "arbex_code", C)
    torch.manual_seed(0)
    model = ref.ArbexModel(
        num_classes=C,
        num_anchors=K,
        hidden=tuple(cfg.head.mlp_hidden),
        **ref.sizes_from_backbone_config(cfg.backbone),
    )
    return ref.randomize_(model, seed=2).eval()


@pytest.fixture(scope="module")
def arbex_files(torch_arbex, tmp_path_factory):
    directory = tmp_path_factory.mktemp("arbex")
    files = save_arbex(torch_arbex, directory, iteration=4200)
    selfattn = directory / "selfattn.best.4200.pth"
    torch.save(torch_arbex.selfattn.state_dict(), selfattn)
    return files, selfattn


@pytest.fixture(scope="module")
def outputs(torch_arbex, arbex_files, tmp_path_factory):
    files, selfattn = arbex_files
    out = tmp_path_factory.mktemp("converted") / "arbex"
    # Any order of --src files is fine.
    convert("arbex", [selfattn, *reversed(files)], out, variant="tiny")
    variables, config, metadata = load_inference_checkpoint(out)
    assert config.head.num_anchors == K and config.head.num_classes == C
    assert config.head.attention == "batch" and not config.head.reduction_dim
    assert metadata["not_loaded"] == [] and not metadata["partial"]

    size = config.backbone.image_size
    images = np.random.default_rng(1).normal(size=(4, size, size, 3)).astype(np.float32)
    model = GReFEL(config)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))
    got, state = apply(variables, images)
    ours = {k: np.asarray(v[0]) for k, v in state["intermediates"].items()}
    ours.update({k: np.asarray(got[k]) for k in ("embedding", "logits", "probs")})
    ours.update({k: np.asarray(got[k]) for k in ("anchor_probs", "attention_probs")})

    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2))
        f = torch_arbex.vit.features(x)
        heads = torch_arbex(x)
    distances = heads["distances"].numpy()  # (B, C, K); delta = 1.
    sims = np.exp(-distances - (-distances).max(axis=(1, 2), keepdims=True))
    sims = sims / sims.sum(axis=(1, 2), keepdims=True)
    theirs = {
        **{f"face{i}": _nhwc(f[f"face{i}"]) for i in (1, 2, 3)},
        **{f"ir{i}": _nhwc(f[f"ir{i}"]) for i in (1, 2, 3)},
        **{f"attended{i}": f[f"o{i}"].numpy() for i in (1, 2, 3)},
        "tokens": f["tokens"].numpy(),
        "embedding": heads["embedding"].numpy(),
        "logits": heads["logits"].numpy(),
        "probs": torch.softmax(heads["logits"], -1).numpy(),
        "anchor_probs": sims.sum(-1),
        "attention_probs": heads["attention"].numpy(),
    }
    return ours, theirs


BACKBONE = ["face1", "face2", "face3", "ir1", "ir2", "ir3", "attended1", "attended2"]
BACKBONE += ["attended3", "tokens", "embedding"]


HEAD = ["logits", "probs", "anchor_probs", "attention_probs"]


@pytest.mark.parametrize("name", BACKBONE + HEAD)
def test_parity(outputs, name):
    ours, theirs = outputs
    assert ours[name].shape == theirs[name].shape, name
    np.testing.assert_allclose(ours[name], theirs[name], atol=ATOL, rtol=0, err_msg=name)


def test_without_selfattn_file_the_attention_is_left_at_init(arbex_files):
    files, _ = arbex_files
    converted = build("arbex", files, variant="tiny")
    not_loaded = converted.metadata["not_loaded"]
    assert not_loaded and all(n.startswith("params/head/attention/") for n in not_loaded)
    assert "attention" not in converted.variables["params"]["head"]
    assert not converted.metadata["partial"]


def test_backbone_only_and_bad_file_sets(arbex_files, tmp_path):
    files, selfattn = arbex_files
    vit, classifier, anchors = files
    converted = build("arbex", [vit], variant="tiny")
    assert converted.metadata["partial"] and "head" not in converted.variables["params"]
    converted = build("arbex", files, variant="tiny", head="grefel")
    assert "head" not in converted.variables["params"]
    assert any(
        "differs from ARBEx" in r for r in converted.metadata["unused_source_tensors"].values()
    )
    with pytest.raises(ConversionError, match="needs the vit"):
        build("arbex", [classifier, anchors], variant="tiny")
    with pytest.raises(ConversionError, match="given twice"):
        build("arbex", [vit, classifier, classifier], variant="tiny")
    copy = tmp_path / "classifier_copy.pth"
    copy.write_bytes(classifier.read_bytes())
    with pytest.raises(ConversionError, match="two ARBEx classifier files"):
        build("arbex", [vit, classifier, copy], variant="tiny")
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ConversionError, match="not an ARBEx"):
        build("arbex", [vit, bad], variant="tiny")
    with pytest.raises(ConversionError, match="looks like an ARBEx vit"):
        build("poster_v2", [vit], variant="tiny")
