r"""Which stage of the image backbone carries the expression? Linear probes on frozen features.

  python benchmarks/stage_probe.py --data_dir data --output docs/results/stage_probe.json

The IR-50 of GReFEL (`tiny`, fed at 64x64 like the demo) is run frozen, in evaluation mode,
over the demo's training and test faces (`synthetic_faces/demo_96`). Each stage's map (stages
1-3, which POSTER++ uses, the fourth stage and the identity embedding, which it drops) feeds
a ridge-regularised
linear classifier is fitted on the training faces' expression labels (one-hot least squares,
the regulariser chosen on the validation faces) and scored on the test faces. Backbones:

* `identity`: the packaged identity-pretrained network (`package:tiny64_identity`);
* `random`: the same architecture with random weights (seeds 0-2), what training from
  scratch starts from.

Each map is probed average-pooled over space and kept whole (flattened): expression is
where the mouth corners and brows are, which pooling throws away and the window attention
of POSTER++ keeps.

A stage whose pooled features separate the expressions linearly gives the head a head start;
the identity embedding is trained to ignore expression (every identity is drawn under every
expression), so it shows how much of the expression identity training throws away at the top.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from common import cpu_name

from grefel_jax import checkpoints
from grefel_jax.data import pipeline
from grefel_jax.data.config import get_data_config
from grefel_jax.models.identity import IdentityHeadConfig, IdentityNet, identity_sizes

_DATA_DIR = flags.DEFINE_string("data_dir", "data", "Prepared datasets (synthetic_faces/demo_96).")
_IDENTITY = flags.DEFINE_string("identity", "package:tiny64_identity", "Identity network.")
_SEEDS = flags.DEFINE_list("random_seeds", ["0", "1", "2"], "Seeds of the random networks.")
_OUTPUT = flags.DEFINE_string("output", "docs/results/stage_probe.json", "JSON (+ .md).")
LAMBDAS = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
# Each stage's map average-pooled over space ("pooled") and kept whole ("map": where on the
# face a feature fires, which is what the window attention of POSTER++ reads).
MAPS = ("stage1", "stage2", "stage3", "stage4")
STAGES = (*(f"{m} pooled" for m in MAPS), *(f"{m} map" for m in MAPS[1:]), "embedding")


def _probe(train_x, train_y, val_x, val_y, test_x, test_y, classes: int) -> dict:
    """Ridge one-hot least squares; lambda chosen on validation; test accuracy."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6

    def prep(x):
        z = (x - mean) / std
        return np.concatenate([z, np.ones((len(z), 1))], 1)

    a, v, t = prep(train_x), prep(val_x), prep(test_x)
    target = np.eye(classes)[train_y]
    best = None
    for lam in LAMBDAS:
        w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ target)
        val_acc = float(np.mean(np.argmax(v @ w, 1) == val_y))
        if best is None or val_acc > best[0]:
            best = (val_acc, lam, w)
    val_acc, lam, w = best
    return {
        "test_accuracy": float(np.mean(np.argmax(t @ w, 1) == test_y)),
        "validation_accuracy": val_acc,
        "lambda": lam,
        "dims": int(train_x.shape[1]),
    }


def main(argv):
    del argv
    data = get_data_config()
    data.name, data.builder_config, data.data_dir = "synthetic_faces", "demo_96", _DATA_DIR.value
    info = pipeline.dataset_info(data)
    variables, model_config, _ = checkpoints.load_inference_checkpoint(
        checkpoints.resolve_source(_IDENTITY.value), check_shapes=False
    )
    sizes = identity_sizes(variables["params"])
    backbone = model_config.backbone
    head = IdentityHeadConfig(sizes["stage4_units"], sizes["embedding_dim"], num_identities=1)
    net = IdentityNet(backbone, head)
    size = backbone.image_size
    networks = {"identity": variables}
    for seed in _SEEDS.value:
        init = net.init(jax.random.key(int(seed)), jnp.zeros((1, size, size, 3)), train=False)
        networks[f"random_seed{seed}"] = {k: init[k] for k in ("params", "batch_stats")}
    rows = []
    for name, v in networks.items():
        start = time.perf_counter()
        split_feats = {s: _collect(net, v, data, s, size) for s in ("train", "validation", "test")}
        for stage in STAGES:
            (tx, ty), (vx, vy), (sx, sy) = (
                (split_feats[s][0][stage], split_feats[s][1])
                for s in ("train", "validation", "test")
            )
            result = _probe(tx, ty, vx, vy, sx, sy, info.num_classes)
            rows.append({"network": name, "stage": stage, **result})
            print(
                f"{name:>16} {stage:>9}: test {result['test_accuracy']:.3f} "
                f"(dims {result['dims']}, lambda {result['lambda']:g})",
                flush=True,
            )
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    report = {
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count()},
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "identity": _IDENTITY.value,
        "input_size": size,
        "rows": rows,
    }
    output = pathlib.Path(_OUTPUT.value)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    output.with_suffix(".md").write_text(_markdown(rows))
    print(_markdown(rows))


def _collect(net: IdentityNet, variables, data, split: str, size: int):
    """Pooled stage maps `{stage: (N, C)}` and labels `(N,)` of one split: the output of each
    stage's last unit (captured intermediates) averaged over space, and the embedding."""
    last = {
        f"stage{s}": f"body{s}_{n - 1}"
        for s, n in enumerate((*net.backbone.ir_units, net.head.stage4_units), start=1)
    }

    @jax.jit
    def apply(v, x):
        out, state = net.apply(
            v,
            x,
            train=False,
            embed_only=True,
            capture_intermediates=True,
            mutable=["intermediates"],
        )
        units = state["intermediates"]["ir_back"]
        maps = {k: units[u]["__call__"][0] for k, u in last.items()}
        pooled = {f"{k} pooled": m.mean((1, 2)) for k, m in maps.items()}
        whole = {f"{k} map": m.reshape(m.shape[0], -1) for k, m in maps.items() if k != "stage1"}
        return {**pooled, **whole, "embedding": out["embedding"]}

    feats, labels = {s: [] for s in STAGES}, []
    for batch in pipeline.make_eval_iterator(data, split, image_size=size, global_batch_size=200):
        outs = apply(variables, jnp.asarray(batch["image"]))
        keep = batch["mask"]
        for s in STAGES:
            feats[s].append(np.asarray(outs[s])[keep])
        labels.append(batch["label"][keep])
    return {s: np.concatenate(v) for s, v in feats.items()}, np.concatenate(labels)


def _markdown(rows) -> str:
    random_rows = [r for r in rows if r["network"].startswith("random")]
    lines = [
        "| stage | identity-pretrained | random (mean ± std over seeds) | dims |",
        "|---|---|---|---|",
    ]
    for stage in STAGES:
        ident = next(r for r in rows if r["network"] == "identity" and r["stage"] == stage)
        rand = [r["test_accuracy"] for r in random_rows if r["stage"] == stage]
        lines.append(
            f"| {stage} | {ident['test_accuracy']:.3f} | {np.mean(rand):.3f} ± "
            f"{np.std(rand, ddof=1) if len(rand) > 1 else 0:.3f} | {ident['dims']} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    app.run(main)
