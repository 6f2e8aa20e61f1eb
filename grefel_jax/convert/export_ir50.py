r"""Our identity network -> face.evoLVe's `ir50.pth` (and head file), for PyTorch users.

  python -m grefel_jax.convert.export_ir50 --checkpoint runs/identity --out ir50.pth
  python -m grefel_jax.convert.export_ir50 --checkpoint package:ir50_tiny --out ir50.pth \
      --head_out Head_CosFace.pth

`--checkpoint` is an identity-pretraining workdir (`python -m grefel_jax.pretrain identity`;
its best checkpoint), an inference checkpoint of `--kind ir50_identity`, or a packaged
backbone `package:NAME`. It must hold the whole identity network: `ir_back` with its fourth
stage (`body4_*`) and `output_layer_*`; a GReFEL checkpoint (stages 1-3 only) is refused.

`--out` gets the plain `Backbone.state_dict()` of face.evoLVe's `IR_50` in its key order
(`input_layer.*`, `output_layer.*`, `body.0..`; docs/checkpoints.md §6f), so that
`IR_50([112, 112]).load_state_dict(torch.load(path))` loads it strictly at the paper size,
POSTER V1 / POSTER++ `load_pretrained_weights` read it as they read the released file, and
`python -m grefel_jax.convert --kind ir50|ir50_identity` converts it back (exactly).
`--head_out` gets the margin head as face.evoLVe's ArcFace / CosFace save it
(`{'weight': (N, E)}`), or with `--head_layout kernel` as Am_softmax / CurricularFace do
(`{'kernel': (E, N)}`).

This is the one module of the package that needs torch (to write torch's file format); it
is imported only when a file is written.

Exit status: 0 when the files were written; 2 on a bad checkpoint, an existing output file,
or a missing torch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax.traverse_util import flatten_dict

from grefel_jax.convert.common import ConversionError
from grefel_jax.convert.ir50 import MARGIN_HEAD, identity_expected_shapes, identity_to_state_dicts
from grefel_jax.models import identity as identity_model
from grefel_jax.models import names


def identity_sizes(variables: Mapping[str, Any], where: str) -> dict[str, int]:
    """`models.identity.identity_sizes` of `variables['params']`, as a ConversionError
    naming `where` when they are not an identity network."""
    try:
        return identity_model.identity_sizes(variables["params"])
    except ValueError as e:
        raise ConversionError(f"{where}: {e}") from e


def check_identity_variables(variables, backbone_config, where: str) -> dict[str, int]:
    """Strict check of identity-network variables against `IdentityNet`'s own shapes.

    Every variable of `ir_back` (and `margin_head` when present) must exist with the exact
    shape, and nothing else may be there. Returns `identity_sizes`.
    """
    sizes = identity_sizes(variables, where)
    expected = identity_expected_shapes(
        backbone_config,
        sizes["stage4_units"],
        sizes["embedding_dim"],
        sizes["num_identities"] or 1,
    )
    modules = {names.IMAGE_BACKBONE} | ({MARGIN_HEAD} if sizes["num_identities"] else set())
    problems = []
    for collection in ("params", "batch_stats"):
        tree = dict(variables.get(collection, {}))
        others = sorted(set(tree) - modules)
        if others:
            problems.append(f"{collection}: modules {others} are not part of the identity network")
        got = flatten_dict({k: v for k, v in tree.items() if k in modules})
        want = {p: s for (c, p), s in expected.items() if c == collection and p[0] in modules}
        for path in sorted(set(got) | set(want)):
            name = f"{collection}/{'/'.join(path)}"
            if path not in want:
                problems.append(f"{name}: not in the identity network")
            elif path not in got:
                problems.append(f"{name}: missing")
            elif tuple(np.shape(got[path])) != want[path]:
                problems.append(f"{name}: shape {np.shape(got[path])}, expected {want[path]}")
    if problems:
        raise ConversionError(
            f"{where}: the variables do not match the identity network (image_size="
            f"{backbone_config.image_size}, dims={backbone_config.dims}, ir_units="
            f"{backbone_config.ir_units}, {sizes}):\n  " + "\n  ".join(problems[:20])
        )
    return sizes


def export_ir50(
    checkpoint: str,
    out: str | Path,
    *,
    head_out: str | Path | None = None,
    head_layout: str = "weight",
) -> dict[str, Any]:
    """Writes the identity network of `checkpoint` as face.evoLVe's PyTorch files.

    Args:
      checkpoint: an identity-pretraining workdir, an `ir50_identity` inference checkpoint,
        or `package:NAME`.
      out: the backbone file (`ir50.pth`); must not exist.
      head_out: optional file for the margin head (must not exist); needs a `margin_head`.
      head_layout: 'weight' (`{'weight': (N, E)}`, ArcFace / CosFace) or 'kernel'
        (`{'kernel': (E, N)}`, Am_softmax / CurricularFace).

    Returns:
      A summary: `out`, `head_out`, `num_tensors`, the identity sizes and the source.
    """
    from grefel_jax.checkpoints import load_inference_checkpoint, resolve_source

    paths = [Path(out)] + ([Path(head_out)] if head_out else [])
    for path in paths:
        if path.exists():
            raise ConversionError(f"{path}: exists; refusing to overwrite.")
    variables, model_config, meta = load_inference_checkpoint(
        resolve_source(checkpoint), check_shapes=False
    )
    sizes = check_identity_variables(variables, model_config.backbone, str(checkpoint))
    if head_out and not sizes["num_identities"]:
        raise ConversionError(f"--head_out: {checkpoint} holds no margin head.")
    backbone, head = identity_to_state_dicts(variables, head_layout=head_layout)
    try:
        import torch  # Only here: torch's file format (docs/checkpoints.md §6f).
    except ImportError as e:
        raise ConversionError(
            "writing a PyTorch file needs torch (pip install torch; see requirements-test.txt)."
        ) from e

    def to_torch(state: Mapping[str, np.ndarray]):
        import collections

        return collections.OrderedDict(
            (k, torch.from_numpy(np.ascontiguousarray(v))) for k, v in state.items()
        )

    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_torch(backbone), paths[0])
    if head_out:
        torch.save(to_torch(head), paths[1])
    return {
        "out": str(paths[0]),
        "head_out": str(paths[1]) if head_out else None,
        "num_tensors": len(backbone),
        "source": meta.get("source", str(checkpoint)),
        "step": meta.get("step"),
        **sizes,
    }


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m grefel_jax.convert.export_ir50",
        description="Write an identity network (IR-50 with its fourth stage and embedding "
        "layer, and its margin head) as face.evoLVe's PyTorch ir50.pth / head files.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="identity-pretraining workdir, ir50_identity inference checkpoint or package:NAME",
    )
    p.add_argument("--out", required=True, help="backbone file to write (ir50.pth; must be new)")
    p.add_argument("--head_out", default=None, help="margin head file to write (optional)")
    p.add_argument(
        "--head_layout",
        default="weight",
        choices=("weight", "kernel"),
        help="weight: {'weight': (N, E)} as ArcFace/CosFace; kernel: {'kernel': (E, N)} as "
        "Am_softmax/CurricularFace (default: weight)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        summary = export_ir50(
            args.checkpoint, args.out, head_out=args.head_out, head_layout=args.head_layout
        )
    # ConversionError and CheckpointError are ValueErrors whose message names the problem.
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    step = f" (step {summary['step']})" if summary["step"] is not None else ""
    print(f"read {summary['source']}{step}")
    print(
        f"wrote {summary['out']}: {summary['num_tensors']} tensors, fourth-stage units "
        f"{summary['stage4_units']}, embedding {summary['embedding_dim']}"
    )
    if summary["head_out"]:
        print(
            f"wrote {summary['head_out']}: margin head of {summary['num_identities']} "
            f"identities ({args.head_layout})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
