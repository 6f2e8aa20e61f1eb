"""Run logs: TensorBoard events (tensorboardX), `metrics.jsonl`, console lines, run info.

Only process 0 writes files; every process may call the methods.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import logging
import platform
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from etils import epath

PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "grain",
    "tensorflow-datasets",
    "ml-collections",
    "numpy",
    "grefel_jax",
)


class MetricWriter:
    """Scalars and images to TensorBoard and `WORKDIR/metrics.jsonl`.

    Each JSONL line is `{"step": int, "split": str, "time": float, <metric>: value, ...}`.
    """

    def __init__(self, workdir: str | epath.PathLike, *, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.workdir = epath.Path(workdir)
        self._tb = None
        self._jsonl = None
        if self.enabled:
            from tensorboardX import SummaryWriter

            self.workdir.mkdir(parents=True, exist_ok=True)
            self._tb = SummaryWriter(logdir=str(self.workdir / "tensorboard"))
            self._jsonl = (self.workdir / "metrics.jsonl").open("a")

    def write_scalars(self, step: int, scalars: Mapping[str, Any], split: str = "train") -> None:
        """Writes `split/name` scalars to TensorBoard and one JSONL line."""
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        for name, value in values.items():
            self._tb.add_scalar(f"{split}/{name}", value, global_step=int(step))
        record = {"step": int(step), "split": split, "time": time.time(), **values}
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()

    def write_image(self, step: int, name: str, image: np.ndarray) -> None:
        """Writes an (H, W, 3) uint8 image to TensorBoard."""
        if self.enabled:
            self._tb.add_image(name, image, global_step=int(step), dataformats="HWC")

    def flush(self) -> None:
        """Flushes TensorBoard events."""
        if self.enabled:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the files."""
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False


class ProgressLogger:
    """Console line every N steps: loss, accuracy, steps/s, images/s, ETA."""

    def __init__(
        self,
        total_steps: int,
        global_batch_size: int,
        start_step: int = 0,
        extra: tuple[str, ...] = (),
    ):
        """`extra`: names of further metrics shown after the loss (landmark pretraining)."""
        self.extra = tuple(extra)
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def reset_timer(self, step: int) -> None:
        """Restart the rate measurement (e.g. after compilation or evaluation)."""
        self._last_step = step
        self._last_time = time.perf_counter()

    def rates(self, step: int) -> dict[str, float]:
        """steps/s and images/s since the last call; resets the timer."""
        now = time.perf_counter()
        steps = max(step - self._last_step, 0)
        elapsed = max(now - self._last_time, 1e-9)
        self._last_step, self._last_time = step, now
        steps_per_s = steps / elapsed
        return {"steps_per_s": steps_per_s, "images_per_s": steps_per_s * self.global_batch_size}

    def line(self, step: int, metrics: Mapping[str, float], rates: Mapping[str, float]) -> str:
        """Formats and logs one console line; returns it."""
        remaining = max(self.total_steps - step, 0)
        eta = remaining / rates["steps_per_s"] if rates["steps_per_s"] > 0 else float("inf")
        eta_text = str(datetime.timedelta(seconds=int(eta))) if np.isfinite(eta) else "?"
        width = len(str(self.total_steps))
        loss = metrics.get("loss", float("nan"))
        text = f"step {step:>{width}}/{self.total_steps} | loss {loss:.4f}"
        if "accuracy" in metrics or not self.extra:
            text += f" | acc {metrics.get('accuracy', float('nan')):.3f}"
        for name in self.extra:
            text += f" | {name} {metrics.get(name, float('nan')):.4f}"
        text += (
            f" | {rates['steps_per_s']:.2f} steps/s | {rates['images_per_s']:.1f} img/s"
            f" | ETA {eta_text}"
        )
        if jax.process_index() == 0:  # one line per step, not one per host
            logging.info(text)
        return text


def cpu_name() -> str:
    """The CPU model name from /proc/cpuinfo (what `lscpu` prints), or the platform string."""
    try:
        for line in epath.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str | None:
    """The commit of the grefel_jax source tree, marked when it has uncommitted changes;
    None outside a git checkout (an installed package)."""
    import subprocess

    root = epath.Path(__file__).parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" (with uncommitted changes)" if dirty else "")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that matter for reproducing a run."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_run_info(workdir: str | epath.PathLike, config: Any) -> None:
    """Writes `config.json` (the resolved config) and `versions.json` into the workdir."""
    if jax.process_index() != 0:
        return
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    text = (
        config.to_json_best_effort(indent=2)
        if hasattr(config, "to_json_best_effort")
        else (json.dumps(config, indent=2, default=str))
    )
    (workdir / "config.json").write_text(text)
    info = {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "devices": {
            "platform": jax.devices()[0].platform,
            "device_kind": jax.devices()[0].device_kind,
            "device_count": jax.device_count(),
            "process_count": jax.process_count(),
        },
    }
    (workdir / "versions.json").write_text(json.dumps(info, indent=2))


class _DropChattyLibraries(logging.Filter):
    """Drops INFO records of orbax/grain/tfds (dozens per checkpoint) but keeps warnings."""

    PREFIXES = ("orbax", "grain", "tensorflow_datasets", "etils")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        path = record.pathname.replace("\\", "/")
        return not any(f"/{prefix}/" in path for prefix in self.PREFIXES)


def quiet_library_logs() -> None:
    """Installs the filter on every handler of the root and absl loggers."""
    chatty = _DropChattyLibraries()
    for logger in (logging.getLogger(), logging.getLogger("absl")):
        for handler in logger.handlers:
            handler.addFilter(chatty)
