"""Checks shared by the tests of command lines: an expected user error is one line."""

from __future__ import annotations

import subprocess


def one_error_line(result: subprocess.CompletedProcess) -> str:
    """The single `ERROR: ...` line of a command that exited with status 2 (asserted)."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]
