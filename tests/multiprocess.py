"""Runs an experiment CLI as N local processes joined by jax.distributed, on loopback only.

Each process gets its own CPU devices (``JAX_NUM_CPU_DEVICES``), the same command and its
``--process-id``; the coordinator is process 0 on 127.0.0.1 at a free port. Every wait is
bounded, and the children are killed whatever happens to the test.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]


class Finished(NamedTuple):
  returncode: int
  stderr: str


def free_port() -> int:
  """A loopback TCP port nobody listens on now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def process_env(devices: int, cache: Path) -> dict[str, str]:
  """The environment of one process: ``devices`` CPU devices, the given compilation cache."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices),
         "JAXDIFF_CACHE": str(cache)}  # fmt: skip
  env.pop("XLA_FLAGS", None)  # conftest.py's four simulated devices are the test process's
  return env


@contextlib.contextmanager
def started(
  cli: Path, args: Sequence[object], *, processes: int, devices: int, cache: Path
) -> Iterator[list[subprocess.Popen]]:
  """Starts ``processes`` copies of ``cli`` (one without process flags); kills them at exit."""
  port = free_port()
  children = []
  try:
    for process_id in range(processes):
      joined = []
      if processes > 1:
        joined = ["--coordinator-address", f"127.0.0.1:{port}", "--num-processes", processes,
                  "--process-id", process_id, "--initialization-timeout", 60]  # fmt: skip
      # stderr to a file, not a pipe: a full pipe would stall a child inside a collective.
      stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed with its child, below)
      child = subprocess.Popen(
        [sys.executable, str(cli), *map(str, args), *map(str, joined)],
        cwd=ROOT, env=process_env(devices, cache), stdout=subprocess.DEVNULL, stderr=stderr,
      )  # fmt: skip
      child.stderr_file = stderr
      children.append(child)
    yield children
  finally:
    for child in children:
      if child.poll() is None:
        child.kill()
      child.wait()
      child.stderr_file.close()


def wait_all(children: Sequence[subprocess.Popen], timeout_s: float) -> list[Finished]:
  """Every child's exit code and stderr; raises TimeoutError past ``timeout_s`` in all."""
  deadline = time.monotonic() + timeout_s
  finished = []
  for child in children:
    try:
      child.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired as error:
      raise TimeoutError(f"{child.args} still runs after {timeout_s} s") from error
    child.stderr_file.seek(0)
    finished.append(Finished(child.returncode, child.stderr_file.read()))
  return finished


def run(cli: Path, args: Sequence[object], *, processes: int, devices: int, cache: Path,
        timeout_s: float = 600) -> list[Finished]:  # fmt: skip
  """Runs the command as ``processes`` joined processes of ``devices`` CPU devices each."""
  with started(cli, args, processes=processes, devices=devices, cache=cache) as children:
    return wait_all(children, timeout_s)
