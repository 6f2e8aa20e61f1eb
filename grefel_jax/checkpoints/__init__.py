"""Every orbax call of the project, split by job (formats: docs/checkpoints.md §6d):

* `paths`: the on-disk layouts and `CheckpointError`;
* `record`: `ModelRecord`, the model description saved with every checkpoint;
* `inference`: write an inference checkpoint, read one or a training workdir;
* `shapes`: check variables against a ModelConfig;
* `pretrained`: `init_from` merging of (partial) pretrained weights;
* `training`: `TrainCheckpointer` (async keep-N + best, corrupt-step-tolerant restore);
* `lock`: one run per workdir.
"""

from grefel_jax.checkpoints.inference import (
    load_inference_checkpoint,
    read_step_record,
    restore_numpy,
    save_inference_checkpoint,
)
from grefel_jax.checkpoints.lock import WorkdirBusyError, WorkdirLock
from grefel_jax.checkpoints.paths import CheckpointError, absolute_path
from grefel_jax.checkpoints.pretrained import (
    merge_pretrained,
    merge_pretrained_sources,
    resolve_source,
)
from grefel_jax.checkpoints.record import ModelRecord, default_preprocessing
from grefel_jax.checkpoints.shapes import check_variable_shapes, expected_variable_shapes
from grefel_jax.checkpoints.training import TrainCheckpointer, readable_step_order, write_record

__all__ = [
    "CheckpointError",
    "ModelRecord",
    "TrainCheckpointer",
    "WorkdirBusyError",
    "WorkdirLock",
    "absolute_path",
    "check_variable_shapes",
    "default_preprocessing",
    "expected_variable_shapes",
    "load_inference_checkpoint",
    "merge_pretrained",
    "merge_pretrained_sources",
    "read_step_record",
    "readable_step_order",
    "resolve_source",
    "restore_numpy",
    "save_inference_checkpoint",
    "write_record",
]
