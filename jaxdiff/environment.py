"""What a measurement ran on: the JAX device, the host CPU and the software versions.

Reports and benchmarks record :func:`describe` beside their numbers, so a result can be read
with the machine that produced it. Versions are read from the installed distributions'
metadata, never by importing a package: a benchmark can ask for ``torch``'s version without
the library importing torch.

Example:
  >>> describe()["platform"]
  'cpu'
  >>> sorted(describe(packages=("torch",))["versions"])  # "missing" where torch is not installed
  ['flax', 'jax', 'jaxlib', 'numpy', 'optax', 'python', 'torch']
"""

from __future__ import annotations

import importlib.metadata
import os
import platform as host
import time
from collections.abc import Sequence
from typing import Any

import jax

LIBRARY_PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")
"""The packages whose versions every description lists."""
MISSING = "missing"


def cpu_info(field: str) -> str | None:
  """The first value of ``field`` (``"model name"``, ``"vendor_id"``, ``"flags"``, ...) in
  ``/proc/cpuinfo``, or None where there is no such file or field."""
  try:
    with open("/proc/cpuinfo") as cpuinfo:
      for line in cpuinfo:
        name, _, value = line.partition(":")
        if name.strip() == field:
          return value.strip()
  except OSError:
    pass
  return None


def cpu_model() -> str:
  """The host CPU's model name from ``/proc/cpuinfo``, or ``"unknown"`` where there is none."""
  return cpu_info("model name") or "unknown"


def usable_cores() -> int | None:
  """The cores this process may run on (its affinity mask), not the machine's core count."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0))
  return os.cpu_count()


def package_version(package: str) -> str:
  """The installed version of the distribution ``package``, or ``"missing"``."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return MISSING


def describe_run(started: float, phase_seconds: dict[str, float] | None = None) -> dict[str, Any]:
  """:func:`describe` plus a finished run's wall time since ``started`` (a
  ``time.perf_counter()``), its phases' seconds (rounded to tenths), if given, the date, and
  the machine's load at the end (runnable processes, averaged over 1, 5 and 15 minutes: a load
  above the usable cores means the wall time was shared with other work)."""
  run = {"wall_time_s": time.perf_counter() - started}
  if hasattr(os, "getloadavg"):
    run["load_average"] = [round(load, 2) for load in os.getloadavg()]
  if phase_seconds is not None:
    run["phase_seconds"] = {phase: round(seconds, 1) for phase, seconds in phase_seconds.items()}
  return {**describe(), **run, "date": time.strftime("%Y-%m-%d")}


def describe(packages: Sequence[str] = ()) -> dict[str, Any]:
  """The device, platform, host and software versions, for reports.

  Starts JAX's backend if nothing has yet: select the platform first
  (:func:`jaxdiff.parallel.select_platform`).

  Args:
    packages: distributions whose versions to list besides Python's and
      :data:`LIBRARY_PACKAGES` (a benchmark adds ``"torch"``); missing ones read ``"missing"``.

  Returns:
    A JSON-serialisable dict of ``platform`` (``cpu``, ``gpu`` or ``tpu``), ``device_kind``,
    ``device_count`` (every process's), ``process_count``, ``cpu_model``, ``cpu_cores`` (the
    machine's), ``usable_cores`` (this process's affinity mask, what a job can actually use)
    and ``versions`` (name to version).
  """
  device = jax.devices()[0]
  names = dict.fromkeys((*LIBRARY_PACKAGES, *packages))
  return {
    "platform": device.platform,
    "device_kind": device.device_kind,
    "device_count": jax.device_count(),
    "process_count": jax.process_count(),
    "cpu_model": cpu_model(),
    "cpu_cores": os.cpu_count(),
    "usable_cores": usable_cores(),
    "versions": {"python": host.python_version(), **{n: package_version(n) for n in names}},
  }
