"""Command-line mistakes (issue 29): each one is one `ERROR:` line naming the key, split or
path, exit status 2, before anything is compiled; `--help` exits with 0 everywhere.

The subprocess tests run commands that fail while reading their flags or the dataset's
metadata: each takes the time of importing the package (a few seconds at most), never of a
compilation.
"""

from __future__ import annotations

import ast
import concurrent.futures
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from cli_checks import one_error_line
from PIL import Image

from grefel_jax import cli
from grefel_jax.checkpoints import paths
from grefel_jax.models import make_model_config

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}

# Where the command lines are documented: each `python -m grefel_jax.<module>` named there must
# exist and answer --help with exit status 0.
DOCUMENTED_IN = ("README.md", "Makefile", "docs/*.md")


def documented_commands() -> list[str]:
    """The `grefel_jax.<module>` of every `python -m` that the documentation names."""
    paths = [p for pattern in DOCUMENTED_IN for p in sorted(REPO.glob(pattern))]
    text = "\n".join(p.read_text() for p in paths)
    return sorted(set(re.findall(r"-m (grefel_jax(?:\.\w+)+)", text)))


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"grefel_jax.{module}", *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_documented_command_answers_help_with_0():
    """Runs `--help` on every documented command line, six at a time: most of the time is
    the interpreter importing the package (jax for the commands that import it before
    parsing their flags)."""
    modules = documented_commands()
    # The commands of the quick start and of each task must be among those found.
    assert {
        "grefel_jax.main",
        "grefel_jax.prepare",
        "grefel_jax.predict",
        "grefel_jax.evaluate",
        "grefel_jax.pretrain",
        "grefel_jax.study",
        "grefel_jax.export",
    } <= set(modules), modules

    def help_of(module: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", module, "--help"],
            cwd=REPO,
            env=ENV,
            capture_output=True,
            text=True,
            timeout=300,
        )

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        results = dict(zip(modules, pool.map(help_of, modules)))
    failed = {m: (r.returncode, r.stderr[-300:]) for m, r in results.items() if r.returncode}
    assert failed == {}
    for module, result in results.items():
        # absl lists the flags ("Try --helpfull"), argparse prints its usage.
        assert "--helpfull" in result.stdout or "usage:" in result.stdout, (module, result.stdout)
    print(f"{len(modules)} --help runs in {time.perf_counter() - start:.1f} s")


def test_every_absl_command_line_goes_through_cli_parse_flags():
    """absl's own parser exits 1 on --help and prints config errors as tracebacks: every
    module that calls `app.run` must pass `flags_parser=cli.parse_flags`."""
    offenders = []
    for path in sorted((REPO / "grefel_jax").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "run"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "app"
                and not any(k.arg == "flags_parser" for k in node.keywords)
            ):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


@pytest.mark.parametrize("flag", ["--help", "-h", "--helpfull"])
def test_help_flags_exit_0_through_cli_parse_flags(flag, capsys):
    from absl import app

    app.define_help_flags()  # what app.run does before parsing
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_flags(["prog", flag])
    assert exit_info.value.code == 0
    assert "flags" in capsys.readouterr().out.lower()
    with pytest.raises(SystemExit) as exit_info:  # a mistake still exits with 2
        cli.parse_flags(["prog", "--no_such_flag=1"])
    assert exit_info.value.code == 2


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(capsys):
    from grefel_jax.checkpoints import CheckpointError, WorkdirBusyError
    from grefel_jax.data.errors import DatasetNotPreparedError

    expected = [
        DatasetNotPreparedError("Dataset 'x' is not prepared.\nBuild it with:\n  python -m ..."),
        WorkdirBusyError("runs/a: another run holds it."),
        CheckpointError("runs/b: no readable checkpoint."),
        ValueError("config.batch_size=0 must be positive."),
        KeyError("split 'tset' not found"),  # expected only where the command says so
    ]
    for error in expected:
        with pytest.raises(SystemExit) as exit_info, cli.user_errors(KeyError):
            raise error
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("ERROR: ") and err.count("\n") == 1, err
    assert err == "ERROR: split 'tset' not found\n"  # a KeyError's quotes are dropped
    with pytest.raises(KeyError), cli.user_errors():
        raise KeyError("not expected here")
    with pytest.raises(RuntimeError), cli.user_errors():  # a bug keeps its traceback
        raise RuntimeError("a bug")


@pytest.mark.parametrize(
    "section, field, value, message",
    [
        ("head", "num_anchors", 0, "model.head.num_anchors=0 must be > 0"),
        ("head", "temperature", -1.0, "model.head.temperature=-1.0 must be > 0"),
        ("head", "delta", 0.0, "model.head.delta=0.0 must be > 0"),
        ("head", "mlp_hidden", (64, 0), r"model.head.mlp_hidden=\(64, 0\) must be > 0"),
        ("head", "attention_tokens", 3, "model.head.attention_tokens=3 and attention_heads"),
        ("head", "anchor_init_std", -0.1, "model.head.anchor_init_std=-0.1 must be >= 0"),
        ("backbone", "vit_heads", 0, "model.backbone.vit_heads=0 must be > 0"),
        ("backbone", "window_heads", (2, 0, 8), "model.backbone.window_heads"),
        ("backbone", "ir_units", (1, 0, 2), "model.backbone.ir_units"),
        ("backbone", "drop_path_max", 1.0, r"model.backbone.drop_path_max=1.0 must be in"),
        ("backbone", "vit_init_std", 0.0, "model.backbone.vit_init_std=0.0 must be > 0"),
        ("backbone", "image_size", 0, "model.backbone.image_size=0 must be > 0"),
    ],
)
def test_model_config_values_are_checked_when_the_config_is_built(section, field, value, message):
    overrides = {f"{section}_overrides": {field: value}}
    with pytest.raises(ValueError, match=message):
        make_model_config("tiny", **overrides)


def test_a_config_flag_that_is_not_a_config_file_is_left_alone(tmp_path):
    """`prepare --config NAME` names a builder config: a plain string, not a config file to
    load and check (the quick start's first command)."""
    result = _run(
        "prepare",
        "--dataset=synthetic_faces",
        "--config=tiny_64",
        f"--data_dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "synthetic_faces/tiny_64" in result.stdout


def test_a_bad_config_value_is_one_line_before_the_workdir_exists(tmp_path):
    result = _run(
        "main",
        "--config",
        "configs/demo.py",
        "--workdir",
        str(tmp_path / "run"),
        "--config.model.head.num_anchors=0",
    )
    assert one_error_line(result) == "ERROR: --config.model.head.num_anchors=0 must be > 0."
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """An image_folder dataset of 12 images: its metadata is all the split check reads."""
    from grefel_jax.prepare import prepare

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label in ("happy", "sad"):
            for i in range(3):
                path = root / "photos" / split / label / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
    data_dir = root / "data"
    prepare(
        "image_folder",
        config="mine",
        data_dir=str(data_dir),
        manual_dir=str(root / "photos"),
        verbose=False,
    )
    return [
        "--config",
        "configs/demo.py",
        "--config.data.name=image_folder",
        "--config.data.builder_config=mine",
        f"--config.data.data_dir={data_dir}",
    ]


def test_evaluate_names_a_split_the_dataset_lacks(tiny_folder, tmp_path):
    result = _run("evaluate", "--checkpoint", str(tmp_path), *tiny_folder, "--split", "tset")
    line = one_error_line(result)
    assert line == (
        "ERROR: --split='tset': image_folder/mine has no such split; its splits are "
        "['test', 'train']."
    )


def test_evaluate_names_a_misspelt_checkpoint(tmp_path):
    missing = tmp_path / "runs" / "deom"
    line = one_error_line(_run("evaluate", "--checkpoint", str(missing)))
    assert line == f"ERROR: --checkpoint={missing}: no such file or directory."


def test_a_workdir_whose_checkpoints_all_fail_to_read_is_one_clean_line(tmp_path):
    """Resuming: each unreadable step is named with TensorStore's cause, not a cut-off repr
    of its multi-kilobyte spec."""
    import jax
    import jax.numpy as jnp

    from grefel_jax.checkpoints import ModelRecord, TrainCheckpointer

    model = {"params": {"w": jnp.ones((4, 3))}, "batch_stats": {}}
    train = {"step": jnp.array(1), "rng": jnp.zeros((2,), jnp.uint32)}
    saver = TrainCheckpointer(tmp_path, best_metric=None, async_save=False)
    for step in (1, 2):
        saver.save(step, model, train, ModelRecord(make_model_config("tiny")))
    saver.close()
    damaged = sorted((tmp_path / "checkpoints").glob("*/model/manifest.ocdbt"))
    assert len(damaged) == 2
    for path in damaged:
        path.write_bytes(b"damaged")

    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def abstract(tree):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), tree)

    reader = TrainCheckpointer(tmp_path, best_metric=None, async_save=False)
    with pytest.raises(paths.CheckpointError) as error:
        reader.restore(abstract(model), abstract(train))
    message = str(error.value)
    assert "\n" not in message and "tensorstore_spec" not in message and "{" not in message
    assert "step 2: DATA_LOSS" in message and "step 1: DATA_LOSS" in message
    assert "manifest.ocdbt" in message
    assert message.endswith("move that folder away to start afresh, or pass another --workdir.")


def test_error_summary_keeps_the_cause_and_drops_the_spec():
    spec = "{" + ", ".join(f'"k{i}": {i}' for i in range(400)) + "}"
    error = ValueError(
        'NOT_FOUND: Error opening "zarr" driver: Error reading "w/.zarray" in OCDBT database '
        'at local file "/r/checkpoints/7/model/": Error reading local file "/r/x": No such '
        f"file [source locations='a.cc:1'] [tensorstore_spec='{spec}']\nsecond line"
    )
    assert paths.error_summary(error) == (
        'NOT_FOUND: ...: Error reading "w/.zarray" in OCDBT database at local file '
        '"/r/checkpoints/7/model/": Error reading local file "/r/x": No such file'
    )
    assert len(paths.error_summary(ValueError("x" * 50 + " y" * 400))) <= 300


def test_prepare_takes_its_builder_config_as_a_plain_string(tmp_path):
    """`data.prepare --config NAME` is a builder config, not a config file: the shared flag
    parser must not read it as one (a regression: `--config 96` failed as 'no key str')."""
    result = subprocess.run(
        [sys.executable, "-m", "grefel_jax.data.prepare", "--dataset", "synthetic_faces"]
        + ["--config", "tiny_64", "--data_dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Prepared synthetic_faces/tiny_64" in result.stdout
