"""`DIR/model.json`: what an exported model needs besides its artifact, and the checksums.

Read by the runner, so this module imports only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MANIFEST = "model.json"
FORMAT = "grefel_jax.export"
VERSION = 1
# One file per format, always the same name, so a directory holds one exported model.
ARTIFACT_FILES = {"stablehlo": "model.stablehlo", "onnx": "model.onnx"}
FORMATS = tuple(ARTIFACT_FILES)


class ManifestError(ValueError):
    """A missing, unreadable or inconsistent export directory; the message names the file."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | os.PathLike, manifest: Mapping[str, Any]) -> Path:
    """Writes `directory/model.json` (indented, keys in the given order); returns its path."""
    path = Path(directory) / MANIFEST
    path.write_text(json.dumps(dict(manifest), indent=2) + "\n")
    return path


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Reads and checks `directory/model.json`.

    Raises:
      ManifestError: the directory or file is missing, not JSON, or not an export manifest.
    """
    directory = Path(directory)
    path = directory / MANIFEST
    if not directory.is_dir():
        raise ManifestError(f"{directory}: no such export directory.")
    if not path.is_file():
        raise ManifestError(f"{path}: missing; not a directory written by grefel_jax.export.")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: not valid JSON ({e}).") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"{path}: 'format' is not {FORMAT!r}.")
    if manifest.get("version") != VERSION:
        raise ManifestError(
            f"{path}: version {manifest.get('version')!r}, this runner reads {VERSION}."
        )
    for key in ("class_names", "input", "batch", "outputs", "artifacts"):
        if key not in manifest:
            raise ManifestError(f"{path}: lacks {key!r}.")
    return manifest


def artifact_path(directory: str | os.PathLike, manifest: Mapping[str, Any], fmt: str) -> Path:
    """The file of format `fmt`, after checking that it exists and matches its checksum.

    Raises:
      ManifestError: `fmt` was not exported (naming those that were), the file is missing,
        or its SHA-256 differs from the manifest's (a truncated copy, an edited file).
    """
    artifacts = manifest["artifacts"]
    if fmt not in artifacts:
        raise ManifestError(
            f"{Path(directory) / MANIFEST}: no {fmt!r} artifact (exported: {sorted(artifacts)})."
        )
    entry = artifacts[fmt]
    path = Path(directory) / entry["file"]
    if not path.is_file():
        raise ManifestError(f"{path}: missing (listed in {MANIFEST}).")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ManifestError(
            f"{path}: SHA-256 {actual[:12]}... differs from {MANIFEST}'s "
            f"{entry['sha256'][:12]}...; the file was changed or copied incompletely."
        )
    return path
