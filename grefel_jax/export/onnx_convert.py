"""The ONNX artifact: the prediction function converted by jax2onnx, checked by onnx.

jax2onnx traces the function to a jaxpr and lowers each primitive (and some Flax Linen
modules, which it intercepts) through its plugins. A primitive without a plugin is reported
by name (`OnnxConversionError`); no ONNX is written by hand here.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Sequence

import jax

INPUT_NAME = "images"
OPSET = 23  # jax2onnx's default; onnxruntime >= 1.22 runs it.


class OnnxConversionError(RuntimeError):
    """jax2onnx could not convert the model; the message names the primitive when known."""


@contextlib.contextmanager
def _quiet(names=("onnx_ir", "jax2onnx")):
    """onnx_ir logs one warning per untyped constant shape: hundreds per model."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def output_aliases(
    fn: Callable[[jax.Array], dict[str, jax.Array]], image_size: int, names: Sequence[str]
) -> dict[str, str]:
    """`{name: the first name holding the same value}` for every output of `fn`.

    The poster head returns one array as both `probs` and `corrected_probs`; an ONNX graph
    output has one name, so the graph keeps the first and the runner copies it.
    """
    aliases: dict[str, str] = {}

    def probe(images):
        outputs = fn(images)
        first: dict[int, str] = {}
        for name in names:
            aliases[name] = first.setdefault(id(outputs[name]), name)
        return outputs

    jax.eval_shape(probe, jax.ShapeDtypeStruct((1, image_size, image_size, 3), "float32"))
    return aliases


def convert_onnx(
    fn: Callable[[jax.Array], dict[str, jax.Array]],
    image_size: int,
    batch: int | None,
    output_names: Sequence[str],
    opset: int = OPSET,
) -> bytes:
    """Converts `fn: (B, S, S, 3) float32 -> {name: (B, ...)}` to a checked ONNX model.

    Args:
      fn: the prediction function (its closed-over weights become initializers).
      image_size: S.
      batch: fixed batch size, or None for a symbolic batch dimension 'B'.
      output_names: the keys of `fn`'s outputs the graph returns, in order; each a distinct
        value (see `output_aliases`).
      opset: ONNX opset.

    Returns:
      The serialized ModelProto, which `onnx.checker.check_model` accepted.

    Raises:
      OnnxConversionError: naming the primitive jax2onnx has no plugin for, or the first
        line of whatever else failed in conversion or checking.
    """
    import jax2onnx
    import onnx

    names = list(output_names)

    def as_tuple(images):
        outputs = fn(images)
        return tuple(outputs[n] for n in names)

    shape = ("B" if batch is None else batch, image_size, image_size, 3)
    try:
        with _quiet():
            model = jax2onnx.to_onnx(
                as_tuple,
                [shape],
                model_name="grefel",
                opset=opset,
                input_names=[INPUT_NAME],
                output_names=names,
            )
    except NotImplementedError as e:
        found = re.search(r"primitive '([^']+)'", str(e))
        what = f"primitive {found.group(1)!r}" if found else _first_line(e)
        raise OnnxConversionError(
            f"jax2onnx {_version('jax2onnx')} cannot convert {what} ({_first_line(e)})."
        ) from e
    except Exception as e:  # noqa: BLE001  jax2onnx raises many types; report, don't crash.
        raise OnnxConversionError(
            f"jax2onnx {_version('jax2onnx')} failed: {type(e).__name__}: {_first_line(e)}"
        ) from e
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        raise OnnxConversionError(
            f"onnx.checker rejects the converted model: {_first_line(e)}"
        ) from e
    return model.SerializeToString()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(not installed)"
