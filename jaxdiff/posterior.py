"""Posterior collection: snapshots of SG-MCMC chains and the Bayesian model average.

An SG-MCMC chain's parameters after burn-in are samples of the posterior; its prediction is the
average of their predictive probabilities, ``p(y | x) ≈ (1/S) Σ_s p(y | x, θ_s)``, the Bayesian
model average. :class:`PredictiveAverage` keeps the running sum on the device (one slot per
run of a vmapped group), so no parameter set need be stored; a :class:`SnapshotSchedule` says
which epochs end with a snapshot, and :func:`averaging_hook` does both on
:func:`jaxdiff.train.fit`, checkpointed with the run (so a resumed run averages the same
snapshots as an uninterrupted one).

Example:
  >>> average = init_average(num_runs=3, num_examples=len(x_test), num_classes=10)
  >>> extras = {"posterior": average}
  >>> hook = averaging_hook(predict, x_test, SnapshotSchedule(burn_in=5))
  >>> result = fit(trainer, state, data, epochs=10, extras=extras, on_epoch_end=hook)
  >>> probs = averaged_probs(result.extras["posterior"])  # (3, len(x_test), 10)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.train import EpochEnd


class SnapshotSchedule(NamedTuple):
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

  def takes(self, epoch: int) -> bool:
    """Whether the end of ``epoch`` (0-based) is a snapshot."""
    if epoch < self.burn_in:
      return False
    if self.cycle_length is not None:
      return self.cycle_length - 1 - epoch % self.cycle_length < self.per_cycle
    return (epoch - self.burn_in) % self.thin == 0


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
    raise ValueError("no snapshot was taken: check the schedule's burn-in against the epochs")
  return np.asarray(average.probs_sum) / count


def averaging_hook(
  predict: Callable[[Any, Any], Any],
  images: Any,
  schedule: SnapshotSchedule,
  name: str = "posterior",
) -> Callable[[EpochEnd], dict[str, Any]]:
  """A :func:`jaxdiff.train.fit` hook that adds a snapshot at the schedule's epochs.

  Args:
    predict: ``predict(params, images) -> probabilities (runs, n, classes)``, e.g. from
      :func:`jaxdiff.classification.make_predictor`.
    images: the evaluation inputs.
    schedule: when to take snapshots; only complete epochs count.
    name: the key of the :class:`PredictiveAverage` in the fit's extras (a dict).

  Returns:
    The hook: it returns the extras with ``extras[name]`` updated.
  """

  def hook(end: EpochEnd) -> dict[str, Any]:
    extras = dict(end.extras)
    if end.complete and schedule.takes(end.epoch):
      extras[name] = add_snapshot(extras[name], jnp.asarray(predict(end.state.params, images)))
    return extras

  return hook
