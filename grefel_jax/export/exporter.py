"""Checkpoint -> export directory: artifacts, their self-check, and model.json.

`export_checkpoint` loads the checkpoint through `Predictor.from_checkpoint` (so it accepts
exactly what `predict` does and reports the same outputs), writes each requested format,
runs every artifact once on a fixed random batch against the jitted JAX model, and records
the settings, versions, checksums and check results in `model.json`.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from grefel_jax.export import manifest as manifest_lib
from grefel_jax.export.preprocessing import InputSpec

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# How far an artifact may stray from the jitted model on the check batch: float32 artifacts
# must reproduce it (the 1e-4); bfloat16 ones differ by rounding order only.
CHECK_TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}
CHECK_BATCH = 2  # Faces in the check batch of a batch-polymorphic export: more than one.
# Predict's default context around detected faces; recorded for a future detecting runner.
DETECT_MARGIN = 0.2


class ExportError(ValueError):
    """Bad input (checkpoint, flags, output directory): one line for the command line."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_checkpoint` did.

    Attributes:
      directory: the export directory.
      manifest: the model.json written.
      errors: `{format: message}` of the requested formats that could not be exported
        (the others were written and listed in the manifest).
    """

    directory: Path
    manifest: dict[str, Any]
    errors: dict[str, str]


def parse_formats(text: str) -> tuple[str, ...]:
    """'stablehlo,onnx' -> ('stablehlo', 'onnx'); ValueError naming a bad entry."""
    formats = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    bad = [f for f in formats if f not in manifest_lib.FORMATS]
    if not formats or bad:
        raise ValueError(
            f"--format={text!r}: expected a comma-separated subset of "
            f"{','.join(manifest_lib.FORMATS)}."
        )
    return formats


def parse_batch(text: str) -> int | None:
    """'dynamic' -> None, '8' -> 8; ValueError for anything else."""
    if str(text).strip().lower() == "dynamic":
        return None
    try:
        batch = int(text)
    except ValueError:
        batch = 0
    if batch < 1:
        raise ValueError(f"--batch={text!r}: expected 'dynamic' or a positive integer.")
    return batch


def parse_dtype(text: str) -> str:
    """'float32' or 'bfloat16' (the backbone's compute dtype; the head is always float32)."""
    if text not in DTYPES:
        raise ValueError(f"--dtype={text!r}: expected one of {', '.join(DTYPES)}.")
    return text


def prediction_fn(model, variables: Mapping[str, Any]) -> Callable[[jax.Array], dict]:
    """`(B, S, S, 3) float32 -> {key: (B, ...)}`: predict's outputs (`results.OUTPUT_KEYS`),
    with the variables closed over so that exports embed them.

    `model.apply` rather than the jitted `predictor.forward`: jax2onnx intercepts Linen
    modules while tracing, which a cached jit trace would bypass.
    """
    from grefel_jax.inference.results import OUTPUT_KEYS

    def fn(images):
        outputs = model.apply(variables, images, train=False)
        return {k: outputs[k] for k in OUTPUT_KEYS if k in outputs}

    return fn


def export_checkpoint(
    checkpoint: str,
    out_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = manifest_lib.FORMATS,
    batch: int | None = None,
    dtype: str = "float32",
    dataset: str | None = None,
    class_names: Sequence[str] | None = None,
    platforms: Sequence[str] = ("cpu",),
) -> ExportResult:
    """Exports a checkpoint to `out_dir` (created; must not hold files yet).

    Args:
      checkpoint: anything `predict --checkpoint` accepts.
      out_dir: the export directory.
      formats: subset of ('stablehlo', 'onnx').
      batch: fixed batch size, or None for batch-polymorphic artifacts.
      dtype: the backbone's compute dtype, 'float32' or 'bfloat16'.
      dataset / class_names: override the checkpoint's class names (as in predict).
      platforms: jax platforms the StableHLO artifact is lowered for.

    Returns:
      ExportResult; a format that failed is in `errors`, not raised, so that the others land.

    Raises:
      ExportError: the checkpoint cannot be read, the directory is not empty, or the flags
        do not fit the model (a fixed batch for a head that attends across the batch).
    """
    from grefel_jax.checkpoints import CheckpointError
    from grefel_jax.inference.predictor import Predictor
    from grefel_jax.inference.results import OUTPUT_KEYS

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(
            f"--out {out}: exists and is not an empty directory; refusing to overwrite."
        )
    try:
        predictor = Predictor.from_checkpoint(
            checkpoint,
            class_names=class_names,
            dataset=dataset,
            detect=False,
            compute_dtype=DTYPES[dtype],
        )
    except (CheckpointError, FileNotFoundError, KeyError, ValueError) as e:
        raise ExportError(f"--checkpoint {checkpoint}: {e}") from e
    if dtype == "bfloat16" and "onnx" in formats:
        raise ExportError(
            "--dtype bfloat16 --format onnx: onnxruntime's CPU kernels reject bfloat16 "
            "tensors (e.g. Einsum); export bfloat16 with --format stablehlo."
        )
    head = predictor.model_config.head
    if batch is not None and head.batch_dependent:
        raise ExportError(
            f"--batch={batch}: this head attends across the batch (model.head.attention="
            "'batch'), so padding a short batch would change the real faces' outputs; "
            "export with --batch dynamic."
        )
    size = predictor.image_size
    fn = prediction_fn(predictor.model, predictor.variables)
    shapes = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
    # predict's order (eval_shape returns the dict with sorted keys).
    output_names = [k for k in OUTPUT_KEYS if k in shapes]
    output_shapes = {k: shapes[k] for k in output_names}

    check = _check_batch(batch or CHECK_BATCH, size)
    reference = {k: np.asarray(v) for k, v in jax.jit(fn)(check).items()}

    out.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for fmt in formats:
        try:
            artifacts[fmt] = _write_format(
                fmt, fn, out, size, batch, output_names, platforms, check, reference, dtype
            )
        except Exception as e:  # noqa: BLE001  one format failing must not lose the others.
            errors[fmt] = " ".join(str(e).split()) or type(e).__name__

    spec = InputSpec(
        image_size=size,
        mean=tuple(predictor.metadata["preprocessing"]["mean"]),
        std=tuple(predictor.metadata["preprocessing"]["std"]),
    )
    document = _manifest(
        checkpoint, predictor, spec, batch, dtype, output_shapes, artifacts, errors, formats
    )
    manifest_lib.write_manifest(out, document)
    return ExportResult(out, document, errors)


def _check_batch(n: int, image_size: int) -> np.ndarray:
    """(n, S, S, 3) float32 standard-normal inputs (the scale of normalized images)."""
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, image_size, image_size, 3)).astype(np.float32)


def _write_format(fmt, fn, out, size, batch, output_names, platforms, check, reference, dtype):
    """Writes one artifact, runs it on the check batch; returns its manifest entry."""
    from grefel_jax.export import runtimes

    file = manifest_lib.ARTIFACT_FILES[fmt]
    entry: dict[str, Any] = {"file": file}
    if fmt == "stablehlo":
        from grefel_jax.export.stablehlo import export_stablehlo

        try:
            data, info = export_stablehlo(fn, size, batch, platforms)
        except Exception as e:
            hint = " (try a fixed --batch N)" if batch is None else ""
            raise RuntimeError(f"jax.export failed{hint}: {type(e).__name__}: {e}") from e
        entry.update(info)
    else:
        from grefel_jax.export import onnx_convert

        aliases = onnx_convert.output_aliases(fn, size, output_names)
        graph_outputs = [n for n in output_names if aliases[n] == n]
        data = onnx_convert.convert_onnx(fn, size, batch, graph_outputs)
        entry.update(
            {
                "opset": onnx_convert.OPSET,
                "input_name": onnx_convert.INPUT_NAME,
                "input_shape": ["B" if batch is None else batch, size, size, 3],
                "output_names": graph_outputs,
                "output_aliases": {n: a for n, a in aliases.items() if a != n},
                "converter": f"jax2onnx {_version('jax2onnx')}",
            }
        )
    path = out / file
    path.write_bytes(data)
    entry["bytes"] = len(data)
    entry["sha256"] = manifest_lib.sha256_file(path)

    runtime = runtimes.load_runtime(path, fmt, {"artifacts": {fmt: entry}})
    got = runtime(check)
    diff = max(float(np.max(np.abs(got[k] - reference[k]))) for k in output_names)
    entry["check"] = {
        "what": "max |artifact - jitted JAX| over all outputs, random normal input",
        "runtime": "jax" if fmt == "stablehlo" else "onnxruntime CPUExecutionProvider",
        "batch": int(len(check)),
        "max_abs_diff": diff,
    }
    if not diff <= CHECK_TOLERANCE[dtype]:
        path.unlink()
        raise RuntimeError(
            f"the {fmt} artifact differs from the JAX model by {diff:.3g} "
            f"(> {CHECK_TOLERANCE[dtype]}) on the check batch; not written."
        )
    return entry


def _manifest(checkpoint, predictor, spec, batch, dtype, output_shapes, artifacts, errors, formats):
    record = predictor.metadata
    head = predictor.model_config.head
    from grefel_jax.models.config import model_config_to_dict

    return {
        "format": manifest_lib.FORMAT,
        "version": manifest_lib.VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "checkpoint": str(checkpoint),
        "checkpoint_source": record.get("source"),
        "checkpoint_step": record.get("step"),
        "used_ema": record.get("used_ema"),
        "dataset": record.get("dataset"),
        "class_names": list(predictor.class_names),
        "input": spec.to_manifest(),
        "crop": {
            "detect": False,
            "region": "the whole image: inputs are face crops, as `predict --no-detect`",
            "detect_margin": DETECT_MARGIN,
        },
        "alignment": {
            "method": "none",
            "note": "inputs are face crops; `predict --align` (landmarks + warp) is not exported",
        },
        "batch": "dynamic" if batch is None else batch,
        "batch_dependent": bool(head.batch_dependent),
        "compute_dtype": dtype,
        "outputs": [
            {"name": k, "shape": ["batch", *v.shape[1:]], "dtype": str(v.dtype)}
            for k, v in output_shapes.items()
        ],
        "artifacts": artifacts,
        "failed": errors,
        "requested_formats": list(formats),
        "model_config": model_config_to_dict(predictor.model_config),
        "versions": _versions(artifacts),
        "host": {"python": platform.python_version(), "machine": platform.machine()},
    }


def _versions(artifacts) -> dict[str, str]:
    import grefel_jax

    packages = ["jax", "jaxlib", "flax", "numpy"]
    if "onnx" in artifacts:
        packages += ["jax2onnx", "onnx", "onnxruntime"]
    return {"grefel_jax": grefel_jax.__version__, **{p: _version(p) for p in packages}}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(not installed)"
