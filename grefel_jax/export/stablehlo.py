"""The StableHLO artifact: `jax.export` of the prediction function, serialized."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp


def input_spec(image_size: int, batch: int | None) -> jax.ShapeDtypeStruct:
    """(B, S, S, 3) float32, with B symbolic ('b') when `batch` is None."""
    if batch is None:
        (b,) = jax.export.symbolic_shape("b")
        return jax.ShapeDtypeStruct((b, image_size, image_size, 3), jnp.float32)
    return jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)


def export_stablehlo(
    fn: Callable[[jax.Array], dict[str, jax.Array]],
    image_size: int,
    batch: int | None,
    platforms: Sequence[str] = ("cpu",),
) -> tuple[bytes, dict]:
    """Exports `fn: (B, S, S, 3) float32 -> {name: (B, ...)}` with its weights as constants.

    Args:
      fn: the prediction function (closes over the variables, so the artifact is self-contained).
      image_size: S.
      batch: a fixed batch size, or None for a batch-polymorphic export.
      platforms: jax platforms to lower for ('cpu', 'cuda', 'tpu'); lowering needs none of them.

    Returns:
      `(serialized bytes, facts for model.json)`.

    Raises:
      jax errors for a function that cannot be exported with a symbolic batch (the caller
      reports them and suggests a fixed --batch).
    """
    exported = jax.export.export(jax.jit(fn), platforms=tuple(platforms))(
        input_spec(image_size, batch)
    )
    info = {
        "platforms": list(exported.platforms),
        "calling_convention_version": exported.calling_convention_version,
        "input_shape": [str(d) for d in exported.in_avals[0].shape],
    }
    return bytes(exported.serialize()), info
