"""Shared pytest fixtures: a tiny generated dataset, built once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

# Training/evaluation tests rebuild the same jitted steps in several runs (resume, SIGTERM);
# a persistent compilation cache turns the repeats into cache hits. Set before jax is used.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "grefel_jax_test_jit_cache")
)

# Most of the suite's time is XLA compiling tiny programs whose run time does not matter.
# Where XLA:CPU still has its classic emitters (jaxlib 0.10), they compile the tiny model's
# train step ~1.5x faster than the newer fusion emitters (measured on 2 cores under load: 16 s
# instead of 24 s for the SAM step, 2 s instead of 8 s for a training gradient); both run the
# same HLO with fast-math off, so results differ by float rounding only. A jaxlib without the
# flag aborts on it, so a subprocess asks first (once: workers inherit the answer).
_FAST_COMPILE_FLAG = "--xla_cpu_use_fusion_emitters=false"


def _xla_accepts(flag: str) -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; jax.devices()"],
        env={**os.environ, "XLA_FLAGS": flag, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        timeout=120,
    )
    return probe.returncode == 0


if "xla_cpu_use_fusion_emitters" not in os.environ.get("XLA_FLAGS", "") + os.environ.get(
    "GREFEL_TEST_XLA_FLAGS_PROBED", ""
):
    if _xla_accepts(_FAST_COMPILE_FLAG):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE_FLAG}".strip()
    else:
        os.environ["GREFEL_TEST_XLA_FLAGS_PROBED"] = "xla_cpu_use_fusion_emitters: unknown"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_faces_config(tmp_path_factory):
    """`config.data` of synthetic_faces/tiny_64 (140 train / 35 validation / 70 test, 64x64),
    prepared once into a session temporary folder."""
    from grefel_jax.data.config import get_data_config
    from grefel_jax.prepare import prepare

    data_dir = str(tmp_path_factory.mktemp("tiny_faces"))
    prepare("synthetic_faces", data_dir=data_dir, config="tiny_64", verbose=False)
    config = get_data_config()
    config.name = "synthetic_faces"
    config.builder_config = "tiny_64"
    config.data_dir = data_dir
    config.eval_split = "test"
    config.augment.resize_crop = False
    config.augment.random_erasing_p = 0.0
    return config


@pytest.fixture(scope="session")
def tiny_identities_config(tmp_path_factory):
    """`config.data` of synthetic_identities/tiny_64 (12 train identities x 4 images, 20 + 20
    held-out identities x 3, 64x64), prepared once into a session temporary folder."""
    from grefel_jax.data.config import get_data_config
    from grefel_jax.prepare import prepare

    data_dir = str(tmp_path_factory.mktemp("tiny_identities"))
    prepare("synthetic_identities", data_dir=data_dir, config="tiny_64", verbose=False)
    config = get_data_config()
    config.name = "synthetic_identities"
    config.builder_config = "tiny_64"
    config.data_dir = data_dir
    config.eval_split = "validation"
    config.augment.resize_crop = False
    config.augment.random_erasing_p = 0.0
    return config


# The longest files go first, longest first (each file's test time in the suite, `pytest -n 2
# --dist loadfile` on 2 cores under other load, 2026-12-07: test_train 3.7 min, test_multiprocess
# 2.9, test_study 1.7, test_multiprocess_pretrain 1.6, test_model 1.4, then 0.5-1.1 min each), so
# that under `make test` the short files fill in around them at the end, instead of one long
# file starting last and running alone.
LONGEST_FIRST = (
    "test_train.py",
    "test_multiprocess.py",
    "test_study.py",
    "test_multiprocess_pretrain.py",
    "test_model.py",
    "test_benchmarks.py",
    "test_export.py",
    "test_convert_poster_v2.py",
    "test_predict.py",
    "test_identity_pretrain.py",
    "test_colab_notebook.py",
    "test_landmark_pretrain.py",
    "test_align.py",
    "test_video.py",
    "test_cli_errors.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
