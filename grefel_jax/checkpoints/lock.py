"""One training run per workdir: a lock file that a second run refuses to take.

Two runs writing into one workdir would interleave checkpoints and logs and resume from each
other's steps. The first run writes `WORKDIR/run.lock` (host, pid, start time); another run
stops with a message naming them. A lock left by a process that no longer exists on this
host (a crash, `kill -9`) is taken over with a warning. In multi-host jobs process 0 holds it.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket

import jax
from etils import epath

from grefel_jax.checkpoints.paths import absolute_path
from grefel_jax.errors import UserError

LOCK_FILE = "run.lock"


class WorkdirBusyError(UserError, RuntimeError):
    """Another run holds the workdir; the message names it and what to do."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirLock:
    """Context manager holding `WORKDIR/run.lock` for the duration of a run.

    Raises WorkdirBusyError on entry when a live run holds it.
    """

    def __init__(self, workdir):
        self.path = absolute_path(workdir) / LOCK_FILE
        self._held = False

    def __enter__(self) -> WorkdirLock:
        if jax.process_index() != 0:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        for _ in range(2):
            if self._create(json.dumps(me)):
                self._held = True
                return self
            holder = self._read()
            if holder is None:
                continue  # vanished or unreadable between the two calls: try again
            same_host = holder.get("host") == me["host"]
            if same_host and not _alive(int(holder.get("pid", -1))):
                logging.warning(
                    "%s: taking over the lock of process %s, which no longer runs.",
                    self.path,
                    holder.get("pid"),
                )
                self.path.unlink(missing_ok=True)
                continue
            raise WorkdirBusyError(
                f"{self.path.parent} is in use by another run (process {holder.get('pid')} on "
                f"{holder.get('host')}, started {holder.get('started')}). Use another --workdir, "
                f"wait for that run to end, or delete {self.path} if it is not running."
            )
        raise WorkdirBusyError(f"{self.path}: could not take the workdir lock.")

    def _create(self, text: str) -> bool:
        local = "://" not in os.fspath(self.path)
        if local:
            try:
                fd = os.open(os.fspath(self.path), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        if self.path.exists():  # object stores have no O_EXCL: check, then write
            return False
        self.path.write_text(text)
        return True

    def _read(self) -> dict | None:
        try:
            return json.loads(epath.Path(self.path).read_text())
        except (FileNotFoundError, json.JSONDecodeError, OSError):
            return None

    def __exit__(self, *exc) -> bool:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
        return False
