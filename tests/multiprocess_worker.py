"""Run by tests/test_multiprocess.py under `grefel_jax.local_cluster`: joins the cluster the
launcher describes and writes the record keys this process reads in one training epoch and
one evaluation pass to OUT/keys_<process>.npz.

  python tests/multiprocess_worker.py DATA_DIR OUT
"""

import sys

import jax
import numpy as np
from absl import flags

from grefel_jax import sharding
from grefel_jax.data import pipeline
from grefel_jax.data.config import get_data_config


def main(data_dir: str, out: str) -> None:
    flags.FLAGS.mark_as_parsed()  # grain reads absl flags
    sharding.maybe_initialize_distributed()
    config = get_data_config()
    config.name, config.builder_config, config.data_dir = "synthetic_faces", "tiny_64", data_dir
    info = pipeline.dataset_info(config)
    batch = 20  # 140 train records: 7 steps per epoch
    steps = info.split_sizes["train"] // batch
    train = pipeline.make_train_iterator(config, image_size=32, global_batch_size=batch, seed=0)
    train_keys = np.concatenate([next(train)["record_key"] for _ in range(steps)])
    evaluation = pipeline.make_eval_iterator(config, "test", image_size=32, global_batch_size=16)
    eval_keys = np.concatenate([b["record_key"][b["mask"]] for b in evaluation])
    np.savez(
        f"{out}/keys_{jax.process_index()}.npz",
        train=train_keys,
        eval=eval_keys,
        process_count=jax.process_count(),
        device_count=jax.device_count(),
    )


if __name__ == "__main__":
    main(*sys.argv[1:3])
