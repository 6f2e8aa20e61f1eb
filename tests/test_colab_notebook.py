"""launch/colab.ipynb runs top to bottom on CPU: cloned from this working tree, QUICK settings
(tiny model, 20 steps), in a real Jupyter kernel through nbclient. The pip-install lines are
left out (GREFEL_INSTALL=0): the kernel runs in the environment that runs the tests."""

from __future__ import annotations

import pathlib
import subprocess

import nbformat
import pytest
from nbclient import NotebookClient

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "launch" / "colab.ipynb"


def test_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    if subprocess.run(["git", "-C", str(REPO), "rev-parse"], capture_output=True).returncode:
        pytest.skip("not a git checkout: the notebook's clone step needs one")
    # The clone takes what is committed; the test is of the notebook as it is in git.
    monkeypatch.setenv("GREFEL_SOURCE", str(REPO))
    monkeypatch.setenv("GREFEL_QUICK", "1")
    monkeypatch.setenv("GREFEL_INSTALL", "0")
    monkeypatch.setenv("GREFEL_WORK", str(tmp_path))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "Traceback" not in text, text[-3000:]
    assert (tmp_path / "grefel_jax" / "pyproject.toml").exists()  # cloned
    run = tmp_path / "runs" / "demo_quick"
    assert (run / "eval_test.json").exists() and (run / "confusion_test_primary.png").exists()
    assert "test: accuracy" in text and "on 70 examples" in text
    # Inline results: the curves and the confusion matrix as PNGs, the prediction table as HTML
    # with one row per sample face (7 classes).
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2
    tables = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(tables) == 1 and tables[0].count("<tr>") == 1 + 7
