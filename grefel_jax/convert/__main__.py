r"""Command line: `python -m grefel_jax.convert --kind KIND --src FILE [--src FILE] --out DIR`.

Examples:

    # The released POSTER++ RAF-DB checkpoint -> a model that evaluates/predicts directly.
    python -m grefel_jax.convert --kind poster_v2 --src raf-db-model_best.pth \
        --out weights/posterv2_rafdb

    # Both pretrained backbones in one partial checkpoint, for --config.init_from.
    python -m grefel_jax.convert --kind backbones --src ir50.pth \
        --src mobilefacenet_model_best.pth.tar --out weights/backbones

    # One backbone only (partial checkpoint).
    python -m grefel_jax.convert --kind ir50 --src ir50.pth --out weights/ir50

    # face.evoLVe's whole IR-50 (fourth stage, output_layer) and its ArcFace head, for
    # --config.init_from of `python -m grefel_jax.pretrain identity` (or of GReFEL training,
    # which loads stages 1-3). The way back: python -m grefel_jax.convert.export_ir50.
    python -m grefel_jax.convert --kind ir50_identity --src ir50.pth \
        --src Head_ArcFace.pth --out weights/ir50_identity

    # ARBEx: the three files of one best iteration.
    python -m grefel_jax.convert --kind arbex --src vit.best.1000.pth \
        --src classifier.best.1000.pth --src anchors.best.1000.pth --out weights/arbex
"""

from __future__ import annotations

import argparse
import collections
import sys

from grefel_jax.convert.api import DEFAULT_HEADS, KINDS, convert
from grefel_jax.convert.safe_load import UnsafeCheckpointError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m grefel_jax.convert",
        description="Convert official PyTorch checkpoints (IR-50, MobileFaceNet, POSTER++, "
        "ARBEx) to a grefel_jax inference checkpoint. Files are read with an allow-list "
        "unpickler: no code from them runs, and torch is not needed.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples:", 1)[1],
    )
    p.add_argument("--kind", required=True, choices=KINDS, help="what the source file(s) hold")
    p.add_argument(
        "--src",
        required=True,
        action="append",
        help="source file (repeat for backbones, arbex, and ir50_identity's head file)",
    )
    p.add_argument("--out", required=True, help="output directory (must not exist or be empty)")
    p.add_argument("--variant", default="paper", help="model size preset (default: paper)")
    p.add_argument(
        "--head",
        default=None,
        help="head preset: poster, grefel or arbex_code (default: "
        + ", ".join(f"{k}: {v}" for k, v in DEFAULT_HEADS.items())
        + ")",
    )
    p.add_argument(
        "--num_classes",
        type=int,
        default=None,
        help="class count (read from the file if it has a classifier)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = convert(
            args.kind,
            args.src,
            args.out,
            variant=args.variant,
            head=args.head,
            num_classes=args.num_classes,
        )
    # ConversionError, CheckpointError, CheckpointFormatError and bad --variant/--head values
    # are ValueErrors with a message that names the problem: no traceback needed.
    except (ValueError, UnsafeCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta, cfg = result.metadata, result.model_config
    print(f"wrote {args.out}")
    if "identity" in meta:
        sizes = meta["identity"]
        head = (
            f"margin head of {sizes['num_identities']} identities"
            if sizes["num_identities"]
            else "no margin head"
        )
        print(
            f"  identity network: variant={args.variant} image_size={cfg.backbone.image_size}, "
            f"fourth-stage units {sizes['stage4_units']}, embedding {sizes['embedding_dim']}, "
            f"{head}"
        )
    else:
        print(
            f"  model: variant={args.variant} head={cfg.head.kind} "
            f"num_classes={cfg.head.num_classes}"
        )
    print(f"  loaded {meta['num_loaded_tensors']} tensors into {', '.join(meta['filled_modules'])}")
    reasons = collections.Counter(meta["unused_source_tensors"].values())
    for reason, count in sorted(reasons.items()):
        print(f"  skipped {count} source tensors: {reason}")
    if meta["not_loaded"]:
        print(
            f"  left at initialisation ({len(meta['not_loaded'])}): {', '.join(meta['not_loaded'])}"
        )
    if meta["partial"]:
        print("  partial checkpoint: load it for training with --config.init_from=" + args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
