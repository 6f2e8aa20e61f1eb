"""PyTorch -> Flax weight converters for the official IR-50, MobileFaceNet, POSTER++ and
ARBEx checkpoints (`python -m grefel_jax.convert --help`), and the way back for the identity
network (`python -m grefel_jax.convert.export_ir50`: face.evoLVe's `ir50.pth`).

Reading a checkpoint needs neither torch nor trust in the file: `safe_load` parses torch's
formats itself with an allow-list unpickler. Nothing here imports torch; `export_ir50`
imports it when it writes a PyTorch file.

    from grefel_jax.convert import convert
    convert("poster_v2", ["raf-db-model_best.pth"], "weights/posterv2_rafdb")
"""

from grefel_jax.convert.api import KINDS, Converted, build, convert
from grefel_jax.convert.common import ConversionError
from grefel_jax.convert.safe_load import (
    CheckpointFormatError,
    InertObject,
    UnsafeCheckpointError,
    load_torch_checkpoint,
)

__all__ = [
    "KINDS",
    "CheckpointFormatError",
    "ConversionError",
    "Converted",
    "InertObject",
    "UnsafeCheckpointError",
    "build",
    "convert",
    "load_torch_checkpoint",
]
