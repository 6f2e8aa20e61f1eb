"""PyTorch reference modules of the official POSTER++ / ARBEx code, for parity tests only.

Written from docs/model.md §1 and docs/checkpoints.md §6 (not copied from the official
repositories), with the official module names so that `state_dict()` keys and shapes equal
those listed in docs/state_dict_keys.md (tests/test_torch_reference_keys.py asserts it).
Every size is a constructor argument: the defaults are the paper sizes, and
`sizes_from_backbone_config()` gives the sizes of our Flax `tiny` variant so that the parity
tests run in seconds.

torch is imported here and in the converter tests only, never by `grefel_jax` model code.
"""

from .arbex import (
    ArbexAnchors,
    ArbexClassifier,
    ArbexIR50,
    ArbexMobileFaceNet,
    ArbexModel,
    ArbexPosterV2,
    ArbexSelfAttn,
)
from .ir50 import IR50Backbone
from .mobilefacenet import MobileFaceNet
from .poster import PosterV2
from .util import randomize_, sizes_from_backbone_config

__all__ = [
    "ArbexAnchors",
    "ArbexClassifier",
    "ArbexIR50",
    "ArbexMobileFaceNet",
    "ArbexModel",
    "ArbexPosterV2",
    "ArbexSelfAttn",
    "IR50Backbone",
    "MobileFaceNet",
    "PosterV2",
    "randomize_",
    "sizes_from_backbone_config",
]
