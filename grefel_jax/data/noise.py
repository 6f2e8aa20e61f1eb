"""Seeded label noise that is a pure function of (seed, record index, clean label).

Because the flip depends only on the record's index in its split, an example gets the same
noisy label in every epoch, on every host and in every worker, with no table to store.

Kinds:
  * 'symmetric': with probability `rate` the label becomes a uniformly drawn *other* class.
  * 'pairs': with probability `rate` class a becomes its partner b (class-dependent noise
    between confusable classes). Classes without a partner keep their label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from grefel_jax.data import classes

_MASK64 = (1 << 64) - 1

# Confusable partners by canonical name (FER confusions: fear/surprise, anger/disgust,
# sadness/neutral); happiness, contempt and other flip towards the nearest frequent class.
DEFAULT_PAIRS = (
    ("surprise", "fear"),
    ("fear", "surprise"),
    ("anger", "disgust"),
    ("disgust", "anger"),
    ("sadness", "neutral"),
    ("neutral", "sadness"),
    ("happiness", "neutral"),
    ("contempt", "disgust"),
    ("other", "neutral"),
)


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def uniforms(seed: int, index: int) -> tuple[float, float]:
    """Two independent U[0, 1) numbers determined by (seed, index)."""
    h = _splitmix64(_splitmix64(seed & _MASK64) ^ (index & _MASK64))
    h2 = _splitmix64(h)
    return (h >> 11) / float(1 << 53), (h2 >> 11) / float(1 << 53)


def pair_map(class_names: Sequence[str], pairs: Sequence[Sequence[str]] = ()) -> np.ndarray:
    """(C,) int32 partner of each class (-1 = none) from (from_name, to_name) pairs.

    Names are matched canonically ('joy' == 'happiness'); pairs naming classes the dataset
    lacks are ignored. Empty `pairs` means DEFAULT_PAIRS.
    """
    names = [classes.canonical(n) for n in class_names]
    index = {n: i for i, n in enumerate(names)}
    partner = np.full(len(names), -1, np.int32)
    for src, dst in pairs or DEFAULT_PAIRS:
        src, dst = classes.canonical(src), classes.canonical(dst)
        if src in index and dst in index and partner[index[src]] < 0:
            partner[index[src]] = index[dst]
    return partner


class LabelNoise:
    """Picklable label-flip function (used inside grain workers).

    Args:
      num_classes: C.
      rate: flip probability r in [0, 1].
      kind: 'symmetric' or 'pairs'.
      seed: noise seed (independent of the shuffle seed).
      partners: (C,) int32 from `pair_map`, required for 'pairs'.
    """

    def __init__(
        self,
        num_classes: int,
        rate: float,
        kind: str = "symmetric",
        seed: int = 0,
        partners: np.ndarray | None = None,
    ):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"config.data.label_noise.rate={rate} must be in [0, 1].")
        if kind not in ("symmetric", "pairs"):
            raise ValueError(
                f"config.data.label_noise.kind={kind!r} must be 'symmetric' or 'pairs'."
            )
        if kind == "pairs" and partners is None:
            raise ValueError("'pairs' label noise needs a partner map (noise.pair_map).")
        self.num_classes = num_classes
        self.rate = float(rate)
        self.kind = kind
        self.seed = int(seed)
        self.partners = None if partners is None else np.asarray(partners, np.int32)

    def __call__(self, index: int, label: int) -> int:
        """Noisy label of the record at `index` whose clean label is `label`."""
        if self.rate <= 0.0:
            return int(label)
        u_flip, u_class = uniforms(self.seed, int(index))
        if u_flip >= self.rate:
            return int(label)
        if self.kind == "symmetric":
            offset = 1 + int(u_class * (self.num_classes - 1))
            return (int(label) + offset) % self.num_classes
        partner = int(self.partners[int(label)])
        return int(label) if partner < 0 else partner

    def apply(self, indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Vectorised over arrays of record indices and clean labels; (N,) int32."""
        return np.asarray([self(i, y) for i, y in zip(indices, labels)], np.int32)


# A label file's label for a record that training leaves out (`--clean drop` of the label-issue
# finder writes it; source.train_record_indices skips such records).
DROPPED = -1


class GivenLabels:
    """Picklable label function of a label file: record index -> the file's label.

    Args:
      labels: (N,) int32, one given label per training record in record order; DROPPED (-1)
        for a record that training leaves out.
    """

    def __init__(self, labels: np.ndarray):
        self.labels = np.asarray(labels, np.int32)

    @property
    def dropped(self) -> np.ndarray:
        """Sorted (D,) int64 indices of the records the file drops (label DROPPED)."""
        return np.flatnonzero(self.labels == DROPPED).astype(np.int64)

    def __call__(self, index: int, label: int) -> int:
        del label  # the file decides
        return int(self.labels[int(index)])

    def apply(self, indices: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(N,) int32 given labels of `indices` (the clean `labels` are ignored)."""
        del labels
        return self.labels[np.asarray(indices, np.int64)]


def read_label_file(path: str, class_names: Sequence[str], num_records: int) -> np.ndarray:
    """(N,) int32 labels from a text file (a class index or class name per line) or an .npy.

    A label of -1 (`DROPPED`) leaves that record out of training (a cleaned label file of
    `python -m grefel_jax.study.label_issues --clean drop`).

    Raises:
      ValueError: one line naming `config.data.label_noise.file`, the file and what is wrong.
    """
    import os

    where = f"config.data.label_noise.file={path}"
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise ValueError(f"{where}: no such file.")
    num_classes = len(class_names)
    if path.endswith(".npy"):
        labels = np.load(path, allow_pickle=False).reshape(-1)
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{where}: expected integer labels, got dtype {labels.dtype}.")
    else:
        by_name = {classes.canonical(n): i for i, n in enumerate(class_names)}
        values = []
        with open(path) as f:
            for number, line in enumerate(f, start=1):
                text = line.strip()
                if not text:
                    continue
                if text.lstrip("-").isdigit():
                    values.append(int(text))
                elif classes.canonical(text) in by_name:
                    values.append(by_name[classes.canonical(text)])
                else:
                    raise ValueError(
                        f"{where}: line {number}: {text!r} is neither a class index nor one "
                        f"of {list(class_names)}."
                    )
        labels = np.asarray(values, np.int64)
    if len(labels) != num_records:
        raise ValueError(
            f"{where}: {len(labels)} labels, but the training split has {num_records} records "
            "(one label per record, in record order)."
        )
    bad = np.flatnonzero(((labels < 0) & (labels != DROPPED)) | (labels >= num_classes))
    if len(bad):
        raise ValueError(
            f"{where}: label {int(labels[bad[0]])} of record {int(bad[0])} is outside "
            f"0..{num_classes - 1} (or {DROPPED}: dropped)."
        )
    return labels.astype(np.int32)


def from_config(
    noise_config, class_names: Sequence[str], num_records: int | None = None
) -> LabelNoise | GivenLabels:
    """The training-label function of `config.data.label_noise`.

    A `file` (needs `num_records`, the training split's size) gives GivenLabels; otherwise
    LabelNoise from rate, kind, pairs and seed.
    """
    label_file = str(noise_config.get("file", "") or "")
    if label_file:
        if num_records is None:
            raise ValueError("config.data.label_noise.file needs the training split's size.")
        return GivenLabels(read_label_file(label_file, class_names, num_records))
    kind = noise_config.kind
    partners = pair_map(class_names, tuple(noise_config.get("pairs", ()) or ()))
    return LabelNoise(
        num_classes=len(class_names),
        rate=float(noise_config.rate),
        kind=kind,
        seed=int(noise_config.seed),
        partners=partners,
    )
