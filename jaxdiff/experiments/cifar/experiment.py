"""The seed article's optimizer comparison on CIFAR-10, trained on the fit loop.

For each optimizer, every seed (and, with a sweep, every learning rate and
diffusion on the grid) is one run of a single vmapped program. All optimizers
share the seeds' initial parameters and data orders, so differences between
them are paired. After each epoch the test set is scored; Langevin runs also
average their predictive probabilities over the epochs of the last half of
training (the posterior average, how SGLD is meant to be used).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import classification, environment, files, metrics, parallel, posterior, train
from jaxdiff.checkpoint import check_no_checkpoints
from jaxdiff.data import Dataset, load_dataset
from jaxdiff.experiments.cifar import plots, report
from jaxdiff.experiments.cifar.config import ComparisonConfig
from jaxdiff.experiments.cifar.registry import OPTIMIZERS, is_langevin
from jaxdiff.keys import langevin_noise_key, seed_key
from jaxdiff.models import SimpleCNN
from jaxdiff.policy import ExecutionPolicy


# Stream 0 of the root (jaxdiff.keys has the seeds' streams); fixed, as it fixes a result.
def subset_key(root: jax.Array) -> jax.Array:
  """The shuffle that picks ``--train-size`` training images."""
  return jax.random.fold_in(root, 0)


class RunSetting(NamedTuple):
  """One run of an optimizer: a seed and a point of the (learning rate, D) grid."""

  seed: int
  learning_rate: float
  diffusion: float | None

  def describe(self) -> str:
    noise = "" if self.diffusion is None else f", D {self.diffusion:g}"
    return f"seed {self.seed}, lr {self.learning_rate:g}{noise}"


class Scores(TypedDict):
  test_accuracy: float
  test_nll: float | None
  test_ece: float | None


class RunRecord(TypedDict):
  """One run's results, as report.json stores them and :mod:`.report` reads them."""

  optimizer: str
  seed: int
  learning_rate: float
  diffusion: float | None
  temperature: float | None
  status: str  # "ok" or "diverged"
  diverged_at_step: int | None
  epochs: list[dict[str, Any]]  # per epoch: epoch, train_loss, train_accuracy and Scores
  last_epoch_loss_std: float | None
  final: dict[str, Any]  # Scores and train_accuracy of the final parameters
  posterior_average: dict[str, Any] | None  # Scores of the averaged predictions, snapshots
  step_time_s: float  # per step of one run, the first epoch (compilation) left out


def run_settings(config: ComparisonConfig, name: str, num_examples: int) -> list[RunSetting]:
  """The runs of optimizer ``name``: every seed at every grid point."""
  grid = config.grid(name, num_examples)
  return [RunSetting(seed, lr, d) for seed in range(config.seeds) for lr, d in grid]


def training_subset(data: Dataset, train_size: int | None, key: jax.Array) -> Dataset:
  """The first ``train_size`` training images after a shuffle fixed by ``key``.

  The shuffle also undoes class-sorted sources (the CIFAR JPEG copy is sorted).
  """
  order = np.asarray(jax.random.permutation(key, len(data.x_train)))
  return data.take_train(order[:train_size])


def run_comparison(
  config: ComparisonConfig,
  data: Dataset,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
  log: Callable[[str], None] = print,
  clock: train.PhaseClock | None = None,
) -> list[RunRecord]:
  """Trains every optimizer of ``config`` and returns one record per run.

  Checkpoints go to ``out_dir/checkpoints/<optimizer>`` after every epoch;
  with ``resume`` each optimizer continues from its latest checkpoint.
  ``clock``, if given, sums the wall seconds spent compiling, training,
  scoring and checkpointing.

  Raises:
    jaxdiff.checkpoint.CheckpointsExistError: not ``resume``, and ``out_dir`` holds
      checkpoints.
  """
  checkpoint_root = Path(out_dir) / "checkpoints"
  if not resume:  # before compiling anything
    check_no_checkpoints(checkpoint_root)
  clock = clock or train.PhaseClock()
  root = jax.random.key(config.seed)
  data = training_subset(data, config.train_size, subset_key(root))
  mesh = parallel.make_data_mesh(config.batch_size, len(data.x_train))
  policy = ExecutionPolicy.for_mesh(mesh, convolution="auto", loop=config.loop)
  model = SimpleCNN(num_classes=data.num_classes, convolution=policy.convolution)
  task = classification.classifier_task(model, data.image_shape)
  predict = classification.make_predictor(model, mesh, policy=policy)
  settings = {name: run_settings(config, name, len(data.x_train)) for name in config.optimizers}
  total_steps = config.epochs * (len(data.x_train) // config.batch_size)
  trainers = {
    name: train.Trainer(
      task, OPTIMIZERS[name].for_budget(total_steps, config.cycles), mesh, config.batch_size, policy
    )  # fmt: skip
    for name in config.optimizers
  }
  device_data = next(iter(trainers.values())).put_data(
    {"image": data.x_train, "label": data.y_train}
  )
  with clock("compile"):
    # The trainers share the compiled parameter initialisation: one after another, only the
    # first compiles it.
    states = {
      name: _initial_state(name, settings[name], trainer, root)
      for name, trainer in trainers.items()
    }
    # Compiling is most of a short comparison's time; the optimizers' programs compile at once.
    with ThreadPoolExecutor(len(trainers)) as pool:
      list(pool.map(lambda n: trainers[n].compile(states[n], device_data), config.optimizers))
  records = []
  for name in config.optimizers:
    records += _train_optimizer(
      config, name, settings[name], trainers[name], states[name], predict, data, device_data,
      checkpoint_root / name, resume=resume, quiet=quiet, log=log, clock=clock,
    )  # fmt: skip
  return records


def _initial_state(
  name: str, settings: list[RunSetting], trainer: train.Trainer, root: jax.Array
) -> train.TrainState:
  """The runs' initial state: each seed starts from the same parameters with every optimizer."""
  seed_keys = jnp.stack([seed_key(root, setting.seed) for setting in settings])
  hyperparams = {"learning_rate": jnp.asarray([s.learning_rate for s in settings], jnp.float32)}
  if is_langevin(name):
    hyperparams["diffusion"] = jnp.asarray([s.diffusion for s in settings], jnp.float32)
    hyperparams["key"] = jax.vmap(langevin_noise_key)(seed_keys)
  return trainer.init(seed_keys, **hyperparams)


def _train_optimizer(config, name, settings, trainer, state, predict, data, device_data,
                     checkpoint_dir, *, resume, quiet, log, clock) -> list[RunRecord]:  # fmt: skip
  langevin = is_langevin(name)
  num_runs = len(settings)
  # The test-set predictions of the last half's epochs, averaged: the posterior average.
  average = posterior.init_average(num_runs, len(data.x_test), data.num_classes)
  # Cyclical samplers: the last epoch of each cycle, in its sampling phase.
  snapshots = (
    posterior.SnapshotSchedule(cycle_length=config.epochs // config.cycles)
    if OPTIMIZERS[name].cyclical
    else posterior.SnapshotSchedule(burn_in=config.epochs // 2)
  )
  latest_probs = []  # the last epoch's test-set predictions

  def score_epoch(end: train.EpochEnd) -> train.HookCarry:
    with clock("score"):
      probs = predict(end.state.params, data.x_test)
    latest_probs[:] = [probs]
    carry = end.carry
    if langevin and snapshots.takes(end.epoch):
      with_snapshot = posterior.add_snapshot(carry.arrays["posterior"], probs)
      carry = carry.with_array("posterior", with_snapshot)
    epoch_records = [
      {
        "epoch": end.epoch + 1,
        "train_loss": metrics.finite_or_none(np.nanmean(end.metrics["loss"][:, run])),
        "train_accuracy": metrics.finite_or_none(np.nanmean(end.metrics["accuracy"][:, run])),
        **_scores(probs[run], data.y_test),
      }
      for run in range(num_runs)
    ]
    carry = carry.extend("epochs", [epoch_records])
    return carry.with_record("last_epoch_losses", end.metrics["loss"].T.tolist())

  state, carry, calls = train.fit(
    trainer, state, device_data, train.Budget(epochs=config.epochs), on_epoch_end=score_epoch,
    carry=train.HookCarry(arrays={"posterior": average}),
    checkpointing=train.Checkpointing(checkpoint_dir, resume=resume),
    reporter=train.Reporter(name, [setting.describe() for setting in settings], quiet, log),
    clock=clock,
  )  # fmt: skip
  # A run resumed after its last epoch has no fresh predictions of its own.
  with clock("score"):
    test_probs = latest_probs[0] if latest_probs else predict(state.params, data.x_test)
    train_probs = predict(state.params, data.x_train)
  epoch_seconds = [call.seconds / call.steps for call in calls]
  # Per step of one run: programs carrying different numbers of runs (a sweep's grid) compare
  # fairly. The first epoch includes compilation: leave it out when there are others.
  step_time = float(np.median(epoch_seconds[1:] or epoch_seconds)) / num_runs
  average = carry.arrays["posterior"]
  snapshots = int(average.count) if langevin else 0
  averaged = posterior.averaged_probs(average) if snapshots else None
  return [
    _record(
      name,
      setting,
      run,
      state,
      carry.records,
      test_probs[run],
      train_probs[run],
      None if averaged is None else averaged[run],
      snapshots,
      data,
      step_time,
    )  # fmt: skip
    for run, setting in enumerate(settings)
  ]


def _record(name, setting, run, state, records, test_probs, train_probs, averaged_probs,
            snapshots, data, step_time) -> RunRecord:  # fmt: skip
  diverged_at = int(state.diverged_at[run])
  losses = np.asarray(records["last_epoch_losses"][run], np.float64)
  posterior_scores = None
  if averaged_probs is not None:
    posterior_scores = {**_scores(averaged_probs, data.y_test), "snapshots": snapshots}
  finite_losses = losses[np.isfinite(losses)]
  return RunRecord(
    optimizer=name,
    seed=setting.seed,
    learning_rate=setting.learning_rate,
    diffusion=setting.diffusion,
    temperature=None if setting.diffusion is None else setting.diffusion * len(data.x_train),
    status="diverged" if diverged_at >= 0 else "ok",
    diverged_at_step=diverged_at if diverged_at >= 0 else None,
    epochs=[epoch[run] for epoch in records["epochs"]],
    last_epoch_loss_std=metrics.finite_or_none(np.std(finite_losses))
    if finite_losses.size
    else None,
    final={
      **_scores(test_probs, data.y_test),
      "train_accuracy": metrics.accuracy(train_probs, data.y_train),
    },
    posterior_average=posterior_scores,
    step_time_s=step_time,
  )


def _scores(probs: np.ndarray, labels: np.ndarray) -> Scores:
  return Scores(
    test_accuracy=metrics.accuracy(probs, labels),
    test_nll=metrics.finite_or_none(metrics.negative_log_likelihood(probs, labels)),
    test_ece=metrics.finite_or_none(metrics.expected_calibration_error(probs, labels)),
  )


def main_results(
  records: Sequence[RunRecord], config: ComparisonConfig, num_examples: int
) -> list[RunRecord]:
  """The runs at the main setting: the sweep's centre cell, the main temperature, or all."""
  diffusion = config.main_diffusion(num_examples)
  return [
    r
    for r in records
    if math.isclose(r["learning_rate"], config.learning_rate)
    and (r["diffusion"] is None or math.isclose(r["diffusion"], diffusion))
  ]


def run_experiment(
  config: ComparisonConfig,
  data_source: str,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
  summaries: bool = True,
) -> dict[str, Any]:
  """Loads the data, trains every optimizer and writes the reports to ``out_dir``.

  Writes ``report.json``, ``report.md``, ``curves.png``, with a sweep ``sweep.png`` and with
  temperatures ``cold_posterior.png``, each atomically.

  Returns:
    The contents of ``report.json``.
  """
  del summaries  # not written yet by this experiment (issue 35)
  started = time.perf_counter()
  clock = train.PhaseClock()
  with clock("load"):
    data = load_dataset(data_source, name="cifar10" if data_source == "tfds" else None)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  records = run_comparison(config, data, out, resume=resume, quiet=quiet, clock=clock)
  train_size = config.train_size or len(data.x_train)
  # The rest of the wall time: the data's device copy, progress, this report's own writing.
  env = environment.describe_run(started, clock.seconds)
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
      *config.notes,
    ],
  }
  main_runs = main_results(records, config, settings["train_size"])
  summary = report.summarize(main_runs)
  sweep = report.summarize_sweep(records) if config.sweep else None
  cold_posterior = report.summarize_temperatures(records) if config.temperatures else None
  result = {
    "config": settings,
    "environment": env,
    "data_label": data.label,
    "summary": summary,
    "sweep": sweep,
    "cold_posterior": cold_posterior,
    "runs": records,
  }
  files.write_json(out / "report.json", result)
  markdown = report.render_markdown(summary, settings, env, sweep, data.label, cold_posterior)
  files.write_text(out / "report.md", markdown)
  plots.plot_curves(main_runs, out / "curves.png")
  if sweep is not None:
    plots.plot_sweep(sweep, out / "sweep.png")
  if cold_posterior is not None:
    plots.plot_cold_posterior(cold_posterior, out / "cold_posterior.png")
  return result
