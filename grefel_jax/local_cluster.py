r"""Runs one command as N JAX processes on this machine, each with its own CPU devices.

  python -m grefel_jax.local_cluster --processes 2 --devices_per_process 2 -- \
      python -m grefel_jax.main --config configs/demo.py --workdir runs/mp

This is JAX's multi-controller runtime exactly as on a TPU pod slice or a multi-node GPU job
(one Python process per host, a coordinator, collectives between processes), with the
processes on one machine and CPU devices standing in for accelerators: CPU collectives go
through gloo. Each process gets the environment that `sharding.maybe_initialize_distributed`
reads (docs/multiprocess.md):

  JAX_COORDINATOR_ADDRESS=127.0.0.1:<free port>  JAX_NUM_PROCESSES=N  JAX_PROCESS_ID=i
  JAX_PLATFORMS=cpu  XLA_FLAGS=... --xla_force_host_platform_device_count=D

Output lines are prefixed with `[p<i>]`. SIGTERM or Ctrl-C is forwarded to every process (a
training run saves a checkpoint and stops, as on a preemption). If one process fails, the
others are given `--grace_s` seconds (they may be blocked in a collective with it) and then
killed; the exit status is the first non-zero one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("processes", 2, "Number of JAX processes (hosts) to start.", lower_bound=1)
flags.DEFINE_integer(
    "devices_per_process", 1, "CPU devices of each process (fake hosts' chips).", lower_bound=1
)
flags.DEFINE_integer("port", 0, "Coordinator port on 127.0.0.1; 0 = a free one.", lower_bound=0)
flags.DEFINE_bool("compilation_cache", False, "Keep JAX's persistent compilation cache on.")
flags.DEFINE_float("grace_s", 20.0, "Seconds the others get after one process fails.")

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(
    base: dict[str, str], *, address: str, count: int, index: int, devices: int, cache: bool = False
):
    """The environment of process `index` of `count` (see the module docstring)."""
    env = dict(base)
    xla_flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
    env.update(
        JAX_COORDINATOR_ADDRESS=address,
        JAX_NUM_PROCESSES=str(count),
        JAX_PROCESS_ID=str(index),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=" ".join([*xla_flags, f"{DEVICE_COUNT_FLAG}={devices}"]),
        PYTHONUNBUFFERED="1",
        # With jax 0.10.2 on CPU, a second 2-process run that read its train step from the
        # persistent compilation cache hung in gloo (process 0 loaded the cached program,
        # process 1 compiled anew; "Gloo context initialization failed: GetKeyValue() timed
        # out"). Off by default here; --compilation_cache turns it back on.
        JAX_ENABLE_COMPILATION_CACHE="true" if cache else "false",
    )
    return env


def _relay(stream, prefix: str) -> None:
    """Copies a child's output to ours line by line, with its process prefix."""
    for line in iter(stream.readline, b""):
        sys.stdout.write(f"{prefix}{line.decode(errors='replace')}")
        sys.stdout.flush()
    stream.close()


def run(
    command: list[str],
    *,
    processes: int,
    devices: int,
    port: int = 0,
    grace_s: float = 20.0,
    cache: bool = False,
) -> int:
    """Starts `command` `processes` times and waits for all; returns the exit status."""
    address = f"127.0.0.1:{port or free_port()}"
    children, relays = [], []
    for index in range(processes):
        env = process_env(
            dict(os.environ),
            address=address,
            count=processes,
            index=index,
            devices=devices,
            cache=cache,
        )
        child = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0
        )
        relay = threading.Thread(target=_relay, args=(child.stdout, f"[p{index}] "), daemon=True)
        relay.start()
        children.append(child)
        relays.append(relay)

    def forward(signum, frame):
        del frame
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)

    status, failed_at = 0, None
    while any(child.poll() is None for child in children):
        for index, child in enumerate(children):
            code = child.poll()
            if code not in (None, 0) and status == 0:
                status, failed_at = code, time.monotonic()
                print(f"[local_cluster] process {index} exited with {code}.", flush=True)
        if failed_at is not None and time.monotonic() - failed_at > grace_s:
            for child in children:
                if child.poll() is None:
                    child.kill()
        time.sleep(0.1)
    for relay in relays:
        relay.join(timeout=5)
    if status == 0:
        status = next((c.returncode for c in children if c.returncode != 0), 0)
    return status if status >= 0 else 128 - status  # killed by signal s: 128 + s, as a shell


def main(argv):
    command = argv[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise app.UsageError("give the command to run after --, e.g. -- python -m grefel_jax.main")
    sys.exit(
        run(
            command,
            processes=FLAGS.processes,
            devices=FLAGS.devices_per_process,
            port=FLAGS.port,
            grace_s=FLAGS.grace_s,
            cache=FLAGS.compilation_cache,
        )
    )


if __name__ == "__main__":
    from grefel_jax import cli

    app.run(main, flags_parser=cli.parse_flags)
