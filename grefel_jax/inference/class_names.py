"""Which names to print for a checkpoint's classes: the caller's, the checkpoint's, or indices."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any


def resolve_class_names(
    metadata: Mapping[str, Any],
    num_classes: int,
    *,
    checkpoint: str | None = None,
    class_names: Sequence[str] | None = None,
    dataset: str | None = None,
) -> tuple[str, ...]:
    """The class names of a checkpoint, from the most to the least explicit source.

    1. `class_names`, then `dataset` (a `grefel_jax.data.classes` key), given by the caller;
    2. the checkpoint's ModelRecord: `metadata['class_names']` (saved with every training
       checkpoint), else the names of `metadata['dataset']`;
    3. otherwise `class_0 ... class_{C-1}`, with a warning: converted POSTER++ / ARBEx files
       do not record their dataset, pass `dataset=` (CLI `--dataset raf_db`).

    Raises:
      ValueError: the names found do not number `num_classes`, or `dataset` is unknown.
    """
    from grefel_jax.data import classes

    found: tuple[str, ...] | None = None
    where = ""
    if class_names:
        found, where = tuple(class_names), "class_names"
    elif dataset:
        found, where = classes.class_names(dataset), f"dataset={dataset!r}"
    elif metadata.get("class_names"):
        found, where = tuple(metadata["class_names"]), "the checkpoint's class_names"
    elif metadata.get("dataset"):
        found = classes.class_names(metadata["dataset"], metadata.get("dataset_config"))
        where = f"the checkpoint's dataset {metadata['dataset']!r}"
    if found is None:
        logging.warning(
            "%s does not say which dataset its %d classes are (converted checkpoints do not): "
            "printing class_0..class_%d. Pass --dataset (e.g. raf_db, affectnet/8) or "
            "--class_names.",
            checkpoint or "The checkpoint",
            num_classes,
            num_classes - 1,
        )
        return tuple(f"class_{i}" for i in range(num_classes))
    if len(found) != num_classes:
        raise ValueError(
            f"{where} gives {len(found)} classes {list(found)}, but the model has {num_classes}."
        )
    return tuple(str(n) for n in found)
