r"""Packs finished pretraining workdirs into the backbones shipped inside the package.

  python -m grefel_jax.pretrain.package --identity runs/pretrained/identity \
      --landmarks runs/pretrained/landmarks --out grefel_jax/assets/pretrained

`make pretrained` runs this after the two pretrainings (docs/pretraining.md). For each
workdir it writes an inference checkpoint of the backbone GReFEL loads (`init_from=
package:<name>`) plus what checks it:

* `<name>/`: `ir_back` with the fourth stage and embedding layer (identity; the margin head
  over the training identities is left out), or `face_landback` with its GDC head
  (landmarks), as an inference checkpoint (`checkpoints.save_inference_checkpoint`);
* `<name>/provenance.json`: the commands that rebuild it, the git commit, the recipe
  (`config.json` of the run), its report (`identity_eval.json` / `landmarks_eval.json`), the
  machine (CPU model and cores), the date and the training time.

Names carry the variant and input side the backbone was trained at (`tiny64_identity`,
`tiny64_landmarks`): a backbone only fits a GReFEL of that size.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import sys

from absl import app, flags, logging

from grefel_jax import logging_utils
from grefel_jax.models import names

PROVENANCE = "provenance.json"
# What each kind keeps of its workdir's variables, and the report it carries.
KEEP = {"identity": (names.IMAGE_BACKBONE,), "landmarks": (names.LANDMARK_NET,)}
REPORTS = {"identity": "identity_eval.json", "landmarks": "landmarks_eval.json"}
# How to rebuild the packages from nothing: the Makefile target runs the data preparation,
# both pretrainings with these recipes, and this command.
REBUILD = {
    "command": "make pretrained",
    "recipes": {
        "identity": "configs/identity_synthetic.py",
        "landmarks": "configs/landmarks_demo.py",
    },
}


def package_name(kind: str, model_config) -> str:
    """`<variant-ish><side>_<kind>`: `tiny64_identity` for the tiny backbone fed at 64."""
    backbone = model_config.backbone
    from grefel_jax.models.config import VARIANTS

    variant = next((v for v, c in VARIANTS.items() if c.dims == backbone.dims), "custom")
    return f"{variant}{backbone.image_size}_{kind}"


def package(kind: str, workdir: str, out: str) -> pathlib.Path:
    """Writes `out/<name>/` (checkpoint + provenance) from a finished `kind` workdir.

    Raises:
      ValueError: the workdir has no report (the run did not finish) or is not of `kind`.
    """
    from grefel_jax import checkpoints

    workdir_path = pathlib.Path(workdir)
    report_file = workdir_path / REPORTS[kind]
    if not report_file.is_file():
        raise ValueError(
            f"{workdir}: no {REPORTS[kind]} (a {kind} pretraining that finished writes one)."
        )
    variables, model_config, meta = checkpoints.load_inference_checkpoint(
        workdir, check_shapes=False
    )
    kept = {
        c: {m: variables[c][m] for m in KEEP[kind] if m in variables[c]}
        for c in ("params", "batch_stats")
    }
    if not kept["params"]:
        raise ValueError(f"{workdir}: holds no {KEEP[kind]} variables: not a {kind} pretraining.")
    name = package_name(kind, model_config)
    target = pathlib.Path(out) / name
    if target.exists():
        shutil.rmtree(target)
    record = checkpoints.ModelRecord(model_config, dataset=meta.get("dataset"))
    provenance = {
        "name": name,
        "kind": kind,
        "init_from": f"package:{name}",
        "rebuild": {"command": REBUILD["command"], "recipe": REBUILD["recipes"][kind]},
        "commit": _run_commit(workdir_path),
        "workdir": str(workdir),
        "checkpoint_step": meta.get("step"),
        "report": json.loads(report_file.read_text()),
        "recipe": json.loads((workdir_path / "config.json").read_text()),
        "machine": {
            "cpu": logging_utils.cpu_name(),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "packaged_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "training_seconds": _training_seconds(workdir_path),
    }
    provenance["report"].pop("neighbours", None)  # per-image rows: in the workdir's report
    provenance["report"]["source"] = str(workdir)  # as given: no path of the building machine
    checkpoints.save_inference_checkpoint(
        target, kept, record, extra_metadata={"provenance": PROVENANCE, "kind": kind}
    )
    (target / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n")
    # orbax's commit marker holds the absolute path it was written to; only its presence
    # matters, and a shipped package must not carry a path of the building machine.
    for marker in target.rglob("commit_success.txt"):
        marker.write_text("Checkpoint commit was successful.\n")
    return target


def _run_commit(workdir: pathlib.Path) -> str:
    """The commit the pretraining ran at (its `versions.json`), else the packaging one."""
    path = workdir / "versions.json"
    recorded = json.loads(path.read_text()).get("git_commit") if path.is_file() else None
    return recorded or f"{logging_utils.git_commit()} (at packaging; the run recorded none)"


def _training_seconds(workdir: pathlib.Path) -> float | None:
    """Wall time between the first and the last logged training step (compilation and data
    preparation excluded; one run, or the sum over resumed runs is not separated)."""
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return None
    times = [
        row["time"]
        for row in map(json.loads, path.read_text().splitlines())
        if row.get("split") == "train" and "time" in row
    ]
    return round(max(times) - min(times), 1) if len(times) > 1 else None


_IDENTITY = flags.DEFINE_string("identity", None, "A finished identity pretraining workdir.")
_LANDMARKS = flags.DEFINE_string("landmarks", None, "A finished landmark pretraining workdir.")
_OUT = flags.DEFINE_string("out", "grefel_jax/assets/pretrained", "Where the packages go.")


def main(argv):
    from grefel_jax import checkpoints, cli

    if len(argv) > 1:
        cli.fail(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # orbax logs every array it writes at INFO
    sources = {"identity": _IDENTITY.value, "landmarks": _LANDMARKS.value}
    if not any(sources.values()):
        cli.fail("--identity and/or --landmarks: give at least one finished workdir.")
    for kind, workdir in sources.items():
        if not workdir:
            continue
        try:
            target = package(kind, workdir, _OUT.value)
        except (ValueError, checkpoints.CheckpointError) as e:
            cli.fail(str(e))
        print(f"{kind}: {target} (init_from=package:{target.name})")


if __name__ == "__main__":
    from grefel_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
