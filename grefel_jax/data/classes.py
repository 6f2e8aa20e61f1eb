"""Class names of every dataset, in each dataset's own label order, and maps between them.

Label-order mistakes are the most common silent failure when moving between FER datasets (an
AffectNet model evaluated with RAF-DB indices scores near chance). Every builder takes its
`ClassLabel` names from here, and `map_labels` converts indices *by name*, never by position.

Names are lower-case English words. Where a dataset's own vocabulary differs (FERG-DB says
"joy"), the dataset keeps its word and `CANONICAL_SYNONYMS` says what it means.
"""

from __future__ import annotations

import numpy as np

# RAF-DB basic: labels 1..7 in list_patition_label.txt; index = label - 1 (docs/datasets.md §7.1).
RAF_DB = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
# AffectNet expression codes 0..7 (8 None, 9 Uncertain, 10 No-Face are excluded).
AFFECTNET_8 = (
    "neutral",
    "happiness",
    "sadness",
    "surprise",
    "fear",
    "disgust",
    "anger",
    "contempt",
)
AFFECTNET_7 = AFFECTNET_8[:7]
# FER+ vote columns, in fer2013new.csv order (unknown and NF are not classes).
FERPLUS = (
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
)
# FER2013 (Kaggle fer2013.csv `emotion` column), kept for reference and mapping.
FER2013 = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
# FERG-DB folder suffixes, alphabetical.
FERG_DB = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
# JAFFE codes AN DI FE HA NE SA SU, alphabetical.
JAFFE = ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise")
JAFFE_CODES = ("AN", "DI", "FE", "HA", "NE", "SA", "SU")
# Aff-Wild2 EXPR annotation header: Neutral,Anger,Disgust,Fear,Happiness,Sadness,Surprise,Other.
AFF_WILD2_EXPR = (
    "neutral",
    "anger",
    "disgust",
    "fear",
    "happiness",
    "sadness",
    "surprise",
    "other",
)
# The synthetic faces use RAF-DB's order so a model trained on them reads RAF-DB indices.
SYNTHETIC_FACES = RAF_DB

# Keys are `dataset` or `dataset/config` (the TFDS naming).
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "raf_db": RAF_DB,
    "affectnet/7": AFFECTNET_7,
    "affectnet/8": AFFECTNET_8,
    "ferplus": FERPLUS,
    "fer2013": FER2013,
    "ferg_db": FERG_DB,
    "jaffe": JAFFE,
    "aff_wild2_expr": AFF_WILD2_EXPR,
    "synthetic_faces": SYNTHETIC_FACES,
}

# Dataset-specific words -> the shared vocabulary used for mapping.
CANONICAL_SYNONYMS = {
    "joy": "happiness",
    "happy": "happiness",
    "angry": "anger",
    "sad": "sadness",
    "surprised": "surprise",
    "fearful": "fear",
    "disgusted": "disgust",
}


def canonical(name: str) -> str:
    """The shared-vocabulary spelling of a class name ('joy' -> 'happiness')."""
    name = name.strip().lower()
    return CANONICAL_SYNONYMS.get(name, name)


def class_names(dataset: str, config: str | None = None) -> tuple[str, ...]:
    """Class names of `dataset` (optionally `config`) in label-index order.

    Accepts 'affectnet/7' or ('affectnet', '7'). Datasets whose configs are image sizes
    ('synthetic_faces/96') have one class list for every config.
    """
    if "/" in dataset:
        dataset, config = dataset.split("/", 1)
    if config is not None and f"{dataset}/{config}" in CLASS_NAMES:
        return CLASS_NAMES[f"{dataset}/{config}"]
    if dataset == "affectnet":
        raise KeyError("affectnet needs a config: 'affectnet/7' or 'affectnet/8'.")
    if dataset not in CLASS_NAMES:
        raise KeyError(f"Unknown dataset {dataset!r}; known: {sorted(CLASS_NAMES)}.")
    return CLASS_NAMES[dataset]


def _resolve(names_or_dataset: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    if isinstance(names_or_dataset, str):
        return class_names(names_or_dataset)
    return tuple(names_or_dataset)


def map_labels(from_dataset, to_dataset) -> np.ndarray:
    """Index map from one label space to another, matched by (canonical) class name.

    Args:
      from_dataset: a dataset key ('affectnet/7') or a sequence of class names.
      to_dataset: the same, for the target label space.

    Returns:
      (C_from,) int32: `m[i]` is the target index of source class i, or -1 where the target
      has no class of that name (e.g. AffectNet-8 'contempt' -> RAF-DB).

    Example: train on AffectNet-7, evaluate on RAF-DB:
      `raf_labels = map_labels('affectnet/7', 'raf_db')[affectnet_predictions]`.
    """
    src = [canonical(n) for n in _resolve(from_dataset)]
    dst = [canonical(n) for n in _resolve(to_dataset)]
    index = {name: i for i, name in enumerate(dst)}
    return np.asarray([index.get(name, -1) for name in src], dtype=np.int32)


def remap(labels: np.ndarray, from_dataset, to_dataset) -> np.ndarray:
    """Converts an int array of `from_dataset` labels to `to_dataset` labels (-1 if absent)."""
    return map_labels(from_dataset, to_dataset)[np.asarray(labels)]
