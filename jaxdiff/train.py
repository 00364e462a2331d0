"""The training engine shared by every jaxdiff experiment.

Design, in the order data flows:

* The whole training set lives on the devices, replicated (MNIST and CIFAR-10
  are 47 and 150 MB as uint8). Each epoch a key draws one permutation per run
  *on the device*; a step only sends the step number.
* Several runs (seeds, and hyper-parameter values injected with
  ``optax.inject_hyperparams``) are one program: the train state carries a
  leading run axis and the step is ``jax.vmap``-ed over it (a call with one run
  skips the vmap: XLA:CPU compiled the U-Net's batched-weight convolutions worse).
* Data parallelism is pmap's model written as ``jax.jit(jax.shard_map(...))``:
  the state is replicated, each step's indices are split across the devices,
  each device gathers and differentiates its shard, gradients are
  ``lax.pmean``-ed (see ``parallel.mean_value_and_grad``).
* An epoch runs either as the jitted step called from Python with the state
  donated (``loop="step"``), or as one ``lax.scan`` (``loop="scan"``). A scan
  removes per-step dispatch, but XLA:CPU runs convolutions 3-4x slower inside a
  scan body (jax 0.10.2: the SimpleCNN with ``lax.conv``, 31 against 100-107 ms
  per step; the tiny DDPM U-Net, 267 against 79 images/s). So ``loop="auto"``
  picks ``step`` on CPU when the step computes a convolution and ``scan``
  otherwise: the SimpleCNN's CPU formulation has none and trains faster as a
  scan (20 649 against 16 688 images/s; ``benchmarks/RESULTS.md``).
* Runs go through the compiled program ``runs_per_call`` at a time. On
  XLA:CPU vmapped runs were always slower than the same runs one after another:
  a convolution vmapped over per-run weights becomes a grouped convolution
  (SimpleCNN with ``lax.conv``, 18 ms per step for one run, 286 ms for three),
  and without convolutions the runs' intermediates outgrow the caches (eight
  runs, 14 903 against 20 649 images/s). So ``runs_per_call=None`` means one
  on CPU and all elsewhere.
* On CPU the step and epoch are compiled with ``cpu_ops.compiler_options()``,
  which leave convolutions to XLA's own kernels rather than YNNPACK's (the small
  U-Net's loss gradient, 327 against 433 ms).
* Compilation is most of a short run's time. Trainers of one task share the
  compiled parameter initialisation and batch-index draw, and
  ``Trainer.compile`` compiles an epoch's programs ahead of it: XLA compiles
  without the GIL, so the comparison compiles its optimizers' programs in
  parallel threads (six optimizers, 2 epochs of 2 000 CIFAR images on 2 CPU
  cores: 37-38 s of wall time instead of 47-51 s; ``benchmarks/RESULTS.md``).
* A run whose loss turns non-finite keeps its last finite parameters, records
  the step, and stops updating; the other runs in the program carry on.
* Checkpoints (orbax ``CheckpointManager``) hold the state, any extra arrays
  and the metrics history; restoring one and training on reproduces an
  uninterrupted run bit for bit on CPU, as everything is a function of the
  state's keys and the epoch number.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from jaxdiff import parallel
from jaxdiff.models import cpu_ops

Params = Any
Batch = Mapping[str, jax.Array]
LOOPS = ("auto", "step", "scan")


class Task(NamedTuple):
  """What the engine trains: parameters and a loss.

  Attributes:
    init: ``init(key) -> params``.
    loss: ``loss(params, batch, key) -> (scalar loss, {name: scalar})``, the
      mean over the batch shard it is given; ``batch`` holds the rows of each
      data array picked for this step, ``key`` is distinct per step and device.
  """

  init: Callable[[jax.Array], Params]
  loss: Callable[[Params, Batch, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


class TrainState(NamedTuple):
  """The state of a group of runs; every leaf has a leading run axis.

  Attributes:
    params: model parameters.
    opt_state: ``optax.inject_hyperparams`` state; its ``hyperparams`` hold
      each run's values.
    key: each run's key for data order and loss randomness.
    step: steps taken.
    diverged_at: the step whose loss was first non-finite, or -1.
  """

  params: Params
  opt_state: optax.OptState
  key: jax.Array
  step: jax.Array
  diverged_at: jax.Array


def default_loop(platform: str, convolves: bool) -> str:
  """The faster epoch loop as measured (module docstring): a scan, unless XLA:CPU convolves."""
  return "step" if platform == "cpu" and convolves else "scan"


def computes_convolution(jaxpr: jax.extend.core.Jaxpr) -> bool:
  """Whether ``jaxpr`` or any jaxpr nested in it has a ``conv_general_dilated``."""
  return any(eqn.primitive.name == "conv_general_dilated" for eqn in jaxpr.eqns) or any(
    computes_convolution(inner) for inner in jax.extend.core.subjaxprs(jaxpr)
  )


def default_runs_per_call(platform: str) -> int | None:
  """How many runs to vmap into one call on ``platform`` (None: all), as measured."""
  return 1 if platform == "cpu" else None


def run_slices(num_runs: int, runs_per_call: int | None) -> list[slice]:
  """Consecutive slices of the run axis, ``runs_per_call`` runs each (None: one slice)."""
  size = runs_per_call or num_runs
  return [slice(start, min(start + size, num_runs)) for start in range(0, num_runs, size)]


def concatenate_runs(trees: list[Any]) -> Any:
  """Inverse of slicing every leaf's run axis by :func:`run_slices`."""
  if len(trees) == 1:
    return trees[0]
  return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *trees)


@dataclasses.dataclass
class Trainer:
  """Compiled init/epoch functions for one task, one optimizer and one batch size.

  Args:
    task: what to train.
    optimizer: an optax factory such as ``optax.adam`` or
      ``jaxdiff.langevin_sgd``; it is wrapped in ``optax.inject_hyperparams``
      and its numeric arguments are given per run to :meth:`init`.
    mesh: the 1-D data mesh (``parallel.make_mesh()``).
    batch_size: the global batch, split evenly across the mesh.
    loop: ``"step"``, ``"scan"`` or ``"auto"``: by platform and, on CPU, by whether
      the step computes a convolution (:func:`default_loop`), decided at the first
      :meth:`train_epoch`, after which ``loop`` holds the choice.
    runs_per_call: runs vmapped into one call; ``None`` picks by platform and
      ``0`` means all runs at once.
    scan_unroll: steps per iteration of the epoch's ``lax.scan`` (``loop="scan"``):
      more trade compile time for less loop overhead per step.

  Example:
    >>> trainer = Trainer(task, jaxdiff.langevin_sgd, mesh=mesh, batch_size=100)
    >>> state = trainer.init(jax.random.split(jax.random.key(0), 3),
    ...                      learning_rate=jnp.full(3, 1e-3), diffusion=jnp.full(3, 1e-4),
    ...                      key=jax.random.split(jax.random.key(1), 3))
    >>> data = trainer.put_data({"image": x, "label": y})
    >>> state, metrics = trainer.train_epoch(state, data, epoch=0)
  """

  task: Task
  optimizer: Callable[..., optax.GradientTransformation]
  mesh: jax.sharding.Mesh
  batch_size: int
  loop: str = "auto"
  runs_per_call: int | None = None
  scan_unroll: int = 1

  def __post_init__(self):
    if self.loop not in LOOPS:
      raise ValueError(f"loop must be one of {LOOPS}, got {self.loop!r}")
    if self.runs_per_call is not None and self.runs_per_call < 0:
      raise ValueError(f"runs_per_call must be >= 0, got {self.runs_per_call}")
    if self.batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {self.batch_size}")
    if self.scan_unroll <= 0:
      raise ValueError(f"scan_unroll must be positive, got {self.scan_unroll}")
    parallel.check_divisible(self.batch_size, self.mesh)
    platform = self.mesh.devices.flat[0].platform
    if self.runs_per_call is None:
      self.runs_per_call = default_runs_per_call(platform)
    self._inject = optax.inject_hyperparams(self.optimizer)
    replicated = parallel.replicated_sharding(self.mesh)
    self._init = jax.jit(jax.vmap(self._init_run), out_shardings=replicated)
    self._init_params = _params_initializer(self.task.init, replicated)
    self._indices = _epoch_index_sampler(
      self.batch_size, jax.sharding.NamedSharding(self.mesh, P(None, None, parallel.DATA_AXIS))
    )
    specs = (P(), P(), P(None, None, parallel.DATA_AXIS))
    options = cpu_ops.compiler_options(platform)
    self._step = jax.jit(
      jax.shard_map(self._local_step, mesh=self.mesh, in_specs=specs + (P(),), out_specs=P()),
      donate_argnums=0,
      compiler_options=options,
    )
    self._epoch = jax.jit(
      jax.shard_map(self._local_epoch, mesh=self.mesh, in_specs=specs, out_specs=P()),
      donate_argnums=0,
      compiler_options=options,
    )

  # ------------------------------------------------------------ public API

  def init(self, keys: jax.Array, **hyperparams: Any) -> TrainState:
    """Initial state of ``len(keys)`` runs.

    Args:
      keys: one key per run; it seeds the parameters, data order and loss.
      **hyperparams: the optimizer's arguments, each an array with one value
        per run (a key array for ``key``), or a scalar shared by all runs.

    Returns:
      The replicated :class:`TrainState`.
    """
    num_runs = len(keys)
    per_run = {
      name: value if _has_run_axis(value, num_runs) else _broadcast(value, num_runs)
      for name, value in hyperparams.items()
    }
    init_keys, run_keys = jnp.unstack(jax.vmap(jax.random.split)(keys), axis=1)
    return self._init(self._init_params(init_keys), run_keys, per_run)

  def put_data(self, arrays: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Copies whole data arrays (same leading length) to every device."""
    lengths = {len(array) for array in arrays.values()}
    if len(lengths) != 1:
      raise ValueError(f"data arrays differ in length: {sorted(lengths)}")
    if lengths.pop() < self.batch_size:
      raise ValueError(f"fewer examples than one batch of {self.batch_size}")
    return parallel.replicate(dict(arrays), self.mesh)

  def steps_per_epoch(self, data: Mapping[str, jax.Array]) -> int:
    """Full batches per epoch; the remainder of each permutation is left out."""
    return _num_examples(data) // self.batch_size

  def train_epoch(
    self,
    state: TrainState,
    data: Mapping[str, jax.Array],
    epoch: int,
    on_steps: Callable[[int, dict[str, jax.Array]], None] | None = None,
    max_steps: int | None = None,
    start_step: int = 0,
  ) -> tuple[TrainState, dict[str, np.ndarray]]:
    """Trains every run for one epoch, or part of it.

    Args:
      state: the runs' state; it is donated (do not reuse it).
      data: arrays from :meth:`put_data`.
      epoch: the epoch number; with the state's keys it fixes the data order.
      max_steps: stop after this many steps (a step budget that ends inside
        an epoch).
      start_step: skip the epoch's first steps (resuming inside an epoch).
      on_steps: called as ``on_steps(count, metrics)`` after each call of the
        compiled program: ``count`` steps done for the runs in ``metrics``.

    Returns:
      The new state and the per-step metrics as host arrays ``(steps, runs)``,
      ``"loss"`` among them.
    """
    self._choose_loop(state, data)
    steps = self.steps_per_epoch(data)
    indices = self._indices(state.key, jnp.int32(epoch), steps, _num_examples(data))
    stop = steps if max_steps is None else min(steps, start_step + max_steps)
    states, metrics = [], []
    for run_state, run_indices in self._calls(state, indices):
      run_state, run_metrics = self._train_runs(
        run_state, data, run_indices, start_step, stop, on_steps
      )
      states.append(run_state)
      metrics.append(jax.tree.map(lambda m: m.T, run_metrics))  # runs first, to concatenate
    state = concatenate_runs(states)
    return state, jax.tree.map(lambda m: np.asarray(m).T, jax.device_get(concatenate_runs(metrics)))

  def compile(self, state: TrainState, data: Mapping[str, jax.Array]) -> None:
    """Compiles the programs of a whole epoch of ``state`` on ``data``, without training.

    :meth:`train_epoch` then finds them in JAX's cache. XLA compiles without
    holding the GIL, so trainers for different optimizers can compile in
    parallel threads, which the first epochs of a comparison otherwise spend
    one after another.
    """
    self._choose_loop(state, data)
    steps = self.steps_per_epoch(data)
    indices = self._indices(state.key, jnp.int32(0), steps, _num_examples(data))
    sizes_done = set()
    for run_state, run_indices in self._calls(state, indices):
      if len(run_indices) in sizes_done:
        continue
      sizes_done.add(len(run_indices))
      if self.loop == "scan":
        self._epoch.lower(run_state, data, run_indices).compile()
      else:
        self._step.lower(run_state, data, run_indices, np.int32(0)).compile()

  def _calls(self, state: TrainState, indices: jax.Array):
    """``(state, indices)`` of the runs of each compiled call: ``runs_per_call`` at a time."""
    for runs in run_slices(len(state.step), self.runs_per_call):
      yield jax.tree.map(lambda leaf, runs=runs: leaf[runs], state), indices[runs]

  def _train_runs(self, state, data, indices, start, stop, on_steps):
    if self.loop == "scan":
      if (start, stop) != (0, indices.shape[1]):
        indices = indices[:, start:stop]  # a partial epoch compiles its own scan
      state, metrics = self._epoch(state, data, indices)
      if on_steps is not None:
        on_steps(stop - start, jax.tree.map(lambda m: m[-1], metrics))
      return state, metrics
    history = []
    for step in range(start, stop):
      state, metrics = self._step(state, data, indices, np.int32(step))
      history.append(metrics)
      if on_steps is not None:
        on_steps(1, metrics)
    return state, jax.tree.map(lambda *m: jnp.stack(m), *history)

  def _choose_loop(self, state: TrainState, data: Mapping[str, jax.Array]) -> None:
    if self.loop == "auto":
      platform = self.mesh.devices.flat[0].platform
      self.loop = default_loop(platform, self._step_convolves(state, data))

  def _step_convolves(self, state: TrainState, data: Mapping[str, jax.Array]) -> bool:
    one_run = lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype)
    batch = {
      name: jax.ShapeDtypeStruct((self.batch_size, *array.shape[1:]), array.dtype)
      for name, array in data.items()
    }
    loss_and_grad = jax.value_and_grad(self.task.loss, has_aux=True)
    traced = jax.make_jaxpr(loss_and_grad)(
      jax.tree.map(one_run, state.params), batch, one_run(state.key)
    )
    return computes_convolution(traced.jaxpr)

  # ------------------------------------------------------- traced helpers

  def _init_run(
    self, params: Params, run_key: jax.Array, hyperparams: dict[str, Any]
  ) -> TrainState:
    opt_state = self._inject(**hyperparams).init(params)
    return TrainState(params, opt_state, run_key, jnp.int32(0), jnp.int32(-1))

  def _run_step(self, state: TrainState, data: Batch, indices: jax.Array):
    batch = {name: array[indices] for name, array in data.items()}
    key = jax.random.fold_in(
      jax.random.fold_in(state.key, state.step), jax.lax.axis_index(parallel.DATA_AXIS)
    )
    loss_and_grad = parallel.mean_value_and_grad(self.task.loss, has_aux=True)
    (loss, metrics), grads = loss_and_grad(state.params, batch, key)
    optimizer = self._inject(**state.opt_state.hyperparams)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    healthy = jnp.isfinite(loss) & (state.diverged_at < 0)
    keep_if_healthy = lambda new, old: jnp.where(healthy, new, old)  # noqa: E731
    diverged_at = jnp.where(
      (state.diverged_at < 0) & ~jnp.isfinite(loss), state.step, state.diverged_at
    )
    new_state = TrainState(
      params=jax.tree.map(keep_if_healthy, params, state.params),
      opt_state=jax.tree.map(keep_if_healthy, opt_state, state.opt_state),
      key=state.key,
      step=state.step + 1,
      diverged_at=diverged_at,
    )
    return new_state, {"loss": loss, **metrics}

  def _local_step(self, state, data, indices, step):
    step_indices = jax.lax.dynamic_index_in_dim(indices, step, axis=1, keepdims=False)
    if len(state.step) == 1:
      # vmap over a single run is not free: it batches every weight, and XLA:CPU then lays
      # out the U-Net's convolutions and their gradients worse (small U-Net loss gradient
      # 327 -> 378 ms; benchmarks/RESULTS.md).
      first = lambda tree: jax.tree.map(lambda leaf: leaf[0], tree)  # noqa: E731
      new_state, metrics = self._run_step(first(state), data, step_indices[0])
      return jax.tree.map(lambda leaf: leaf[None], (new_state, metrics))
    return jax.vmap(self._run_step, in_axes=(0, None, 0))(state, data, step_indices)

  def _local_epoch(self, state, data, indices):
    def body(state, step):
      return self._local_step(state, data, indices, step)

    return jax.lax.scan(body, state, jnp.arange(indices.shape[1]), unroll=self.scan_unroll)


@functools.lru_cache(maxsize=32)  # bounded: each entry holds compiled programs
def _params_initializer(init: Callable[[jax.Array], Params], sharding: jax.sharding.Sharding):
  """``jit(vmap(init))``, one per task: trainers of different optimizers share its compilation.

  Initialising parameters is most of an init program's compilation (the SimpleCNN on CPU, about
  2 s), and a comparison builds one trainer per optimizer for the same task.
  """
  return jax.jit(jax.vmap(init), out_shardings=sharding)


@functools.lru_cache(maxsize=32)  # bounded: each entry holds compiled programs
def _epoch_index_sampler(batch_size: int, sharding: jax.sharding.Sharding):
  """The jitted ``(keys, epoch, steps, num_examples) -> (runs, steps, batch)`` batch indices.

  Each run draws its own permutation of the examples from its key and the epoch number. One
  per batch size and sharding, so that trainers of different optimizers share its compilation.
  """

  def epoch_indices(keys: jax.Array, epoch: jax.Array, steps: int, num_examples: int):
    def run_order(key):
      order = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
      return order[: steps * batch_size].reshape(steps, batch_size)

    return jax.vmap(run_order)(keys).astype(jnp.int32)

  return jax.jit(epoch_indices, static_argnums=(2, 3), out_shardings=sharding)


def _num_examples(data: Mapping[str, jax.Array]) -> int:
  return len(next(iter(data.values())))


def _has_run_axis(value: Any, num_runs: int) -> bool:
  return np.ndim(value) >= 1 and np.shape(value)[0] == num_runs


def _broadcast(value: Any, num_runs: int) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(value), (num_runs,) + np.shape(value))


class CheckpointsExistError(FileExistsError):
  """A fresh run would write its checkpoints over an earlier run's."""


def check_no_checkpoints(directory: str | Path) -> None:
  """Raises :class:`CheckpointsExistError` if ``directory`` holds anything.

  Call before a fresh (not resumed) run: its checkpoints would otherwise collide with an
  earlier run's in the middle of training.
  """
  directory = Path(directory)
  if directory.is_dir() and any(directory.iterdir()):
    raise CheckpointsExistError(
      f"{directory} holds an earlier run's checkpoints: resume that run (--resume), or write "
      "to another output folder"
    )


class Checkpoints:
  """Per-epoch orbax checkpoints of a :class:`TrainState`, extra arrays and history.

  Each save is atomic (orbax writes a temporary directory and renames it), so
  a run killed at any moment leaves the previous complete checkpoint. Saves are
  asynchronous: :meth:`save` returns once the arrays are copied to the host, and
  orbax writes them in a background thread while training goes on; the next save
  and :meth:`close` wait for it.

  Args:
    directory: where the numbered checkpoints go.
    max_to_keep: how many recent checkpoints to keep.
  """

  def __init__(self, directory: str | Path, max_to_keep: int = 2):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

    self._ocp = ocp
    self._manager = ocp.CheckpointManager(
      Path(directory).resolve(),
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=True, create=True
      ),
    )

  def latest_epoch(self) -> int | None:
    """The number of epochs in the latest checkpoint, or None."""
    return self._manager.latest_step()

  def save(self, epoch: int, state: TrainState, extras: Any, history: dict) -> None:
    """Saves the state after ``epoch`` epochs, with ``extras`` arrays and JSON ``history``.

    Returns before the files are written (the class docstring); ``state`` may then be
    donated, and ``history`` changed (it is copied), but ``extras`` must not be changed in
    place.
    """
    ocp = self._ocp
    self._manager.save(
      epoch,
      args=ocp.args.Composite(
        arrays=ocp.args.StandardSave({"state": state, "extras": extras}),
        history=ocp.args.JsonSave(copy.deepcopy(history)),
      ),
      force=True,
    )

  def restore(self, epoch: int, state: TrainState, extras: Any) -> tuple[TrainState, Any, dict]:
    """Restores ``epoch`` into the shapes, dtypes and shardings of ``state`` and ``extras``."""
    ocp = self._ocp
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"state": state, "extras": extras})
    restored = self._manager.restore(
      epoch,
      args=ocp.args.Composite(
        arrays=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()
      ),
    )
    return restored.arrays["state"], restored.arrays["extras"], restored.history

  def close(self) -> None:
    """Waits for the last save to be written, then releases orbax's threads."""
    self._manager.close()
