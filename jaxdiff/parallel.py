"""Platform selection and pmap-style data parallelism with ``jax.shard_map``.

The model is pmap's: one replica per device, every replica holding the whole
train state, the batch split along its leading axis, gradients averaged with
``lax.pmean``. It is written as ``jax.jit(jax.shard_map(...))`` over a 1-D
mesh, because ``jax.pmap`` is in maintenance mode since JAX 0.8.

Example:
  >>> mesh = make_mesh()
  >>> batch = shard_batch(np.zeros((8, 3)), mesh)  # 8 / n rows on each of n devices
  >>> batch.sharding.spec
  P('data',)
  >>> params = replicate({"w": jnp.ones(3)}, mesh)  # a whole copy on each device
  >>> params["w"].sharding.is_fully_replicated
  True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
PLATFORMS = ("cpu", "gpu", "tpu")


class PlatformError(RuntimeError):
  """The requested platform is unknown or has no devices here."""


class BatchShardingError(ValueError):
  """A batch that cannot be split evenly across the devices."""


def select_platform(platform: str | None) -> None:
  """Makes JAX use ``platform`` (``cpu``, ``gpu`` or ``tpu``); None keeps JAX's choice.

  Call before anything touches a JAX backend (creating an array does). Selecting the
  platform JAX already runs on is accepted.

  Raises:
    PlatformError: the name is unknown, the platform has no devices here, or JAX already
      started on another platform.
  """
  if platform is None:
    return
  if platform not in PLATFORMS:
    raise PlatformError(f"unknown platform {platform!r}; choose one of {', '.join(PLATFORMS)}")
  # JAX has no public "backend started?" query (jax-ml/jax#23320), but it reads
  # jax_platforms only when it starts its backends: so set it, start them (a no-op if they
  # run), and a default backend other than the one asked for means they had started already.
  previous = jax.config.jax_platforms
  jax.config.update("jax_platforms", platform)
  try:
    running = jax.default_backend()
  except RuntimeError as error:
    jax.config.update("jax_platforms", previous)
    raise PlatformError(
      f"platform {platform!r} was requested but is not available here "
      f"({str(error).splitlines()[0][:160]}); try --platform cpu"
    ) from error
  if running != platform:
    # Put back what JAX started with, so the setting matches the running backend.
    jax.config.update("jax_platforms", previous)
    raise PlatformError(
      f"JAX already started on {running!r}; select the platform before any JAX array is created"
    )


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh named ``"data"`` over ``devices`` (by default every process's devices)."""
  devices = list(devices) if devices is not None else jax.devices()
  return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices)


def make_data_mesh(batch_size: int, num_examples: int) -> Mesh:
  """:func:`make_mesh` over all local devices, for batches of ``batch_size`` from a data set.

  Raises:
    BatchShardingError: ``batch_size`` does not split evenly over the devices.
    ValueError: the ``num_examples`` are fewer than one batch.
  """
  mesh = make_mesh()
  check_divisible(batch_size, mesh)
  if num_examples < batch_size:
    raise ValueError(f"{num_examples} training examples are fewer than one batch of {batch_size}")
  return mesh


def data_sharding(mesh: Mesh) -> NamedSharding:
  """Leading axis split across the mesh."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """A whole copy on every device."""
  return NamedSharding(mesh, PartitionSpec())


def check_divisible(batch_size: int, mesh: Mesh) -> None:
  """Raises BatchShardingError unless ``batch_size`` splits evenly over the mesh."""
  devices = mesh.size
  if batch_size % devices:
    raise BatchShardingError(
      f"batch size {batch_size} is not divisible by the {devices} devices; "
      f"use a multiple of {devices}"
    )


def shard_batch(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf on the mesh split along its leading axis.

  Raises:
    BatchShardingError: a leaf's leading axis does not divide by the devices.
  """
  for leaf in jax.tree.leaves(tree):
    check_divisible(np.shape(leaf)[0], mesh)
  return jax.device_put(tree, data_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a whole copy of every leaf on each device of the mesh."""
  return jax.device_put(tree, replicated_sharding(mesh))


def to_host(tree: Any) -> Any:
  """Every leaf as a host numpy array holding its whole (global) value.

  A leaf split over several processes' devices is gathered from all of them
  (``multihost_utils.process_allgather``), so every process must call this for it, as
  every process runs the same program in JAX's multi-controller model. Other leaves are
  copied from a local device.
  """

  def fetch(leaf):
    if isinstance(leaf, jax.Array) and not (leaf.is_fully_addressable or leaf.is_fully_replicated):
      return multihost_utils.process_allgather(leaf, tiled=True)
    return np.asarray(leaf)

  return jax.tree.map(fetch, tree)


def mean_value_and_grad(fun: Callable[..., Any], has_aux: bool = False) -> Callable[..., Any]:
  """``jax.value_and_grad`` for use inside ``shard_map``, pmap-style.

  Each device differentiates its own shard's loss and the gradients (and the
  loss and aux) are averaged with ``lax.pmean`` over the data axis. The
  parameters are first cast to *varying*: differentiating a replicated input
  directly would make ``shard_map`` sum the per-device gradients implicitly,
  and a further ``pmean`` would then leave them ``num_devices`` times too large.

  Args:
    fun: ``fun(params, *args) -> loss`` (or ``(loss, aux)`` with ``has_aux``).
    has_aux: as in ``jax.value_and_grad``.

  Returns:
    ``f(params, *args) -> (value, grads)``, both averaged over the devices.
  """
  value_and_grad = jax.value_and_grad(fun, has_aux=has_aux)

  def mean_over_devices(params, *args):
    local_params = jax.lax.pcast(params, DATA_AXIS, to="varying")
    return jax.lax.pmean(value_and_grad(local_params, *args), DATA_AXIS)

  return mean_over_devices
