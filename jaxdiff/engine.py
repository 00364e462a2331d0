"""The training engine shared by every jaxdiff experiment: :class:`Trainer` and its state.

Design, in the order data flows:

* The whole training set lives on the devices, replicated (MNIST and CIFAR-10
  are 47 and 150 MB as uint8). Each epoch a key draws one permutation per run
  *on the device*; a step only sends the step number.
* Several runs (seeds, and hyper-parameter values injected with
  ``optax.inject_hyperparams``) are one program: the train state carries a
  leading run axis and the step is ``jax.vmap``-ed over it (a call of one run
  skips the vmap unless the policy's ``vmap_single_run`` says otherwise).
* Data parallelism is pmap's model written as ``jax.jit(jax.shard_map(...))``:
  the state is replicated, each step's indices are split across the devices,
  each device gathers and differentiates its shard, gradients are
  ``lax.pmean``-ed (see ``parallel.mean_value_and_grad``).
* How the programs run (the epoch loop, runs per call, compiler options) is the
  :class:`jaxdiff.policy.ExecutionPolicy` the trainer is given, decided once from
  the mesh and the workload; the engine makes no platform choice of its own. An
  epoch runs either as the jitted step called from Python with the state donated
  (``"step"``), or as one ``lax.scan`` (``"scan"``).
* Compilation is most of a short run's time. Trainers of one task share the
  compiled parameter initialisation and batch-index draw, and
  ``Trainer.compile`` compiles an epoch's programs ahead of it: XLA compiles
  without the GIL, so programs of several trainers compile in parallel threads.
* A run whose loss or parameters turn non-finite keeps its last finite parameters,
  records the step, and stops updating; the other runs in the program carry on.

:func:`jaxdiff.loop.fit` trains a :class:`Trainer` to a budget, with checkpoints and hooks.
Everything here is a function of the state's keys and the step, so training in parts (a
resumed run) reproduces training at once bit for bit on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from jaxdiff import parallel
from jaxdiff.ema import update_average
from jaxdiff.policy import ExecutionPolicy
from jaxdiff.tasks import Batch, Params, Task


class TrainState(NamedTuple):
  """The state of a group of runs; every leaf has a leading run axis.

  Attributes:
    params: model parameters.
    opt_state: ``optax.inject_hyperparams`` state; its ``hyperparams`` hold
      each run's values.
    key: each run's key for data order and loss randomness.
    step: steps taken.
    diverged_at: the first step whose loss, or the parameters it made, were not finite, or -1.
    ema_params: the exponential moving average of ``params`` (the trainer's
      ``ema_decay``), or None without one.
  """

  params: Params
  opt_state: optax.OptState
  key: jax.Array
  step: jax.Array
  diverged_at: jax.Array
  ema_params: Params | None = None


def run_slices(num_runs: int, runs_per_call: int) -> list[slice]:
  """Consecutive slices of the run axis, ``runs_per_call`` runs each (0: one slice)."""
  size = runs_per_call or num_runs
  return [slice(start, min(start + size, num_runs)) for start in range(0, num_runs, size)]


def concatenate_runs(trees: list[Any]) -> Any:
  """Inverse of slicing every leaf's run axis by :func:`run_slices`."""
  if len(trees) == 1:
    return trees[0]
  return jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *trees)


@dataclasses.dataclass(frozen=True)
class Trainer:
  """Compiled init/epoch functions for one task, one optimizer and one batch size.

  Args:
    task: what to train.
    optimizer: an optax factory such as ``optax.adam`` or
      ``jaxdiff.langevin_sgd``; it is wrapped in ``optax.inject_hyperparams``
      and its numeric arguments are given per run to :meth:`init`.
    mesh: the 1-D data mesh (``parallel.make_mesh()``).
    batch_size: the global batch, split evenly across the mesh.
    policy: how the programs run; default ``ExecutionPolicy.for_mesh(mesh)``, for a model
      with ``lax`` convolutions (give a model without any, or with another formulation, its
      own policy).
    ema_decay: keep ``TrainState.ema_params``, an exponential moving average
      of the parameters, ``ema ← decay · ema + (1 − decay) · params`` after
      every step, starting at the initial parameters (None: no average).

  Example:
    >>> import jaxdiff
    >>> from jaxdiff import classification
    >>> from jaxdiff.models import MLP
    >>> task = classification.classifier_task(MLP(hidden=(), num_classes=3), (4, 4, 1))
    >>> trainer = Trainer(task, jaxdiff.langevin_sgd, mesh=parallel.make_mesh(), batch_size=8)
    >>> state = trainer.init(jax.random.split(jax.random.key(0), 3),  # three runs
    ...                      learning_rate=1e-3, diffusion=jnp.array([0.0, 1e-4, 1e-3]),
    ...                      key=jax.random.split(jax.random.key(1), 3))
    >>> x, y = np.zeros((16, 4, 4, 1), np.uint8), np.arange(16, dtype=np.int32) % 3
    >>> data = trainer.put_data({"image": x, "label": y})
    >>> state, metrics = trainer.train_epoch(state, data, epoch=0)
    >>> metrics["loss"].shape, state.step.tolist()  # (steps, runs)
    ((2, 3), [2, 2, 2])
  """

  task: Task
  optimizer: Callable[..., optax.GradientTransformation]
  mesh: jax.sharding.Mesh
  batch_size: int
  policy: ExecutionPolicy | None = None
  ema_decay: float | None = None

  def __post_init__(self):
    if self.batch_size <= 0:
      raise ValueError(f"batch_size must be positive, got {self.batch_size}")
    if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
    parallel.check_divisible(self.batch_size, self.mesh)
    if self.policy is None:
      object.__setattr__(self, "policy", ExecutionPolicy.for_mesh(self.mesh))
    # Frozen, so that a trainer's programs always match its fields.
    object.__setattr__(self, "_programs", _Programs(self))

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
    return self._programs.init(self._programs.init_params(init_keys), run_keys, per_run)

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
      on_steps: called as ``on_steps(count, metrics)`` after each call of the
        compiled program: ``count`` steps done for the runs in ``metrics``.
      max_steps: stop after this many steps (a step budget that ends inside
        an epoch).
      start_step: skip the epoch's first steps (resuming inside an epoch).

    Returns:
      The new state and the per-step metrics as host arrays ``(steps, runs)``,
      ``"loss"`` among them; for an empty range of steps, ``state`` itself and metrics of
      no step, ``(0, runs)``.
    """
    programs = self._programs
    steps = self.steps_per_epoch(data)
    stop = steps if max_steps is None else min(steps, start_step + max_steps)
    if stop <= start_step:  # resumed at the epoch's end, or a budget of no steps
      return state, programs.no_metrics(state, data)
    states, metrics = [], []
    for run_state, run_indices in programs.calls(state, data, epoch):
      if self.policy.loop == "scan":
        run_state, run_metrics = programs.scan(run_state, data, run_indices, start_step, stop)
        if on_steps is not None:
          on_steps(stop - start_step, jax.tree.map(lambda m: m[-1], run_metrics))
      else:
        history = []
        for step in range(start_step, stop):
          run_state, step_metrics = programs.step(run_state, data, run_indices, np.int32(step))
          history.append(step_metrics)
          if on_steps is not None:
            on_steps(1, step_metrics)
        run_metrics = jax.tree.map(lambda *m: jnp.stack(m), *history)
      states.append(run_state)
      metrics.append(jax.tree.map(lambda m: m.T, run_metrics))  # runs first, to concatenate
    state = concatenate_runs(states)
    return state, jax.tree.map(lambda m: np.asarray(m).T, jax.device_get(concatenate_runs(metrics)))

  def lower_epoch(
    self, state: TrainState, data: Mapping[str, jax.Array], epoch: int = 0
  ) -> list[jax.stages.Lowered]:
    """The programs of one epoch of ``state`` on ``data``, lowered: one per shape of call.

    What :meth:`train_epoch` runs, for inspection (``.as_text()``, ``.compile()``,
    ``.cost_analysis()``) without training: the scanned epoch, or the step, for each distinct
    number of runs per call.
    """
    programs = self._programs
    lowered, sizes = [], set()
    for run_state, run_indices in programs.calls(state, data, epoch):
      if len(run_indices) in sizes:
        continue
      sizes.add(len(run_indices))
      if self.policy.loop == "scan":
        lowered.append(programs.epoch.lower(run_state, data, run_indices))
      else:
        lowered.append(programs.step.lower(run_state, data, run_indices, np.int32(0)))
    return lowered

  def compile(self, state: TrainState, data: Mapping[str, jax.Array]) -> None:
    """Compiles the programs of a whole epoch of ``state`` on ``data``, without training.

    :meth:`train_epoch` then finds them in JAX's cache. XLA compiles without
    holding the GIL, so trainers for different optimizers can compile in
    parallel threads, which the first epochs of a comparison otherwise spend
    one after another.
    """
    for lowered in self.lower_epoch(state, data):
      lowered.compile()


class _Programs:
  """A :class:`Trainer`'s jitted programs and the traced functions behind them."""

  def __init__(self, trainer: Trainer):
    self.trainer = trainer
    policy = trainer.policy
    mesh = trainer.mesh
    self.inject = optax.inject_hyperparams(trainer.optimizer)
    replicated = parallel.replicated_sharding(mesh)
    self.init = jax.jit(jax.vmap(self.init_run), out_shardings=replicated)
    self.init_params = _params_initializer(trainer.task.init, replicated)
    self.indices_sharding = jax.sharding.NamedSharding(mesh, P(None, None, parallel.DATA_AXIS))
    self.indices = _epoch_index_sampler(trainer.batch_size, self.indices_sharding)
    specs = (P(), P(), P(None, None, parallel.DATA_AXIS))
    options = dict(policy.compiler_options)
    self.step = jax.jit(
      jax.shard_map(self.local_step, mesh=mesh, in_specs=specs + (P(),), out_specs=P()),
      donate_argnums=0,
      compiler_options=options,
    )
    self.epoch = jax.jit(
      jax.shard_map(self.local_epoch, mesh=mesh, in_specs=specs, out_specs=P()),
      donate_argnums=0,
      compiler_options=options,
    )

  def calls(self, state: TrainState, data, epoch: int) -> Iterator[tuple[TrainState, jax.Array]]:
    """``(state, indices)`` of the runs of each compiled call: ``runs_per_call`` at a time."""
    steps = self.trainer.steps_per_epoch(data)
    indices = self.indices(state.key, jnp.int32(epoch), steps, _num_examples(data))
    for runs in run_slices(len(state.step), self.trainer.policy.runs_per_call):
      yield jax.tree.map(lambda leaf, runs=runs: leaf[runs], state), indices[runs]

  def no_metrics(self, state: TrainState, data) -> dict[str, np.ndarray]:
    """Each metric of the step, as the empty ``(0, runs)`` host array of no step taken."""
    shape = (len(state.step), 1, self.trainer.batch_size)
    indices = jax.ShapeDtypeStruct(shape, jnp.int32, sharding=self.indices_sharding)
    _, metrics = jax.eval_shape(self.step, state, data, indices, np.int32(0))
    return {name: np.zeros((0, *value.shape), value.dtype) for name, value in metrics.items()}

  def scan(self, state, data, indices, start: int, stop: int):
    if (start, stop) != (0, indices.shape[1]):
      indices = indices[:, start:stop]  # a partial epoch compiles its own scan
    return self.epoch(state, data, indices)

  # ------------------------------------------------------- traced functions

  def init_run(self, params: Params, run_key: jax.Array, hyperparams: dict[str, Any]):
    opt_state = self.inject(**hyperparams).init(params)
    ema = None if self.trainer.ema_decay is None else jax.tree.map(jnp.asarray, params)
    return TrainState(params, opt_state, run_key, jnp.int32(0), jnp.int32(-1), ema)

  def run_step(self, state: TrainState, data: Batch, indices: jax.Array):
    batch = {name: array[indices] for name, array in data.items()}
    key = jax.random.fold_in(
      jax.random.fold_in(state.key, state.step), jax.lax.axis_index(parallel.DATA_AXIS)
    )
    loss_and_grad = parallel.mean_value_and_grad(self.trainer.task.loss, has_aux=True)
    (loss, metrics), grads = loss_and_grad(state.params, batch, key)
    optimizer = self.inject(**state.opt_state.hyperparams)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = update_average(ema, params, self.trainer.ema_decay)
    # A step diverges if its loss, or the parameters it makes, are not finite: an update can
    # overflow the parameters from a finite loss.
    finite = jnp.isfinite(loss) & _all_finite(params)
    healthy = finite & (state.diverged_at < 0)
    keep_if_healthy = lambda new, old: jnp.where(healthy, new, old)  # noqa: E731
    diverged_at = jnp.where((state.diverged_at < 0) & ~finite, state.step, state.diverged_at)
    new_state = TrainState(
      params=jax.tree.map(keep_if_healthy, params, state.params),
      opt_state=jax.tree.map(keep_if_healthy, opt_state, state.opt_state),
      key=state.key,
      step=state.step + 1,
      diverged_at=diverged_at,
      ema_params=jax.tree.map(keep_if_healthy, ema, state.ema_params),
    )
    return new_state, {"loss": loss, **metrics}

  def local_step(self, state, data, indices, step):
    step_indices = jax.lax.dynamic_index_in_dim(indices, step, axis=1, keepdims=False)
    if len(state.step) == 1 and not self.trainer.policy.vmap_single_run:
      first = lambda tree: jax.tree.map(lambda leaf: leaf[0], tree)  # noqa: E731
      new_state, metrics = self.run_step(first(state), data, step_indices[0])
      return jax.tree.map(lambda leaf: leaf[None], (new_state, metrics))
    return jax.vmap(self.run_step, in_axes=(0, None, 0))(state, data, step_indices)

  def local_epoch(self, state, data, indices):
    def body(state, step):
      return self.local_step(state, data, indices, step)

    steps = jnp.arange(indices.shape[1])
    return jax.lax.scan(body, state, steps, unroll=self.trainer.policy.scan_unroll)


@functools.lru_cache(maxsize=32)  # bounded: each entry holds compiled programs
def _params_initializer(init: Callable[[jax.Array], Params], sharding: jax.sharding.Sharding):
  """``jit(vmap(init))``, one per task: trainers of different optimizers share its compilation.

  Initialising parameters is most of an init program's compilation, and a comparison builds
  one trainer per optimizer for the same task.
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


def _all_finite(tree: Any) -> jax.Array:
  """Whether every element of every leaf of ``tree`` is finite, a boolean scalar."""
  return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]))


def _num_examples(data: Mapping[str, jax.Array]) -> int:
  return len(next(iter(data.values())))


def _has_run_axis(value: Any, num_runs: int) -> bool:
  return np.ndim(value) >= 1 and np.shape(value)[0] == num_runs


def _broadcast(value: Any, num_runs: int) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(value), (num_runs,) + np.shape(value))
