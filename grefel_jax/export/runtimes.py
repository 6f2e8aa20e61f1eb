"""Running an exported artifact: (N, S, S, 3) float32 -> the head outputs, by name.

Runner side: imports no model code. The StableHLO runtime needs jax (deserialization and
compilation, no flax); the ONNX runtime needs only onnxruntime. Each is imported when its
runtime is made, so running the ONNX artifact does not import jax at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np


class Runtime(Protocol):
    """A loaded artifact: `runtime(batch)` -> `{output name: (N, ...) numpy array}`."""

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...


class StableHLORuntime:
    """A `jax.export` artifact, compiled for the default jax backend on first call.

    Args:
      path: the `.serialize()`d bytes on disk.
    """

    def __init__(self, path: str | os.PathLike):
        import jax

        with open(path, "rb") as f:
            self.exported = jax.export.deserialize(bytearray(f.read()))
        backend = jax.default_backend()
        if backend not in self.exported.platforms:
            raise ValueError(
                f"{path}: exported for {list(self.exported.platforms)}, but jax runs on "
                f"{backend!r} here (re-export with --platforms including {backend})."
            )
        # jit: one compilation per input shape, reused by every later batch of that size.
        self._call = jax.jit(self.exported.call)

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """(N, S, S, 3) float32 -> outputs over the N faces."""
        outputs = self._call(np.asarray(batch, np.float32))
        return {name: np.asarray(value) for name, value in outputs.items()}


class OnnxRuntime:
    """An ONNX model on onnxruntime's CPU execution provider.

    Args:
      path: the `.onnx` file.
      input_name: the graph's image input.
      output_names: the graph outputs to fetch, in the order they are returned.
      aliases: `{output: graph output}` of outputs that are the same value as another
        (one ONNX output cannot carry two names).
      threads: intra-op threads (None: onnxruntime's default, one per core).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        input_name: str,
        output_names: Sequence[str],
        aliases: Mapping[str, str] | None = None,
        threads: int | None = None,
    ):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # Errors only: shape-merge notes are not for users.
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            os.fspath(path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = input_name
        self.output_names = list(output_names)
        self.aliases = dict(aliases or {})

    def __call__(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """(N, S, S, 3) float32 -> outputs over the N faces."""
        feeds = {self.input_name: np.ascontiguousarray(batch, np.float32)}
        outputs = dict(zip(self.output_names, self.session.run(self.output_names, feeds)))
        outputs.update({name: outputs[source] for name, source in self.aliases.items()})
        return outputs


def load_runtime(path: str | os.PathLike, fmt: str, manifest: Mapping[str, Any]) -> Runtime:
    """The runtime of format `fmt` ('stablehlo' or 'onnx') for the artifact at `path`."""
    if fmt == "stablehlo":
        return StableHLORuntime(path)
    if fmt == "onnx":
        entry = manifest["artifacts"]["onnx"]
        return OnnxRuntime(
            path, entry["input_name"], entry["output_names"], entry.get("output_aliases")
        )
    raise ValueError(f"unknown format {fmt!r}; expected 'stablehlo' or 'onnx'.")
