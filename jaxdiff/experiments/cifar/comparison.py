"""The seed article's optimizer comparison on CIFAR-10, run on the engine.

For each optimizer, every seed (and, with a sweep, every learning rate and
diffusion on the grid) is one run of a single vmapped program. All optimizers
share the seeds' initial parameters and data orders, so differences between
them are paired. After each epoch the test set is scored; Langevin runs also
average their predictive probabilities over the epochs of the last half of
training (the posterior average, how SGLD is meant to be used).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from jaxdiff import classification, langevin, parallel, report, train
from jaxdiff.data import Dataset
from jaxdiff.models import SimpleCNN


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  factory: Callable[..., optax.GradientTransformation]
  langevin: bool


OPTIMIZERS: dict[str, OptimizerSpec] = {
  "sgd": OptimizerSpec(optax.sgd, False),
  "momentum": OptimizerSpec(functools.partial(optax.sgd, momentum=0.9), False),
  "adam": OptimizerSpec(optax.adam, False),
  "langevin": OptimizerSpec(langevin.langevin_sgd, True),
  "langevin_adam": OptimizerSpec(langevin.langevin_adam, True),
  "psgld": OptimizerSpec(langevin.psgld, True),
}
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_DIFFUSION = 1e-2
SWEEP_LR_FACTORS = (0.1, 1.0, 10.0)
SWEEP_DIFFUSIONS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


@dataclasses.dataclass(frozen=True)
class ComparisonConfig:
  """What to run; every field has the article's default.

  Attributes:
    optimizers: names from :data:`OPTIMIZERS`.
    epochs: training epochs.
    batch_size: global batch size.
    learning_rate: the learning rate of every optimizer.
    diffusion: ``D`` of the Langevin optimizers (temperature ``T = N·D``).
    seeds: number of seeds per optimizer.
    train_size: use the first ``train_size`` images after a fixed shuffle
      (``None``: all).
    sweep: train the sensitivity grid instead of one setting.
    sweep_lrs: the grid's learning rates (default: ×0.1, ×1, ×10 of ``learning_rate``).
    sweep_diffusions: the grid's diffusions for Langevin optimizers.
    loop: the engine's epoch loop (``auto``, ``step`` or ``scan``).
    seed: the root of every key.
  """

  optimizers: tuple[str, ...] = tuple(OPTIMIZERS)
  epochs: int = 10
  batch_size: int = 100
  learning_rate: float = DEFAULT_LEARNING_RATE
  diffusion: float = DEFAULT_DIFFUSION
  seeds: int = 3
  train_size: int | None = None
  sweep: bool = False
  sweep_lrs: tuple[float, ...] | None = None
  sweep_diffusions: tuple[float, ...] = SWEEP_DIFFUSIONS
  loop: str = "auto"
  seed: int = 0

  def __post_init__(self):
    unknown = [name for name in self.optimizers if name not in OPTIMIZERS]
    if unknown:
      raise ValueError(
        f"unknown optimizer {', '.join(unknown)}; choose from {', '.join(OPTIMIZERS)}"
      )
    if not self.optimizers:
      raise ValueError("give at least one optimizer")
    for name in ("epochs", "batch_size", "seeds"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
    lrs = (self.learning_rate,) + tuple(self.sweep_lrs or ())
    if not all(math.isfinite(lr) and lr > 0 for lr in lrs):
      raise ValueError(f"learning rates must be positive and finite, got {lrs}")
    diffusions = (self.diffusion,) + tuple(self.sweep_diffusions)
    if not all(math.isfinite(d) and d >= 0 for d in diffusions):
      raise ValueError(f"diffusions must be non-negative and finite, got {diffusions}")
    if self.train_size is not None and self.train_size <= 0:
      raise ValueError(f"train-size must be positive, got {self.train_size}")

  def grid(self, name: str) -> list[tuple[float, float | None]]:
    """The (learning rate, diffusion) settings to train for optimizer ``name``."""
    is_langevin = OPTIMIZERS[name].langevin
    if not self.sweep:
      return [(self.learning_rate, self.diffusion if is_langevin else None)]
    lrs = self.sweep_lrs or tuple(self.learning_rate * f for f in SWEEP_LR_FACTORS)
    diffusions = self.sweep_diffusions if is_langevin else (None,)
    return [(lr, d) for lr in lrs for d in diffusions]


def training_subset(data: Dataset, train_size: int | None, key: jax.Array) -> Dataset:
  """The first ``train_size`` training images after a shuffle fixed by ``key``.

  The shuffle also undoes class-sorted sources (the CIFAR JPEG copy is sorted).
  """
  order = np.asarray(jax.random.permutation(key, len(data.x_train)))
  return data.take_train(order[:train_size])


@dataclasses.dataclass
class _Runs:
  """The runs of one optimizer: their settings and accumulated results."""

  name: str
  settings: list[tuple[int, float, float | None]]  # (seed, lr, diffusion)

  @property
  def num_runs(self) -> int:
    return len(self.settings)


class PhaseClock:
  """Wall seconds spent in each phase of an experiment, summed over its occurrences.

  Example:
    >>> clock = PhaseClock()
    >>> with clock("train"):
    ...   state = train(state)
    >>> clock.seconds  # {"train": 12.3}
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


def run_comparison(
  config: ComparisonConfig,
  data: Dataset,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
  log: Callable[[str], None] = print,
  clock: PhaseClock | None = None,
) -> list[dict[str, Any]]:
  """Trains every optimizer of ``config`` and returns one record per run.

  Checkpoints go to ``out_dir/checkpoints/<optimizer>`` after every epoch;
  with ``resume`` each optimizer continues from its latest checkpoint.
  ``clock``, if given, sums the wall seconds spent compiling, training,
  scoring and checkpointing.

  Returns:
    Run records in the schema of :func:`jaxdiff.report.summarize`.

  Raises:
    jaxdiff.train.CheckpointsExistError: not ``resume``, and ``out_dir`` holds checkpoints.
  """
  if not resume:
    train.check_no_checkpoints(Path(out_dir) / "checkpoints")
  clock = clock or PhaseClock()
  root = jax.random.key(config.seed)
  data = training_subset(data, config.train_size, jax.random.fold_in(root, 0))
  mesh = parallel.make_mesh()
  parallel.check_divisible(config.batch_size, mesh)
  if len(data.x_train) < config.batch_size:
    raise ValueError(
      f"{len(data.x_train)} training images are fewer than one batch of {config.batch_size}"
    )
  model = SimpleCNN(num_classes=data.num_classes)
  task = classification.classifier_task(model, data.image_shape)
  predict = classification.make_predictor(model, mesh)
  optimizers = [
    _Runs(name, [(seed, lr, d) for seed in range(config.seeds) for lr, d in config.grid(name)])
    for name in config.optimizers
  ]
  trainers = [
    train.Trainer(
      task, OPTIMIZERS[runs.name].factory, mesh=mesh, batch_size=config.batch_size, loop=config.loop
    )
    for runs in optimizers
  ]
  device_data = trainers[0].put_data({"image": data.x_train, "label": data.y_train})
  with clock("compile"):
    # The trainers share the compiled parameter initialisation: one after another, only the
    # first compiles it.
    states = [_initial_state(runs, trainer, root) for runs, trainer in zip(optimizers, trainers)]
    # Compiling is most of a short comparison's time; the optimizers' programs compile at once.
    with ThreadPoolExecutor(len(trainers)) as pool:
      list(pool.map(lambda trainer, state: trainer.compile(state, device_data), trainers, states))
  records = []
  for runs, trainer, state in zip(optimizers, trainers, states):
    records += _train_optimizer(
      config, runs, trainer, state, predict, data, device_data,
      Path(out_dir) / "checkpoints" / runs.name, resume, quiet, log, clock,
    )  # fmt: skip
  return records


def _initial_state(runs: _Runs, trainer: train.Trainer, root: jax.Array) -> train.TrainState:
  """The runs' initial state: each seed starts from the same parameters with every optimizer."""
  seed_keys = jnp.stack([jax.random.fold_in(root, 1 + seed) for seed, _, _ in runs.settings])
  hyperparams = {"learning_rate": jnp.asarray([lr for _, lr, _ in runs.settings], jnp.float32)}
  if OPTIMIZERS[runs.name].langevin:
    hyperparams["diffusion"] = jnp.asarray([d for _, _, d in runs.settings], jnp.float32)
    hyperparams["key"] = jax.vmap(lambda k: jax.random.fold_in(k, 7))(seed_keys)
  return trainer.init(seed_keys, **hyperparams)


def _train_optimizer(config, runs, trainer, state, predict, data, device_data, checkpoint_dir,
                     resume, quiet, log, clock) -> list[dict[str, Any]]:  # fmt: skip
  spec = OPTIMIZERS[runs.name]
  num_classes = data.num_classes
  # Summed test-set probabilities over the last half's epochs: the posterior average.
  extras = {
    "posterior_sum": np.zeros((runs.num_runs, len(data.x_test), num_classes), np.float32),
    "snapshots": np.zeros((), np.int32),
  }
  history: dict[str, Any] = {"epochs": [], "epoch_seconds": [], "last_epoch_losses": None}
  checkpoints = train.Checkpoints(checkpoint_dir)
  start = 0
  if resume and checkpoints.latest_epoch() is not None:
    start = checkpoints.latest_epoch()
    state, extras, history = checkpoints.restore(start, state, extras)
    extras = jax.device_get(extras)
    log(f"{runs.name}: resumed after epoch {start}")
  steps = trainer.steps_per_epoch(device_data)
  progress = _Progress(runs.name, config.epochs * steps * runs.num_runs,
                       start * steps * runs.num_runs, quiet)  # fmt: skip
  probs = None  # the last epoch's test-set predictions
  reported_divergence = set(np.flatnonzero(np.asarray(state.diverged_at) >= 0).tolist())
  for epoch in range(start, config.epochs):
    started = time.perf_counter()
    with clock("train"):
      state, metrics = trainer.train_epoch(state, device_data, epoch, on_steps=progress.on_steps)
      jax.block_until_ready(state)
    history["epoch_seconds"].append((time.perf_counter() - started) / steps)
    with clock("score"):
      probs = predict(state.params, data.x_test)
    if spec.langevin and epoch >= config.epochs // 2:
      extras["posterior_sum"] = extras["posterior_sum"] + probs
      extras["snapshots"] = extras["snapshots"] + 1
    history["epochs"].append(
      [
        {
          "epoch": epoch + 1,
          "train_loss": _finite_or_none(np.nanmean(metrics["loss"][:, run])),
          "train_accuracy": _finite_or_none(np.nanmean(metrics["accuracy"][:, run])),
          **_scores(probs[run], data.y_test),
        }
        for run in range(runs.num_runs)
      ]
    )
    history["last_epoch_losses"] = metrics["loss"].T.tolist()
    for run in np.flatnonzero(np.asarray(state.diverged_at) >= 0):
      if run not in reported_divergence:
        reported_divergence.add(run)
        seed, lr, diffusion = runs.settings[run]
        log(
          f"{runs.name} (seed {seed}, lr {lr:g}, D {diffusion}) diverged at step "
          f"{int(state.diverged_at[run])}: non-finite loss; it keeps its last finite "
          "parameters and stops, the other runs go on"
        )
    with clock("checkpoint"):
      checkpoints.save(epoch + 1, state, extras, history)
  progress.close()
  checkpoints.close()
  # A run resumed after its last epoch has no fresh predictions of its own.
  with clock("score"):
    test_probs = probs if probs is not None else predict(state.params, data.x_test)
    train_probs = predict(state.params, data.x_train)
  return [
    _record(runs, run, state, extras, history, test_probs[run], train_probs[run], data, spec)
    for run in range(runs.num_runs)
  ]


def _record(runs, run, state, extras, history, test_probs, train_probs, data, spec) -> dict:
  seed, lr, diffusion = runs.settings[run]
  diverged_at = int(state.diverged_at[run])
  epoch_seconds = history["epoch_seconds"]
  losses = np.asarray(history["last_epoch_losses"][run], np.float64)
  posterior = None
  if spec.langevin and int(extras["snapshots"]) > 0:
    averaged = np.asarray(extras["posterior_sum"][run]) / int(extras["snapshots"])
    posterior = {**_scores(averaged, data.y_test), "snapshots": int(extras["snapshots"])}
  return {
    "optimizer": runs.name,
    "seed": seed,
    "learning_rate": lr,
    "diffusion": diffusion,
    "temperature": None if diffusion is None else diffusion * len(data.x_train),
    "status": "diverged" if diverged_at >= 0 else "ok",
    "diverged_at_step": diverged_at if diverged_at >= 0 else None,
    "epochs": [epoch[run] for epoch in history["epochs"]],
    "last_epoch_loss_std": _finite_or_none(np.nanstd(losses[np.isfinite(losses)]))
    if np.isfinite(losses).any()
    else None,
    "final": {
      **_scores(test_probs, data.y_test),
      "train_accuracy": report.accuracy(train_probs, data.y_train),
    },
    "posterior_average": posterior,
    # Per step of one run: programs carrying different numbers of runs (a
    # sweep's grid) compare fairly. The first epoch includes compilation:
    # leave it out when there are others.
    "step_time_s": float(np.median(epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds))
    / runs.num_runs,
  }


def _scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
  return {
    "test_accuracy": report.accuracy(probs, labels),
    "test_nll": _finite_or_none(report.negative_log_likelihood(probs, labels)),
    "test_ece": _finite_or_none(report.expected_calibration_error(probs, labels)),
  }


def _finite_or_none(value) -> float | None:
  value = float(value)
  return value if math.isfinite(value) else None


class _Progress:
  """A tqdm bar over an optimizer's run-steps, showing the latest mean loss and accuracy."""

  def __init__(self, name: str, total: int, done: int, quiet: bool):
    self._bar = tqdm(total=total, initial=done, desc=name, disable=quiet, unit="step")
    self._calls = 0

  def on_steps(self, count: int, metrics: dict[str, jax.Array]) -> None:
    if self._bar.disable:
      return
    self._bar.update(count * len(metrics["loss"]))
    self._calls += 1
    # Reading a value waits for the device: not after every step, but after every scanned epoch.
    if self._calls % 50 == 1 or count > 1:
      self._bar.set_postfix(
        loss=f"{float(jnp.nanmean(metrics['loss'])):.3f}",
        acc=f"{float(jnp.nanmean(metrics['accuracy'])):.3f}",
      )

  def close(self) -> None:
    self._bar.close()


def main_results(records: Sequence[dict], config: ComparisonConfig) -> list[dict]:
  """The runs at the default setting (the sweep's centre cell, or all runs without a sweep)."""
  return [
    r
    for r in records
    if math.isclose(r["learning_rate"], config.learning_rate)
    and (r["diffusion"] is None or math.isclose(r["diffusion"], config.diffusion))
  ]


def data_label(data: Dataset) -> str:
  """How reports name the data: the lossy JPEG copy is always labelled as such."""
  if data.source.startswith("tfds:"):
    return "CIFAR-10" if data.name == "cifar10" else data.name
  if "jpeg" in data.source.lower() or "jpg" in data.source.lower():
    return "CIFAR-10 (JPEG copy)"
  return f"{data.name} (local copy)"


def run_experiment(
  config: ComparisonConfig,
  data_source: str,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
  notes: Sequence[str] = (),
) -> dict[str, Any]:
  """Loads the data, trains every optimizer and writes the reports to ``out_dir``.

  ``notes`` are added to the report's setup section (say there what the
  numbers cannot show, e.g. that other jobs shared the machine).

  Writes ``report.json``, ``report.md``, ``curves.png`` and, with a sweep,
  ``sweep.png``, each atomically.

  Returns:
    The contents of ``report.json``.
  """
  from jaxdiff.data import load_dataset  # pylint: disable=g-import-not-at-top

  started = time.perf_counter()
  clock = PhaseClock()
  with clock("load"):
    data = load_dataset(data_source, name="cifar10" if data_source == "tfds" else None)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  records = run_comparison(config, data, out, resume=resume, quiet=quiet, clock=clock)
  train_size = config.train_size or len(data.x_train)
  # The rest of the wall time: the data's device copy, progress, this report's own writing.
  env = {**parallel.environment(), "wall_time_s": time.perf_counter() - started,
         "phase_seconds": {phase: round(s, 1) for phase, s in clock.seconds.items()},
         "date": time.strftime("%Y-%m-%d")}  # fmt: skip
  settings = {
    **dataclasses.asdict(config),
    "train_size": min(train_size, len(data.x_train)),
    "data": data.source,
    "learning_rates": {name: config.learning_rate for name in config.optimizers},
    "notes": [
      "All optimizers use the article's learning rate unless --lr says otherwise; the "
      "article's plain SGD at lr 0.001 barely moves in 10 epochs, which is why --sweep "
      "spans lr as well as D.",
      "Every optimizer starts each seed from the same parameters and sees the same data order.",
      *notes,
    ],
  }
  main_runs = main_results(records, config)
  summary = report.summarize(main_runs)
  sweep = report.summarize_sweep(records) if config.sweep else None
  label = data_label(data)
  result = {
    "config": settings,
    "environment": env,
    "data_label": label,
    "summary": summary,
    "sweep": sweep,
    "runs": records,
  }
  report.write_json(out / "report.json", result)
  report.write_text(out / "report.md", report.render_markdown(summary, settings, env, sweep, label))
  report.plot_curves(main_runs, out / "curves.png")
  if sweep is not None:
    report.plot_sweep(sweep, out / "sweep.png")
  return result
