"""The one training loop, :func:`fit`, and the small pieces it composes.

:func:`fit` trains a :class:`jaxdiff.engine.Trainer` call by call of the engine, each call up
to the end of the current epoch or of the budget. Each concern is one piece:

* :class:`Budget`: how long to train (steps, epochs, a time limit) and the time limit's pace.
* :class:`Checkpointing`: where a checkpoint goes after every call, and whether to resume.
* :class:`Reporter`: the progress bar and the one-line logs (a resume, a diverged run), shown
  by process 0 only.
* :class:`PhaseClock`: the wall seconds of each phase.

After every call an epoch-end hook is given an :class:`EpochEnd` and returns the new
:class:`HookCarry`, as a ``lax.scan`` body returns its carry: the arrays and JSON records the
hook keeps, checkpointed with the train state, so that a resumed run's hook carries on from
where the interrupted one's stood. :func:`chain_hooks` composes hooks. The loop's own
bookkeeping, one :class:`Call` per call of the engine, is kept apart from the carry. Restoring a
checkpoint and training on reproduces an uninterrupted run bit for bit on CPU.

Example:
  >>> from jaxdiff import classification, parallel
  >>> from jaxdiff.engine import Trainer
  >>> from jaxdiff.models import MLP
  >>> task = classification.classifier_task(MLP(hidden=(), num_classes=3), (4, 4, 1))
  >>> trainer = Trainer(task, optax.sgd, mesh=parallel.make_mesh(), batch_size=8)
  >>> x, y = np.zeros((16, 4, 4, 1), np.uint8), np.arange(16, dtype=np.int32) % 3
  >>> data = trainer.put_data({"image": x, "label": y})
  >>> def record_losses(end: EpochEnd) -> HookCarry:
  ...   return end.carry.extend("loss", end.metrics["loss"][:, 0].tolist())
  >>> def train_for(epochs):
  ...   state = trainer.init(jax.random.split(jax.random.key(0), 2), learning_rate=0.1)
  ...   return fit(trainer, state, data, Budget(epochs=epochs), on_epoch_end=record_losses,
  ...              checkpointing=Checkpointing("out/checkpoints", resume=True),
  ...              reporter=Reporter(quiet=True))
  >>> len(train_for(epochs=2).carry.records["loss"])  # 2 steps an epoch
  4
  >>> result = train_for(epochs=3)  # goes on from the checkpoint after step 4
  train: resumed after step 4
  >>> len(result.carry.records["loss"]), [call.steps for call in result.calls]
  (6, [2, 2, 2])
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from jaxdiff.checkpoint import Checkpoints, check_no_checkpoints
from jaxdiff.distributed import is_main_process
from jaxdiff.engine import Trainer, TrainState


class PhaseClock:
  """Wall seconds spent in each phase of an experiment, summed over its occurrences.

  Example:
    >>> clock = PhaseClock()
    >>> for _ in range(2):
    ...   with clock("train"):
    ...     total = sum(range(1000))
    >>> list(clock.seconds), clock.seconds["train"] > 0  # both times' seconds, summed
    (['train'], True)
  """

  def __init__(self):
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, phase: str):
    started = time.perf_counter()
    try:
      yield
    finally:
      elapsed = time.perf_counter() - started
      self.seconds[phase] = self.seconds.get(phase, 0.0) + elapsed


@dataclasses.dataclass(frozen=True)
class HookCarry:
  """What epoch-end hooks carry from one call of the engine to the next.

  A hook is given the carry in :attr:`EpochEnd.carry` and returns it new; :func:`fit`
  checkpoints it with the train state. The methods return a new carry and never change this
  one. Hooks composed with :func:`chain_hooks` each keep their own names.

  Attributes:
    arrays: named pytrees of arrays (e.g. a running sum of predictions), checkpointed as
      arrays; :func:`fit` hands them to the next hook on the host.
    records: named JSON values (e.g. every epoch's scores), checkpointed as JSON.
  """

  arrays: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  records: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def with_array(self, name: str, value: Any) -> HookCarry:
    """This carry with ``arrays[name]`` set to ``value``."""
    return dataclasses.replace(self, arrays={**self.arrays, name: value})

  def with_record(self, name: str, value: Any) -> HookCarry:
    """This carry with ``records[name]`` set to ``value``."""
    return dataclasses.replace(self, records={**self.records, name: value})

  def extend(self, name: str, items: Iterable[Any]) -> HookCarry:
    """This carry with ``items`` appended to the list ``records[name]`` (created if missing)."""
    return self.with_record(name, [*self.records.get(name, []), *items])


class EpochEnd(NamedTuple):
  """What :func:`fit`'s ``on_epoch_end`` hook is given after each call of the engine.

  Attributes:
    epoch: the epoch number (0-based) the call trained in.
    complete: whether that epoch is now complete (False where a step budget ended it).
    state: the runs' state after the call (do not keep it: the next call donates it).
    metrics: the call's per-step metrics, host arrays ``(steps, runs)``.
    seconds: the call's wall time (the first call's includes compilation).
    carry: what the hooks carried out of the previous call; the hook returns the new one.
  """

  epoch: int
  complete: bool
  state: TrainState
  metrics: dict[str, np.ndarray]
  seconds: float
  carry: HookCarry


Hook = Callable[[EpochEnd], HookCarry]
"""An epoch-end hook, ``hook(end) -> the new carry`` (``end.carry`` if it keeps nothing)."""


def chain_hooks(*hooks: Hook) -> Hook:
  """One epoch-end hook that runs ``hooks`` in order, each given the carry the previous returned.

  Example:
    >>> from jaxdiff import classification, parallel
    >>> from jaxdiff.engine import Trainer
    >>> from jaxdiff.models import MLP
    >>> task = classification.classifier_task(MLP(hidden=(), num_classes=3), (4, 4, 1))
    >>> trainer = Trainer(task, optax.sgd, mesh=parallel.make_mesh(), batch_size=8)
    >>> x, y = np.zeros((16, 4, 4, 1), np.uint8), np.arange(16, dtype=np.int32) % 3
    >>> state = trainer.init(jax.random.split(jax.random.key(0), 2), learning_rate=0.1)
    >>> epochs = lambda end: end.carry.extend("epochs", [end.epoch])
    >>> losses = lambda end: end.carry.extend("mean_loss", [float(end.metrics["loss"].mean())])
    >>> result = fit(trainer, state, trainer.put_data({"image": x, "label": y}), Budget(epochs=2),
    ...              on_epoch_end=chain_hooks(epochs, losses), reporter=Reporter(quiet=True))
    >>> result.carry.records["epochs"], len(result.carry.records["mean_loss"])
    ([0, 1], 2)
  """

  def chained(end: EpochEnd) -> HookCarry:
    for hook in hooks:
      end = end._replace(carry=_returned_carry(hook(end)))
    return end.carry

  return chained


class Call(NamedTuple):
  """One call of the engine in a :func:`fit`.

  Attributes:
    epoch: the epoch (0-based) it trained in.
    steps: the steps it took.
    seconds: its wall time (the first call's includes compilation).
  """

  epoch: int
  steps: int
  seconds: float


class FitResult(NamedTuple):
  """What :func:`fit` returns.

  Attributes:
    state: the final state.
    carry: the hooks' final carry.
    calls: one :class:`Call` per call of the engine, a resumed run's earlier ones included.
  """

  state: TrainState
  carry: HookCarry
  calls: list[Call]


@dataclasses.dataclass(frozen=True)
class Budget:
  """How long :func:`fit` trains: ``steps`` or ``epochs``, a time limit, or both.

  Attributes:
    steps: the budget in steps, counted from the run's first (it may end inside an epoch).
    epochs: the budget in whole epochs.
    time_limit_s: stop once this much wall time has gone into this call of ``fit``: the first
      call of the engine takes one step (it measures the pace, compilation included), and each
      later call only the steps that the latest call's pace says still fit (``FitResult.calls``
      has the steps reached). A scanned epoch compiles a program per partial length, so the
      first epoch may compile two more.
    steps_per_call: at most this many steps per call of the engine, so that the hooks run at
      least that often (e.g. a posterior snapshot every ``k`` steps); None: up to each epoch's
      end. A scanned epoch compiles one program per distinct call length.

  Raises:
    ValueError: both ``steps`` and ``epochs``, or neither and no ``time_limit_s``; a negative
      budget, or ``steps_per_call`` below 1.
  """

  steps: int | None = None
  epochs: int | None = None
  time_limit_s: float | None = None
  steps_per_call: int | None = None

  def __post_init__(self):
    if self.steps is not None and self.epochs is not None:
      raise ValueError("give the budget steps= or epochs=, not both")
    if self.steps is None and self.epochs is None and self.time_limit_s is None:
      raise ValueError("give fit a budget: steps=, epochs= or time_limit_s=")
    limits = (self.steps, self.epochs, self.time_limit_s)
    if any(limit is not None and limit < 0 for limit in limits):
      raise ValueError(
        f"the budget must not be negative, got steps={self.steps}, epochs={self.epochs}, "
        f"time_limit_s={self.time_limit_s}"
      )
    if self.steps_per_call is not None and self.steps_per_call < 1:
      raise ValueError(f"steps_per_call must be at least 1, got {self.steps_per_call}")

  def total_steps(self, steps_per_epoch: int) -> int | None:
    """The steps to train, counted from the run's first; None: until the time limit."""
    return self.steps if self.epochs is None else self.epochs * steps_per_epoch

  def _start(self, steps_per_epoch: int) -> _Allowance:
    """The budget of a run with ``steps_per_epoch``, its time limit counted from now."""
    return _Allowance(self.total_steps(steps_per_epoch), self.time_limit_s, self.steps_per_call)


class _Allowance:
  """A started :class:`Budget`: how many steps each call of the engine may take."""

  def __init__(self, total: int | None, time_limit_s: float | None, steps_per_call: int | None):
    self.total = total
    self._deadline = None if time_limit_s is None else time.perf_counter() + time_limit_s
    self._steps_per_call = steps_per_call
    self._pace = None  # seconds per step of the latest call

  def steps_for_next_call(self, done: int) -> int:
    """Steps the next call may take after ``done``; 0 once the budget is spent."""
    # Without steps or epochs, the step counter's range: only the time limit stops training.
    remaining = (np.iinfo(np.int32).max if self.total is None else self.total) - done
    if self._steps_per_call is not None:
      # Calls end at multiples of steps_per_call, so that a resumed run's calls are the same.
      remaining = min(remaining, self._steps_per_call - done % self._steps_per_call)
    if remaining <= 0 or self._deadline is None:
      return max(remaining, 0)
    if self._pace is None:
      return 1  # the first call measures the pace: one step, not an epoch that may overrun
    return max(0, min(remaining, int((self._deadline - time.perf_counter()) / self._pace)))

  def took(self, call: Call) -> None:
    self._pace = call.seconds / call.steps


@dataclasses.dataclass(frozen=True)
class Checkpointing:
  """Where :func:`fit` saves a checkpoint after every call of the engine, and whether it resumes.

  A checkpoint holds the train state, the hooks' carry and the calls so far
  (:mod:`jaxdiff.checkpoint`), numbered by the step.

  Attributes:
    directory: where the numbered checkpoints go.
    resume: continue from the latest checkpoint in ``directory``, if any; without it a
      ``directory`` holding checkpoints is refused.
    every_epochs: save only after the calls that complete every ``every_epochs``-th epoch, and
      after the last call; None: after every call. For runs whose calls are short
      (``Budget(steps_per_call=...)``), where a save per call would write most of the time.
  """

  directory: str | Path
  resume: bool = False
  every_epochs: int | None = None

  def __post_init__(self):
    if self.every_epochs is not None and self.every_epochs < 1:
      raise ValueError(f"every_epochs must be at least 1, got {self.every_epochs}")


class _RunCheckpoints:
  """An open :class:`Checkpointing`, or none: restores and saves a fit's state, carry and calls."""

  def __init__(self, checkpointing: Checkpointing | None, clock: PhaseClock):
    self._clock = clock
    self._resume = checkpointing is not None and checkpointing.resume
    self._every_epochs = None if checkpointing is None else checkpointing.every_epochs
    self._checkpoints = None
    if checkpointing is not None:
      if not checkpointing.resume:
        check_no_checkpoints(checkpointing.directory)
      self._checkpoints = Checkpoints(checkpointing.directory)

  def __enter__(self) -> _RunCheckpoints:
    return self

  def __exit__(self, *exception) -> None:
    if self._checkpoints is not None:
      self._checkpoints.close()  # waits for the last save to be written

  def restore(
    self, state: TrainState, carry: HookCarry
  ) -> tuple[TrainState, HookCarry, list[Call], int | None]:
    """The latest checkpoint's state, carry, calls and step; with none, the arguments, no
    calls and None."""
    latest = self._checkpoints.latest_step() if self._resume else None
    if latest is None:
      return state, carry, [], None
    state, arrays, saved = self._checkpoints.restore(latest, state, dict(carry.arrays))
    carry = HookCarry(jax.device_get(arrays), saved["records"])
    return state, carry, [Call(**call) for call in saved["calls"]], latest

  def save(self, step: int, state: TrainState, carry: HookCarry, calls: list[Call],
           steps_per_epoch: int, last: bool) -> None:  # fmt: skip
    if self._checkpoints is None:
      return
    if self._every_epochs is not None and not last:
      epochs, rest = divmod(step, steps_per_epoch)
      if rest or epochs % self._every_epochs:
        return
    with self._clock("checkpoint"):
      saved = {"calls": [call._asdict() for call in calls], "records": dict(carry.records)}
      self._checkpoints.save(step, state, dict(carry.arrays), saved)


@dataclasses.dataclass(frozen=True)
class Reporter:
  """How :func:`fit` reports: a progress bar and one-line logs, shown by process 0 only.

  Attributes:
    name: the progress bar's and the log lines' label.
    run_names: how log lines name each run (default: ``run 0``, ``run 1``, …).
    quiet: no progress bar (the log lines stay).
    log: where one-line reports go: a resume, a diverged run.
    summaries: also write the training metrics to TensorBoard and JSON lines
      (:class:`jaxdiff.summaries.Summaries`, one run each): every metric's mean over each
      ``summary_every`` steps as ``train/<metric>``, and after every call of the engine the
      images per second (``train/images_per_second``, of the whole group) and each numeric
      hyperparameter the runs were given (``hyperparams/<name>``: a schedule's initial value).
      A resumed fit continues the series after its checkpoint.
    summary_every: the steps each training scalar averages.
  """

  name: str = "train"
  run_names: Sequence[str] | None = None
  quiet: bool = False
  log: Callable[[str], None] = print
  summaries: Any = None
  summary_every: int = 50


class _Report:
  """An open :class:`Reporter`: a tqdm bar over run-steps, and the runs reported diverged."""

  def __init__(self, reporter: Reporter, state: TrainState, total_steps: int | None):
    main = is_main_process()
    self._summaries = reporter.summaries
    self._summary_every = reporter.summary_every
    self._name = reporter.name
    self._log = reporter.log if main else lambda line: None
    self._num_runs = len(state.step)
    self._run_names = (
      list(reporter.run_names)
      if reporter.run_names is not None
      else [f"run {run}" for run in range(self._num_runs)]
    )
    self._bar = tqdm(
      total=None if total_steps is None else total_steps * self._num_runs,
      initial=int(state.step[0]) * self._num_runs,
      desc=reporter.name,
      disable=reporter.quiet or not main,
      unit="step",
    )
    self._calls = 0
    self._diverged = set(np.flatnonzero(np.asarray(state.diverged_at) >= 0).tolist())

  def __enter__(self) -> _Report:
    return self

  def __exit__(self, *exception) -> None:
    self._bar.close()

  def log(self, line: str) -> None:
    self._log(f"{self._name}: {line}")

  @property
  def every_run_diverged(self) -> bool:
    return len(self._diverged) == self._num_runs

  def divergences(self, state: TrainState) -> None:
    """Logs each run that diverged since the last report."""
    for run in np.flatnonzero(np.asarray(state.diverged_at) >= 0).tolist():
      if run not in self._diverged:
        self._diverged.add(run)
        others = "no run is left" if self.every_run_diverged else "the other runs go on"
        self.log(
          f"{self._run_names[run]} diverged at step {int(state.diverged_at[run])}: non-finite "
          f"loss or parameters; it keeps its last finite parameters and stops, {others}"
        )

  def resumed(self, step: int) -> None:
    self.log(f"resumed after step {step}")
    if self._summaries is not None:
      self._summaries.resume_from(step)

  def summarize(self, state: TrainState, metrics: dict[str, np.ndarray], call: Call,
                batch_size: int) -> None:  # fmt: skip
    """Writes the call's training scalars (:attr:`Reporter.summaries`)."""
    if self._summaries is None:
      return
    first = int(state.step[0]) - call.steps  # the step the call started from
    every = self._summary_every
    # Intervals of `every` steps counted from the run's start, cut at the call's ends.
    edges = sorted({0, call.steps, *range(-first % every or every, call.steps, every)})
    for start, stop in zip(edges[:-1], edges[1:]):
      with warnings.catch_warnings():  # a diverged run's NaNs: left out of its summaries
        warnings.simplefilter("ignore", RuntimeWarning)
        means = {f"train/{name}": np.nanmean(values[start:stop], axis=0)
                 for name, values in metrics.items()}  # fmt: skip
      self._summaries.scalars(first + stop, means)
    hyperparams = getattr(state.opt_state, "hyperparams", {})
    numeric = {f"hyperparams/{name}": np.asarray(value) for name, value in hyperparams.items()
               if not jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key)}  # fmt: skip
    throughput = batch_size * call.steps * self._num_runs / call.seconds
    self._summaries.scalars(first + call.steps,
                            {**numeric, "train/images_per_second": throughput})  # fmt: skip

  def flush(self) -> None:
    """Writes the summaries' queued events to their files: before a checkpoint, so that a run
    killed after it and resumed from it loses none of its series up to it."""
    if self._summaries is not None:
      self._summaries.flush()

  def on_steps(self, count: int, metrics: dict[str, jax.Array]) -> None:
    """Advances the bar after ``count`` steps, showing the latest mean of each metric."""
    if self._bar.disable:
      return
    self._bar.update(count * len(metrics["loss"]))
    self._calls += 1
    # Reading a value waits for the device: not after every step, but after every scanned epoch.
    if self._calls % 50 == 1 or count > 1:
      self._bar.set_postfix(
        {name: f"{float(jnp.nanmean(value)):.3f}" for name, value in metrics.items()}
      )


def fit(
  trainer: Trainer,
  state: TrainState,
  data: Mapping[str, jax.Array],
  budget: Budget,
  *,
  on_epoch_end: Hook | None = None,
  carry: HookCarry | None = None,
  checkpointing: Checkpointing | None = None,
  reporter: Reporter | None = None,
  clock: PhaseClock | None = None,
) -> FitResult:
  """Trains ``state`` on ``data`` within ``budget``: the one training loop.

  Each iteration trains up to the end of the current epoch (or of the budget), reports the
  runs that diverged in it, calls ``on_epoch_end`` and saves a checkpoint numbered by the step.
  Training stops at the budget, at the time limit, or once every run has diverged.

  Args:
    trainer: the engine.
    state: the initial state, from :meth:`jaxdiff.engine.Trainer.init` (donated).
    data: arrays from :meth:`jaxdiff.engine.Trainer.put_data`.
    budget: how long to train.
    on_epoch_end: called after every call of the engine; returns the new carry
      (:func:`chain_hooks` composes several hooks).
    carry: the hooks' initial carry (default: empty); a resumed run restores its checkpointed
      carry into the same shapes.
    checkpointing: where checkpoints go, and whether to resume (None: no checkpoints).
    reporter: the progress bar and log lines (default: ``Reporter()``).
    clock: sums the wall time of the phases ``train`` and ``checkpoint`` (the hook may time
      its own).

  Returns:
    The final :class:`FitResult`.

  Raises:
    jaxdiff.checkpoint.CheckpointsExistError: the checkpoint directory holds checkpoints and
      the run does not resume.
    TypeError: the hook returned something other than a :class:`HookCarry`.
  """
  clock = clock or PhaseClock()
  steps_per_epoch = trainer.steps_per_epoch(data)
  allowance = budget._start(steps_per_epoch)
  with _RunCheckpoints(checkpointing, clock) as checkpoints:
    state, carry, calls, resumed_at = checkpoints.restore(state, carry or HookCarry())
    with _Report(reporter or Reporter(), state, allowance.total) as report:
      if resumed_at is not None:
        report.resumed(resumed_at)
      done = int(state.step[0])
      limit = allowance.steps_for_next_call(done)
      while not report.every_run_diverged and limit:
        epoch, start_step = divmod(done, steps_per_epoch)
        started = time.perf_counter()
        with clock("train"):
          state, metrics = trainer.train_epoch(state, data, epoch, on_steps=report.on_steps,
                                               max_steps=limit, start_step=start_step)  # fmt: skip
          jax.block_until_ready(state)
        calls.append(Call(epoch, len(metrics["loss"]), time.perf_counter() - started))
        allowance.took(calls[-1])
        done = int(state.step[0])
        report.divergences(state)
        report.summarize(state, metrics, calls[-1], trainer.batch_size)
        if on_epoch_end is not None:
          complete = done % steps_per_epoch == 0
          end = EpochEnd(epoch, complete, state, metrics, calls[-1].seconds, carry)
          carry = _returned_carry(on_epoch_end(end))
        # Decided before the save, so that the save knows whether it is the last.
        limit = allowance.steps_for_next_call(done)
        last = report.every_run_diverged or not limit
        report.flush()
        checkpoints.save(done, state, carry, calls, steps_per_epoch, last)
  return FitResult(state, carry, calls)


def _returned_carry(returned: Any) -> HookCarry:
  """A hook's new carry, its arrays on the host: checkpointed by every process alike, whatever
  device the hook used."""
  if not isinstance(returned, HookCarry):
    raise TypeError(
      "an epoch-end hook returns the new HookCarry (end.carry if it keeps nothing), got "
      f"{type(returned).__name__}"
    )
  return dataclasses.replace(returned, arrays=jax.device_get(dict(returned.arrays)))
