"""Image classification on top of the engine: the task, a predictor, and scored groups of runs.

:func:`classifier_task` is the cross-entropy loss (with the batch's accuracy as its one metric)
that the engine trains; :func:`make_predictor` turns a run axis of parameters into predicted
probabilities; :func:`train_and_score` trains a group of runs on :func:`jaxdiff.loop.fit` and
scores each on an :class:`Evaluation` after every epoch, at its final parameters and, for
samplers, through the posterior average of :mod:`jaxdiff.posterior`, optionally on rotated
copies of the images too (:mod:`jaxdiff.shift`). The metrics themselves (accuracy, NLL, ECE,
Brier score) are in :mod:`jaxdiff.metrics`.

Example:
  >>> import jaxdiff
  >>> from jaxdiff.models import MLP
  >>> from jaxdiff.posterior import SnapshotEpochs
  >>> model, mesh = MLP(hidden=(), num_classes=3), parallel.make_mesh()
  >>> trainer = Trainer(classifier_task(model, (4, 4, 1)), jaxdiff.langevin_sgd, mesh=mesh,
  ...                   batch_size=8)
  >>> state = trainer.init(jax.random.split(jax.random.key(0), 2), learning_rate=0.1,
  ...                      diffusion=1e-3, key=jax.random.split(jax.random.key(1), 2))
  >>> x, y = np.zeros((16, 4, 4, 1), np.uint8), np.arange(16, dtype=np.int32) % 3
  >>> predict = make_predictor(model, mesh, chunk_size=8)
  >>> group = train_and_score(trainer, state, trainer.put_data({"image": x, "label": y}),
  ...                         Budget(epochs=3), predict=predict,
  ...                         evaluation=Evaluation("test", x[:8], y[:8]), num_classes=3,
  ...                         snapshots=SnapshotEpochs(burn_in=1),
  ...                         reporter=Reporter(quiet=True))
  >>> [(run["status"], run["snapshots"]) for run in group.runs]
  [('ok', 2), ('ok', 2)]
  >>> sorted(group.runs[0]["averaged"])  # the posterior average's scores
  ['accuracy', 'brier', 'ece', 'error', 'nll']
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypedDict

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from jaxdiff import metrics, parallel, posterior, shift
from jaxdiff.engine import Trainer, TrainState, run_slices
from jaxdiff.loop import (
  Budget,
  Checkpointing,
  EpochEnd,
  HookCarry,
  PhaseClock,
  Reporter,
  chain_hooks,
  fit,
)
from jaxdiff.models import normalize_images
from jaxdiff.policy import ExecutionPolicy
from jaxdiff.tasks import Task


def classifier_task(
  model: nn.Module,
  image_shape: tuple[int, ...],
  normalize: Callable[[jax.Array], jax.Array] = normalize_images,
) -> Task:
  """Softmax cross-entropy on ``{"image": uint8 NHWC, "label": int}`` batches.

  ``normalize`` maps the uint8 pixels to the model's input (default: [-1, 1]).
  """

  def init(key):
    return model.init(key, jnp.zeros((1,) + tuple(image_shape), jnp.float32))["params"]

  def loss(params, batch, key):
    del key  # deterministic model
    logits = model.apply({"params": params}, normalize(batch["image"]))
    labels = batch["label"]
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

  return Task(init, loss)


def make_predictor(
  model: nn.Module,
  mesh: jax.sharding.Mesh,
  chunk_size: int = 500,
  policy: ExecutionPolicy | None = None,
  normalize: Callable[[jax.Array], jax.Array] = normalize_images,
) -> Callable[[object, np.ndarray], np.ndarray]:
  """Returns ``predict(params, images) -> probabilities (runs, n, classes)``.

  ``params`` carries a leading run axis (a ``TrainState.params``); the images
  are split across the devices and pushed through in chunks to bound memory.
  Runs go ``policy.runs_per_call`` at a time, as in :class:`jaxdiff.engine.Trainer`
  (default policy: ``ExecutionPolicy.for_mesh(mesh)``).
  """
  policy = policy or ExecutionPolicy.for_mesh(mesh)
  devices = mesh.size

  def local_probs(params, images):
    chunks = images.reshape((-1, chunk_size) + images.shape[1:])

    def chunk_probs(chunk):
      logits = jax.vmap(lambda p: model.apply({"params": p}, normalize(chunk)))(params)
      return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    probs = jax.lax.map(chunk_probs, chunks)  # (chunks, runs, chunk, classes)
    return jnp.swapaxes(probs, 0, 1).reshape(probs.shape[1], -1, probs.shape[-1])

  compiled = jax.jit(
    jax.shard_map(
      local_probs,
      mesh=mesh,
      in_specs=(P(), P(parallel.DATA_AXIS)),
      out_specs=P(None, parallel.DATA_AXIS),
    ),
    compiler_options=dict(policy.compiler_options),
  )

  def predict(params, images: np.ndarray) -> np.ndarray:
    count = len(images)
    multiple = devices * chunk_size
    padded = -count % multiple
    if padded:
      images = np.concatenate([images, np.zeros((padded,) + images.shape[1:], images.dtype)])
    images = parallel.shard_batch(images, mesh)
    num_runs = len(jax.tree.leaves(params)[0])
    probs = [
      parallel.to_host(compiled(jax.tree.map(lambda leaf, runs=runs: leaf[runs], params), images))
      for runs in run_slices(num_runs, policy.runs_per_call)
    ]
    return np.concatenate(probs)[:, :count]

  return predict


# ----------------------------------------------------------------------------- scored runs


class Scores(TypedDict):
  """:func:`jaxdiff.metrics.classification_scores` of one predictive; None where not finite."""

  accuracy: float | None
  error: float | None
  nll: float | None
  ece: float | None
  brier: float | None


def scores(probs: np.ndarray, labels: np.ndarray) -> Scores:
  """The :class:`Scores` of predictive ``probs`` ``(n, classes)`` against ``labels``."""
  values = metrics.classification_scores(probs, labels)
  return Scores(**{name: metrics.finite_or_none(value) for name, value in values.items()})


class Evaluation(NamedTuple):
  """What a group of runs is scored on.

  Attributes:
    name: how reports call it (``"test"``, ``"validation"``).
    images: uint8 NHWC images.
    labels: their labels.
    angles: also score the images rotated by these angles in degrees
      (:data:`jaxdiff.shift.ROTATION_ANGLES`: dataset shift); they must include 0, the images
      themselves. Empty: no rotations.
  """

  name: str
  images: np.ndarray
  labels: np.ndarray
  angles: tuple[float, ...] = ()


class EpochScores(TypedDict):
  """One run's scores after one complete epoch."""

  epoch: int  # 1-based
  step: int  # steps done
  train: dict[str, float | None]  # the mean of each training metric ("loss", ...) over the epoch
  current: Scores  # the epoch's final parameters on the evaluation images
  averaged: Scores | None  # the posterior average so far; None before the first snapshot


class ShiftScores(TypedDict):
  """Scores at each angle of :attr:`Evaluation.angles`."""

  angles: list[float]
  final: list[Scores]
  averaged: list[Scores] | None


class RunScores(TypedDict):
  """What :func:`train_and_score` measured of one run."""

  status: str  # "ok", or "diverged": a non-finite loss or parameters stopped it
  diverged_at_step: int | None
  snapshots: int  # snapshots in the posterior average (0 without a schedule)
  final: Scores  # the final parameters on the evaluation images
  averaged: Scores | None  # the posterior average; None without snapshots
  epochs: list[EpochScores]
  last_epoch_loss_std: float | None  # the spread of the last epoch's minibatch losses
  step_time_s: float | None  # per step of one run, the first call (compilation) left out
  # Per step of one run, each call of the engine in order (the first included): how much the
  # median step_time_s can be trusted.
  step_times_s: list[float]
  shift: ShiftScores | None  # with Evaluation.angles


class RunRecord(RunScores):
  """One run of an experiment, as its report.json stores it: who it is, then its scores.

  The one record type of the classifier experiments (:func:`run_record` builds it).
  """

  method: str  # the optimizer or sampler, as the experiment's registry names it
  phase: str  # which group the run belongs to, e.g. "tuning", "seeds", "temperatures"
  seed: int | None  # None for runs that share one key (a tuning grid)
  learning_rate: float
  diffusion: float | None  # None for a noiseless optimizer
  temperature: float | None  # T = N·D


def run_record(
  scores: RunScores,
  *,
  method: str,
  phase: str,
  seed: int | None,
  learning_rate: float,
  diffusion: float | None = None,
  temperature: float | None = None,
) -> RunRecord:
  """A :class:`RunRecord`: the run's identity, then what :func:`train_and_score` measured."""
  return RunRecord(method=method, phase=phase, seed=seed, learning_rate=learning_rate,
                   diffusion=diffusion, temperature=temperature, **scores)  # fmt: skip


class ScoredGroup(NamedTuple):
  """What :func:`train_and_score` returns: the runs' final state and one score per run."""

  state: TrainState
  runs: list[RunScores]


def train_and_score(
  trainer: Trainer,
  state: TrainState,
  data: dict[str, jax.Array],
  budget: Budget,
  *,
  predict: Callable[[Any, np.ndarray], np.ndarray],
  evaluation: Evaluation,
  num_classes: int,
  snapshots: posterior.SnapshotEpochs | posterior.SnapshotSteps | None = None,
  checkpointing: Checkpointing | None = None,
  reporter: Reporter | None = None,
  clock: PhaseClock | None = None,
) -> ScoredGroup:
  """Trains a group of runs on :func:`jaxdiff.loop.fit` and scores each run on ``evaluation``.

  After every complete epoch each run's current parameters are scored (and the posterior
  average so far); the predictions at the ``snapshots`` are averaged
  (:func:`jaxdiff.posterior.averaging_hook`, checkpointed with the run, so a resumed group
  scores as an uninterrupted one); at the end the final parameters and the average are scored,
  at every angle of ``evaluation.angles`` too. Diverged runs keep their last finite parameters
  and are scored on them: read ``status`` before using their scores.

  Args:
    trainer: the engine.
    state: the runs' initial state (donated).
    data: training arrays from :meth:`jaxdiff.engine.Trainer.put_data`.
    budget: how long to train.
    predict: ``predict(params, images) -> probabilities (runs, n, classes)``
      (:func:`make_predictor`).
    evaluation: the images to score on.
    num_classes: the classes ``predict`` returns.
    snapshots: when to add the parameters' predictions to the posterior average; None: no
      average (a noiseless optimizer's trajectory need not be averaged).
    checkpointing: as for :func:`jaxdiff.loop.fit`.
    reporter: as for :func:`jaxdiff.loop.fit`.
    clock: sums the seconds of ``train``, ``checkpoint`` and ``score``.

  Returns:
    The final state and one :class:`RunScores` per run, in the state's order.

  Raises:
    ValueError: ``evaluation.angles`` without 0.
  """
  clock = clock or PhaseClock()
  images, labels = evaluation.images, evaluation.labels
  averaged_images = images
  if evaluation.angles:
    if 0 not in evaluation.angles:
      raise ValueError(f"the angles must include 0, the images themselves: {evaluation.angles}")
    averaged_images, _ = shift.stack_rotations(images, labels, evaluation.angles)
  num_runs = len(state.step)
  carry = HookCarry()
  hooks = []
  if snapshots is not None:
    initial = posterior.init_average(num_runs, len(averaged_images), num_classes)
    carry = carry.with_array("posterior", initial)
    hooks.append(posterior.averaging_hook(predict, averaged_images, snapshots))
  unrotated = _unrotated_slice(evaluation)

  def score_epoch(end: EpochEnd) -> HookCarry:
    if not end.complete:
      return end.carry
    current = predict(end.state.params, images)
    average = end.carry.arrays.get("posterior")
    averaged = posterior.averaged_probs(average)[:, unrotated] if _taken(average) else None
    records = [
      EpochScores(
        epoch=end.epoch + 1,
        step=int(end.state.step[0]),
        train={name: _finite_mean(values[:, run]) for name, values in end.metrics.items()},
        current=scores(current[run], labels),
        averaged=None if averaged is None else scores(averaged[run], labels),
      )
      for run in range(num_runs)
    ]
    _write_scores(reporter, int(end.state.step[0]), evaluation.name, records)
    return end.carry.extend("epochs", [records]).with_record(
      "last_epoch_losses", np.asarray(end.metrics["loss"]).T.tolist()
    )

  average_and_score = chain_hooks(*hooks, score_epoch)

  def on_epoch_end(end: EpochEnd) -> HookCarry:
    with clock("score"):  # the snapshots' predictions too
      return average_and_score(end)

  result = fit(trainer, state, data, budget, on_epoch_end=on_epoch_end, carry=carry,
               checkpointing=checkpointing, reporter=reporter, clock=clock)  # fmt: skip
  with clock("score"):
    final = predict(result.state.params, averaged_images)
    average = result.carry.arrays.get("posterior")
    averaged = posterior.averaged_probs(average) if _taken(average) else None
  step_times = [call.seconds / call.steps / num_runs for call in result.calls if call.steps]
  step_time = float(np.median(step_times[1:] or step_times)) if step_times else None
  epochs = result.carry.records.get("epochs", [])
  losses = result.carry.records.get("last_epoch_losses")
  runs = []
  for run in range(num_runs):
    diverged_at = int(result.state.diverged_at[run])
    finite_losses = [] if losses is None else [x for x in losses[run] if np.isfinite(x)]
    runs.append(
      RunScores(
        status="diverged" if diverged_at >= 0 else "ok",
        diverged_at_step=diverged_at if diverged_at >= 0 else None,
        snapshots=int(average.count) if average is not None else 0,
        final=scores(final[run, unrotated], labels),
        averaged=None if averaged is None else scores(averaged[run, unrotated], labels),
        epochs=[epoch[run] for epoch in epochs],
        last_epoch_loss_std=float(np.std(finite_losses)) if finite_losses else None,
        step_time_s=step_time,
        step_times_s=step_times,
        shift=_shift_scores(evaluation, final[run], None if averaged is None else averaged[run]),
      )
    )
  return ScoredGroup(result.state, runs)


def _write_scores(reporter: Reporter | None, step: int, name: str,
                  records: list[EpochScores]) -> None:  # fmt: skip
  """Each run's epoch scores as ``<evaluation>/<metric>`` and ``<evaluation>_averaged/<metric>``
  in the reporter's summaries, if it has any."""
  if reporter is None or reporter.summaries is None:
    return
  for predictive, suffix in (("current", ""), ("averaged", "_averaged")):
    for metric in ("error", "nll", "ece", "brier"):
      values = [np.nan if (r[predictive] or {}).get(metric) is None else r[predictive][metric]
                for r in records]  # fmt: skip
      reporter.summaries.scalars(step, {f"{name}{suffix}/{metric}": values})


def _taken(average: posterior.PredictiveAverage | None) -> bool:
  return average is not None and int(average.count) > 0


def _finite_mean(values: np.ndarray) -> float | None:
  finite = np.asarray(values, np.float64)
  finite = finite[np.isfinite(finite)]  # none once a run has diverged
  return float(finite.mean()) if finite.size else None


def _unrotated_slice(evaluation: Evaluation) -> slice:
  """Where the images themselves lie in :func:`jaxdiff.shift.stack_rotations`' stack."""
  size = len(evaluation.labels)
  index = list(evaluation.angles).index(0) if evaluation.angles else 0
  return slice(index * size, (index + 1) * size)


def _shift_scores(
  evaluation: Evaluation, final: np.ndarray, averaged: np.ndarray | None
) -> ShiftScores | None:
  if not evaluation.angles:
    return None
  angles = list(evaluation.angles)
  labels = np.tile(evaluation.labels, len(angles))

  def per_angle(probs: np.ndarray) -> list[Scores]:
    rows = shift.scores_by_angle(probs, labels, angles)
    return [Scores(**{k: metrics.finite_or_none(v) for k, v in row.items() if k != "angle"})
            for row in rows]  # fmt: skip

  return ShiftScores(angles=angles, final=per_angle(final),
                     averaged=None if averaged is None else per_angle(averaged))  # fmt: skip
