"""Posterior collection: snapshots of SG-MCMC chains and the Bayesian model average.

An SG-MCMC chain's parameters after burn-in are samples of the posterior; its prediction is the
average of their predictive probabilities, ``p(y | x) ≈ (1/S) Σ_s p(y | x, θ_s)``, the Bayesian
model average. :class:`PredictiveAverage` keeps the running sum on the device (one slot per
run of a vmapped group), so no parameter set need be stored; a :class:`SnapshotEpochs` says
which epochs end with a snapshot (a :class:`SnapshotSteps`, which steps), and
:func:`averaging_hook` does both on
:func:`jaxdiff.loop.fit`, the average in the hooks' carry, checkpointed with the run (so a
resumed run averages the same snapshots as an uninterrupted one). Optionally,
:class:`ParameterSnapshots` also keeps the last K snapshots' parameters as orbax checkpoints,
for later use (new data, other metrics).

Example:
  >>> import jaxdiff
  >>> from jaxdiff import classification, parallel
  >>> from jaxdiff.engine import Trainer
  >>> from jaxdiff.loop import Budget, Reporter, fit
  >>> from jaxdiff.models import MLP
  >>> model, mesh = MLP(hidden=(), num_classes=3), parallel.make_mesh()
  >>> trainer = Trainer(classification.classifier_task(model, (4, 4, 1)), jaxdiff.langevin_sgd,
  ...                   mesh=mesh, batch_size=8)
  >>> state = trainer.init(jax.random.split(jax.random.key(0), 2), learning_rate=0.1,
  ...                      diffusion=1e-3, key=jax.random.split(jax.random.key(1), 2))
  >>> x, y = np.zeros((16, 4, 4, 1), np.uint8), np.arange(16, dtype=np.int32) % 3
  >>> x_test = np.zeros((8, 4, 4, 1), np.uint8)
  >>> predict = classification.make_predictor(model, mesh, chunk_size=8)
  >>> average = init_average(num_runs=2, num_examples=len(x_test), num_classes=3)
  >>> hook = averaging_hook(predict, x_test, SnapshotEpochs(burn_in=1))
  >>> result = fit(trainer, state, trainer.put_data({"image": x, "label": y}), Budget(epochs=3),
  ...              on_epoch_end=hook, carry=HookCarry(arrays={"posterior": average}),
  ...              reporter=Reporter(quiet=True))
  >>> int(result.carry.arrays["posterior"].count)  # after epochs 1 and 2 (0-based)
  2
  >>> averaged_probs(result.carry.arrays["posterior"]).shape  # (runs, len(x_test), classes)
  (2, 8, 3)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxdiff.checkpoint import async_manager, restore_target
from jaxdiff.loop import EpochEnd, Hook, HookCarry


class SnapshotEpochs(NamedTuple):
  """Which completed epochs (0-based) end with a snapshot.

  Without ``cycle_length``: every ``thin``-th epoch from epoch ``burn_in`` on. With it
  (cyclical SG-MCMC, cycles of ``cycle_length`` epochs): the last ``per_cycle`` epochs of each
  cycle, the end of its sampling phase.

  Attributes:
    burn_in: epochs before the first snapshot.
    thin: epochs between snapshots.
    cycle_length: epochs per cycle, or None.
    per_cycle: snapshots at the end of each cycle.
  """

  burn_in: int = 0
  thin: int = 1
  cycle_length: int | None = None
  per_cycle: int = 1

  def after(self, end: EpochEnd) -> bool:
    """Whether the call of the engine that ``end`` reports ends with a snapshot: it completes
    an epoch that :meth:`takes`."""
    return end.complete and self.takes(end.epoch)

  def takes(self, epoch: int) -> bool:
    """Whether the end of ``epoch`` (0-based) is a snapshot."""
    if epoch < self.burn_in:
      return False
    if self.cycle_length is not None:
      return self.cycle_length - 1 - epoch % self.cycle_length < self.per_cycle
    return (epoch - self.burn_in) % self.thin == 0


class SnapshotSteps(NamedTuple):
  """A snapshot every ``thin`` steps from step ``burn_in`` on, as SG-MCMC papers thin a chain.

  Steps are counted from the run's first: the snapshot "after step s" is of the parameters
  once s steps are done. :func:`jaxdiff.loop.fit` calls the hooks only between calls of the
  engine, so train with ``Budget(..., steps_per_call=thin)`` and a ``burn_in`` that is a
  multiple of ``thin``: then every snapshot step ends a call.

  Attributes:
    burn_in: steps before the first snapshot (the first is after step ``burn_in``).
    thin: steps between snapshots.
  """

  burn_in: int = 0
  thin: int = 1

  def after(self, end: EpochEnd) -> bool:
    """Whether the call that ``end`` reports ends at a snapshot step."""
    return self.takes_step(int(end.state.step[0]))

  def takes_step(self, step: int) -> bool:
    """Whether the parameters after ``step`` steps are a snapshot."""
    return step > 0 and step >= self.burn_in and (step - self.burn_in) % self.thin == 0


class PredictiveAverage(NamedTuple):
  """The running sum of snapshots' predictive probabilities.

  Attributes:
    probs_sum: float32 ``(runs, examples, classes)``.
    count: the snapshots summed, an int32 scalar.
  """

  probs_sum: jax.Array
  count: jax.Array


def init_average(num_runs: int, num_examples: int, num_classes: int) -> PredictiveAverage:
  """An empty average for ``num_runs`` runs' predictions of ``num_examples`` examples."""
  return PredictiveAverage(
    jnp.zeros((num_runs, num_examples, num_classes), jnp.float32), jnp.zeros((), jnp.int32)
  )


def add_snapshot(average: PredictiveAverage, probs: jax.Array) -> PredictiveAverage:
  """``average`` with one more snapshot's probabilities ``(runs, examples, classes)``."""
  if probs.shape != average.probs_sum.shape:
    raise ValueError(f"probabilities of shape {probs.shape}, expected {average.probs_sum.shape}")
  return PredictiveAverage(average.probs_sum + probs, average.count + 1)


def averaged_probs(average: PredictiveAverage) -> np.ndarray:
  """The Bayesian model average ``(runs, examples, classes)``, on the host.

  Raises:
    ValueError: no snapshot was taken.
  """
  count = int(average.count)
  if count == 0:
    raise ValueError("no snapshot was taken: check the snapshots' burn-in against the epochs")
  return np.asarray(average.probs_sum) / count


class ParameterSnapshots:
  """The parameters of the last ``keep`` snapshots, as orbax checkpoints numbered by the step.

  Saves are asynchronous and atomic, as :class:`jaxdiff.checkpoint.Checkpoints`' are; a step
  already saved is not written again, so a resumed run, which retrains the epochs after its
  last checkpoint to the same parameters, keeps the same snapshots. Every leaf keeps its
  leading run axis.

  Args:
    directory: where the snapshots go.
    keep: how many of the latest snapshots to keep (older ones are deleted).

  Example:
    >>> snapshots = ParameterSnapshots("out/snapshots", keep=2)
    >>> for step in (10, 20, 30):  # as averaging_hook(..., snapshots=snapshots) saves them
    ...   snapshots.save(step, {"w": jnp.full((3, 2), step / 10)})  # leaves (runs, ...)
    >>> snapshots.close()
    >>> snapshots.steps()
    [20, 30]
    >>> snapshots.restore(30, like={"w": jnp.zeros((3, 2))})["w"][0]
    Array([3., 3.], dtype=float32)
  """

  def __init__(self, directory: str | Path, keep: int):
    if keep < 1:
      raise ValueError(f"keep must be at least 1 snapshot, got {keep}")
    self._manager = async_manager(directory, keep)

  def save(self, step: int, params: Any) -> None:
    """Keeps ``params`` as the snapshot of ``step`` (returns before the files are written)."""
    if step not in self._manager.all_steps():
      self._manager.save(step, args=ocp.args.StandardSave(params))

  def steps(self) -> list[int]:
    """The steps of the kept snapshots, oldest first."""
    return sorted(self._manager.all_steps())

  def restore(self, step: int, like: Any) -> Any:
    """The snapshot of ``step``, in the shapes, dtypes and shardings of ``like``."""
    return self._manager.restore(step, args=ocp.args.StandardRestore(restore_target(like)))

  def close(self) -> None:
    """Waits for the last save to be written, then releases orbax's threads; :meth:`steps` and
    :meth:`restore` still work."""
    self._manager.close()


def averaging_hook(
  predict: Callable[[Any, Any], Any],
  images: Any,
  when: SnapshotEpochs | SnapshotSteps,
  name: str = "posterior",
  snapshots: ParameterSnapshots | None = None,
) -> Hook:
  """A :func:`jaxdiff.loop.fit` hook that adds a snapshot at the epochs or steps of ``when``.

  Args:
    predict: ``predict(params, images) -> probabilities (runs, n, classes)``, e.g. from
      :func:`jaxdiff.classification.make_predictor`.
    images: the evaluation inputs.
    when: the snapshots' epochs (:class:`SnapshotEpochs`; only complete epochs count) or
      steps (:class:`SnapshotSteps`).
    name: the name of the :class:`PredictiveAverage` in the carry's arrays.
    snapshots: also keep the snapshots' parameters there (None: only the average).

  Returns:
    The hook, which returns the carry with ``arrays[name]`` updated; compose it with an
    experiment's own hook by :func:`jaxdiff.loop.chain_hooks`.
  """

  def hook(end: EpochEnd) -> HookCarry:
    if not when.after(end):
      return end.carry
    average = add_snapshot(end.carry.arrays[name], jnp.asarray(predict(end.state.params, images)))
    if snapshots is not None:
      snapshots.save(int(end.state.step[0]), end.state.params)
    return end.carry.with_array(name, average)

  return hook
