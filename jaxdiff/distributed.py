"""One run over many processes (hosts), on JAX's own distributed runtime.

JAX's multi-controller model: the same program runs in every process, one per host (or per
GPU), and ``jax.distributed.initialize`` joins them, so that ``jax.devices()`` lists every
process's devices and a mesh over them spans the hosts. jaxdiff's engine already works that
way (replicated state, the batch split on the data axis, gradients ``pmean``-ed): this module
only joins the processes, before JAX starts, and answers the one question the rest asks,
whether this process is the one that writes files and logs.

What each process does in a joined run:

* it loads the data itself (the data sets are small) and puts it on its own devices only;
  every step's batch indices are then drawn on the devices from ``(key, epoch, step)``, so no
  host feeds another's devices and the result does not depend on how the devices are split
  over processes (beyond the order of float reductions);
* every process takes part in orbax checkpoints (orbax coordinates them);
* only process 0 writes reports, figures and caches (:mod:`jaxdiff.files`), draws progress bars
  and logs (:func:`jaxdiff.loop.fit`); a cache that decides what runs is used only where every
  process has it (:func:`every_process`), as hosts need not share a file system.

JAX aborts a process whose coordinator never answers, without a Python exception to catch;
:func:`initialize` therefore checks the coordinator's address itself first, for a bounded time,
and raises :class:`DistributedError` instead.

Example:
  On each of two hosts (process ids 0 and 1), before any JAX array exists:

  >>> initialize(ProcessGroup("10.0.0.1:1234", num_processes=2, process_id=0))  # doctest: +SKIP
  >>> jax.device_count()  # every process's devices  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils


class DistributedError(RuntimeError):
  """Joining the processes failed: bad settings or an unreachable coordinator."""


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
  """How this process joins a run of several: the arguments of ``jax.distributed.initialize``.

  Attributes:
    coordinator_address: ``HOST:PORT`` of process 0, which serves the coordinator there
      (None with ``detect``).
    num_processes: how many processes take part.
    process_id: this process's number, 0 to ``num_processes - 1``.
    detect: let JAX detect all three from the cluster (Cloud TPU, SLURM, Open MPI, GKE...):
      ``jax.distributed.initialize()`` without arguments.
    initialization_timeout: seconds to wait for the coordinator and the other processes.
  """

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  detect: bool = False
  initialization_timeout: int = 300

  def __post_init__(self):
    explicit = (self.coordinator_address, self.num_processes, self.process_id)
    if self.detect and any(value is not None for value in explicit):
      raise DistributedError(
        "--distributed lets JAX detect the cluster; give it alone, or give "
        "--coordinator-address, --num-processes and --process-id instead"
      )
    if not self.detect and any(value is None for value in explicit):
      raise DistributedError(
        "--coordinator-address, --num-processes and --process-id go together: give all three"
      )
    if self.initialization_timeout <= 0:
      raise DistributedError(
        f"the initialization timeout must be positive, got {self.initialization_timeout} s"
      )
    if self.detect:
      return
    host_port(self.coordinator_address)
    if self.num_processes < 1:
      raise DistributedError(f"--num-processes must be at least 1, got {self.num_processes}")
    if not 0 <= self.process_id < self.num_processes:
      raise DistributedError(
        f"--process-id {self.process_id} is not one of the {self.num_processes} processes' ids "
        f"0..{self.num_processes - 1}"
      )


def host_port(address: str) -> tuple[str, int]:
  """``"HOST:PORT"`` split into its host and port number.

  Raises:
    DistributedError: not of that form.
  """
  host, _, port = address.rpartition(":")
  if not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise DistributedError(f"the coordinator address must be HOST:PORT, got {address!r}")
  return host.strip("[]"), int(port)


def initialize(group: ProcessGroup) -> None:
  """Joins this process to the others: call before anything starts a JAX backend.

  CPU devices of different processes reduce over JAX's ``jax_cpu_collectives_implementation``
  (gloo by default).

  Raises:
    DistributedError: process 0 cannot serve the coordinator's port, or another process
      cannot reach it within ``group.initialization_timeout`` seconds.
    RuntimeError: JAX had already started (``jax.distributed.initialize``'s own error).
  """
  if group.detect:
    jax.distributed.initialize(initialization_timeout=group.initialization_timeout)
    return
  host, port = host_port(group.coordinator_address)
  if group.process_id == 0:
    _check_port_free(port)
  else:
    _wait_for_coordinator(host, port, group.initialization_timeout)
  jax.distributed.initialize(
    group.coordinator_address,
    num_processes=group.num_processes,
    process_id=group.process_id,
    initialization_timeout=group.initialization_timeout,
  )


def is_main_process() -> bool:
  """Whether this is process 0, the one that writes reports and logs (always, in one process).

  Without a joined run, answers True without starting a JAX backend.
  """
  return not jax.distributed.is_initialized() or jax.process_index() == 0


def every_process(answer: bool) -> bool:
  """Whether ``answer`` is True in every process (in one process, ``answer`` itself).

  For choices that decide which programs run, such as "is the cache there?": processes that
  chose differently would wait for each other in different collectives. Every process must
  call it.
  """
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return answer
  answers = multihost_utils.process_allgather(np.asarray(answer, np.int32))
  return bool(np.all(answers))


def _check_port_free(port: int) -> None:
  # Process 0 serves the coordinator on every interface at this port (JAX's default bind).
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
    probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT is fine
    try:
      probe.bind(("", port))
    except OSError as error:
      raise DistributedError(
        f"process 0 cannot serve the coordinator on port {port} ({error.strerror}); "
        "choose a free port in --coordinator-address"
      ) from error


def _wait_for_coordinator(host: str, port: int, timeout_s: float) -> None:
  # Process 0 may start later than the others: retry until the deadline, as JAX would.
  deadline = time.monotonic() + timeout_s
  while True:
    try:
      with socket.create_connection((host, port), timeout=min(5.0, timeout_s)):
        return
    except OSError as error:
      if time.monotonic() >= deadline:
        raise DistributedError(
          f"no coordinator answered at {host}:{port} within {timeout_s:g} s ({error}); start "
          "process 0 with the same --coordinator-address, or check the address"
        ) from error
      time.sleep(0.2)
