"""The benchmark on the fit loop: each method's learning rate tuned on held-out images, then
its seeds at the picked rate, scored on the test set.

The last ``validation_size`` training images are held out and every run trains on the rest
(N images; the prior's ½‖θ‖²/(σ²N) and ``D = T/N`` use this N). For each method one vmapped
group trains one run per learning rate of the shared grid (all from the same parameters, data
order and noise, so the grid is a paired comparison), and the rate whose averaged predictive
has the lowest validation NLL is picked; then a second group trains the seeds at that rate
and is scored on the test set. Every run averages its predictive probabilities over the
snapshots after burn-in (cSGLD: over each cycle's sampling phase), SGD's included (an
ensemble along its trajectory), and is also scored at its final parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import shlex
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypedDict

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import (
  classification,
  environment,
  files,
  langevin,
  metrics,
  parallel,
  posterior,
  tasks,
  train,
)
from jaxdiff.checkpoint import check_no_checkpoints
from jaxdiff.data import Dataset, load_dataset
from jaxdiff.experiments.mnist_bnn import report
from jaxdiff.experiments.mnist_bnn.config import BnnConfig
from jaxdiff.experiments.mnist_bnn.registry import METHODS, Schedule
from jaxdiff.keys import langevin_noise_key, seed_key
from jaxdiff.models import MLP, normalize_images
from jaxdiff.policy import ExecutionPolicy

# Pixels in [0, 1], the benchmark's usual input.
normalize_pixels = functools.partial(normalize_images, mean=0.0, std=1.0)


# Stream 0 of the root (jaxdiff.keys has the seeds' streams); fixed, as it fixes a result.
def tuning_key(root: jax.Array) -> jax.Array:
  """The tuning runs' parameters, data order and noise: the same for every grid point."""
  return jax.random.fold_in(root, 0)


class Scores(TypedDict):
  """:func:`jaxdiff.metrics.classification_scores` of one predictive (None: not finite)."""

  accuracy: float | None
  error: float | None
  nll: float | None
  ece: float | None
  brier: float | None


class EpochRecord(TypedDict):
  epoch: int  # 1-based
  train_loss: float | None  # the mean loss with the prior term, over the epoch's steps
  error: float | None  # of the epoch's final parameters on the evaluation images
  nll: float | None


class RunRecord(TypedDict):
  """One run's results, as report.json stores them and :mod:`.report` reads them."""

  method: str
  phase: str  # "tuning" (scored on the validation images) or "seeds" (on the test set)
  seed: int | None  # None for tuning runs
  learning_rate: float
  diffusion: float | None
  temperature: float | None
  status: str  # "ok" or "diverged"
  diverged_at_step: int | None
  snapshots: int
  averaged: Scores | None  # the predictive averaged over the snapshots
  final: Scores  # the final parameters' predictive
  epochs: list[EpochRecord]
  epoch_time_s: float  # per epoch of one run, the first epoch (compilation) left out


class Setup(NamedTuple):
  """What every training group shares."""

  mesh: jax.sharding.Mesh
  policy: ExecutionPolicy
  task: tasks.Task
  predict: Callable[[Any, np.ndarray], np.ndarray]
  train_data: dict[str, jax.Array]
  num_train: int
  diffusion: float


class EvalSet(NamedTuple):
  name: str  # "validation" or "test"
  images: np.ndarray
  labels: np.ndarray


def held_out_split(data: Dataset, validation_size: int) -> tuple[Dataset, EvalSet]:
  """The training images without their last ``validation_size``, and those as a split.

  Raises:
    ValueError: fewer than ``validation_size`` + 1 training images.
  """
  train_count = len(data.x_train) - validation_size
  if train_count <= 0:
    raise ValueError(
      f"{len(data.x_train)} training images leave none after holding out {validation_size}"
    )
  validation = EvalSet("validation", data.x_train[train_count:], data.y_train[train_count:])
  return data.take_train(np.arange(train_count)), validation


def snapshot_schedule(config: BnnConfig, name: str, epochs: int) -> posterior.SnapshotSchedule:
  """After burn-in every epoch; cSGLD: the epochs ending in each cycle's sampling phase."""
  if METHODS[name].cyclical:
    cycle_length = epochs // config.cycles
    # The epochs that end inside the sampling phase: the ends of the cycle's last epochs
    # after its first ``exploration`` fraction.
    exploring_epochs = math.floor(cycle_length * config.exploration + 1e-9)
    return posterior.SnapshotSchedule(
      cycle_length=cycle_length, per_cycle=cycle_length - exploring_epochs
    )
  return posterior.SnapshotSchedule(burn_in=config.burn_in_epochs(epochs))


def train_group(
  config: BnnConfig,
  setup: Setup,
  name: str,
  *,
  phase: str,
  keys: jax.Array,
  learning_rates: list[float],
  seeds: list[int | None],
  epochs: int,
  evaluation: EvalSet,
  checkpoint_dir: Path,
  resume: bool,
  quiet: bool,
  log: Callable[[str], None],
  clock: train.PhaseClock,
) -> list[RunRecord]:
  """Trains one vmapped group of ``name``'s runs on the fit loop and scores each on ``evaluation``.

  Runs differ in their key and learning rate (one of each per run).
  """
  spec = METHODS[name]
  steps_per_epoch = len(setup.train_data["label"]) // config.batch_size
  schedule = Schedule(
    total_steps=epochs * steps_per_epoch,
    halving_steps=max(1, round(config.halving_epochs(epochs) * steps_per_epoch)),
    cycles=config.cycles,
    exploration=config.exploration,
    burn_in_steps=config.burn_in_epochs(epochs) * steps_per_epoch,
  )
  trainer = train.Trainer(
    setup.task, spec.factory(schedule), setup.mesh, config.batch_size, setup.policy
  )
  hyperparams: dict[str, Any] = {"learning_rate": jnp.asarray(learning_rates, jnp.float32)}
  if spec.langevin:
    hyperparams["diffusion"] = jnp.float32(setup.diffusion)
    hyperparams["key"] = jax.vmap(langevin_noise_key)(keys)
  state = trainer.init(keys, **hyperparams)
  num_runs = len(learning_rates)
  average = posterior.averaging_hook(
    setup.predict, evaluation.images, snapshot_schedule(config, name, epochs)
  )

  def score_epoch(end: train.EpochEnd) -> train.HookCarry:
    if not end.complete:
      return end.carry
    probs = setup.predict(end.state.params, evaluation.images)
    scores = [_epoch_record(end, run, probs[run], evaluation.labels) for run in range(num_runs)]
    return end.carry.extend("epochs", [scores])

  average_and_score = train.chain_hooks(average, score_epoch)

  def on_epoch_end(end: train.EpochEnd) -> train.HookCarry:
    with clock("score"):  # the averaging's predictions too
      return average_and_score(end)

  run_names = [f"lr {lr:g}" + ("" if seed is None else f", seed {seed}")
               for lr, seed in zip(learning_rates, seeds)]  # fmt: skip
  initial = {"posterior": posterior.init_average(num_runs, len(evaluation.labels), 10)}
  state, carry, calls = train.fit(
    trainer, state, setup.train_data, train.Budget(epochs=epochs), on_epoch_end=on_epoch_end,
    carry=train.HookCarry(arrays=initial),
    checkpointing=train.Checkpointing(checkpoint_dir, resume=resume),
    reporter=train.Reporter(f"{name} ({phase})", run_names, quiet, log), clock=clock,
  )  # fmt: skip
  with clock("score"):
    final_probs = setup.predict(state.params, evaluation.images)
  snapshots = carry.arrays["posterior"]
  averaged_probs = posterior.averaged_probs(snapshots) if int(snapshots.count) else None
  seconds = [call.seconds for call in calls if call.steps == steps_per_epoch]
  epoch_time = float(np.median(seconds[1:] or seconds)) / num_runs if seconds else math.nan
  records = []
  for run, (lr, seed) in enumerate(zip(learning_rates, seeds)):
    diverged_at = int(state.diverged_at[run])
    records.append(
      RunRecord(
        method=name,
        phase=phase,
        seed=seed,
        learning_rate=lr,
        diffusion=setup.diffusion if spec.langevin else None,
        temperature=config.temperature if spec.langevin else None,
        status="diverged" if diverged_at >= 0 else "ok",
        diverged_at_step=diverged_at if diverged_at >= 0 else None,
        snapshots=int(snapshots.count),
        averaged=None
        if averaged_probs is None
        else _scores(averaged_probs[run], evaluation.labels),
        final=_scores(final_probs[run], evaluation.labels),
        epochs=[epoch[run] for epoch in carry.records.get("epochs", [])],
        epoch_time_s=epoch_time,
      )
    )
  return records


def pick_learning_rate(tuning_runs: list[RunRecord]) -> float:
  """The learning rate whose averaged predictive has the lowest validation NLL.

  Diverged runs and runs without snapshots are not candidates.

  Raises:
    ValueError: no run is a candidate.
  """
  candidates = [
    run
    for run in tuning_runs
    if run["status"] == "ok" and run["averaged"] and run["averaged"]["nll"] is not None
  ]
  if not candidates:
    method = tuning_runs[0]["method"] if tuning_runs else "?"
    raise ValueError(f"{method}: every tuning run diverged or took no snapshot")
  return min(candidates, key=lambda run: run["averaged"]["nll"])["learning_rate"]


def run_benchmark(
  config: BnnConfig,
  data: Dataset,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
  log: Callable[[str], None] = print,
  clock: train.PhaseClock | None = None,
) -> tuple[list[RunRecord], dict[str, float], int]:
  """Tunes every method's learning rate, then trains its seeds.

  Checkpoints go to ``out_dir/checkpoints/{tuning,seeds}/<method>`` after every epoch; with
  ``resume`` each group continues from its latest checkpoint.

  Returns:
    ``(records of every run, picked learning rate per method, N training images)``.

  Raises:
    jaxdiff.checkpoint.CheckpointsExistError: not ``resume``, and ``out_dir`` holds
      checkpoints.
  """
  checkpoint_root = Path(out_dir) / "checkpoints"
  if not resume:  # before compiling anything
    check_no_checkpoints(checkpoint_root)
  clock = clock or train.PhaseClock()
  if data.num_classes != 10:
    raise ValueError(f"the benchmark classifies 10 digits, the data has {data.num_classes}")
  train_split, validation = held_out_split(data, config.validation_size)
  test = EvalSet("test", data.x_test, data.y_test)
  num_train = len(train_split.x_train)
  mesh = parallel.make_data_mesh(config.batch_size, num_train)
  policy = ExecutionPolicy.for_mesh(mesh, convolution="none")
  model = MLP(num_classes=data.num_classes)
  likelihood = classification.classifier_task(model, data.image_shape, normalize=normalize_pixels)
  task = tasks.with_gaussian_prior(likelihood, num_train, config.prior_variance)
  predict = classification.make_predictor(model, mesh, policy=policy, normalize=normalize_pixels)
  train_data = parallel.replicate(
    {"image": train_split.x_train, "label": train_split.y_train}, mesh
  )
  diffusion = langevin.diffusion_for_temperature(config.temperature, num_train)
  setup = Setup(mesh, policy, task, predict, train_data, num_train, diffusion)
  root = jax.random.key(config.seed)
  grid = list(config.learning_rates)
  group = functools.partial(train_group, config, setup, resume=resume, quiet=quiet, log=log,
                            clock=clock)  # fmt: skip
  records: list[RunRecord] = []
  picked: dict[str, float] = {}
  for name in config.methods:
    tuning = group(
      name, phase="tuning", keys=jnp.stack([tuning_key(root)] * len(grid)), learning_rates=grid,
      seeds=[None] * len(grid), epochs=config.run_tuning_epochs, evaluation=validation,
      checkpoint_dir=checkpoint_root / "tuning" / name,
    )  # fmt: skip
    picked[name] = pick_learning_rate(tuning)
    log(f"{name}: picked lr {picked[name]:g} by validation NLL of the averaged predictive")
    seeds = list(range(config.seeds))
    records += tuning + group(
      name, phase="seeds", keys=jnp.stack([seed_key(root, seed) for seed in seeds]),
      learning_rates=[picked[name]] * len(seeds), seeds=seeds, epochs=config.epochs,
      evaluation=test, checkpoint_dir=checkpoint_root / "seeds" / name,
    )  # fmt: skip
  return records, picked, num_train


def rerun_command(config: BnnConfig, data_source: str, out_dir: str | Path) -> str:
  """The command line that runs ``config`` again: the CLI with every non-default flag."""
  words = ["python", "experiments/mnist_bnn.py", "--data", data_source, "--out", str(out_dir)]
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if value == field.default:
      continue
    flag = "--" + (field.metadata.get("flag") or field.name.replace("_", "-"))
    if field.metadata.get("repeatable"):
      words += [part for item in value for part in (flag, str(item))]
    elif isinstance(value, tuple):
      words += [flag, ",".join(map(str, value))]
    else:
      words += [flag, str(value)]
  return shlex.join(words)


def _epoch_record(end: train.EpochEnd, run: int, probs: np.ndarray, labels) -> EpochRecord:
  losses = end.metrics["loss"][:, run]
  finite_losses = losses[np.isfinite(losses)]  # none once the run has diverged
  return EpochRecord(
    epoch=end.epoch + 1,
    train_loss=float(finite_losses.mean()) if finite_losses.size else None,
    error=metrics.finite_or_none(1.0 - metrics.accuracy(probs, labels)),
    nll=metrics.finite_or_none(metrics.negative_log_likelihood(probs, labels)),
  )


def _scores(probs: np.ndarray, labels: np.ndarray) -> Scores:
  scores = metrics.classification_scores(probs, labels)
  return Scores(**{name: metrics.finite_or_none(value) for name, value in scores.items()})


def run_experiment(
  config: BnnConfig,
  data_source: str,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
) -> dict[str, Any]:
  """Loads the data, runs the benchmark and writes the reports to ``out_dir``.

  Writes ``report.json``, ``report.md``, ``scores.png``, ``tuning.png`` and ``curves.png``,
  each atomically.

  Returns:
    The contents of ``report.json``.
  """
  started = time.perf_counter()
  clock = train.PhaseClock()
  with clock("load"):
    data = load_dataset(data_source, name="mnist" if data_source == "tfds" else None)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  records, picked, num_train = run_benchmark(config, data, out, resume=resume, quiet=quiet,
                                             clock=clock)  # fmt: skip
  env = environment.describe_run(started, clock.seconds)
  seed_runs = [run for run in records if run["phase"] == "seeds"]
  tuning_runs = [run for run in records if run["phase"] == "tuning"]
  result = {
    "config": dataclasses.asdict(config),
    "command": rerun_command(config, data_source, out_dir),
    "data": {"source": data.source, "label": data.label, "train_images": num_train,
             "validation_images": config.validation_size, "test_images": len(data.y_test)},
    "protocol": report.describe_protocol(config, num_train),
    "environment": env,
    "tuning": {
      "grid": list(config.learning_rates),
      "epochs": config.run_tuning_epochs,
      "criterion": "lowest validation NLL of the averaged predictive",
      "picked": picked,
      "table": report.tuning_table(tuning_runs),
    },
    "summary": report.summarize(seed_runs),
    "runs": records,
  }  # fmt: skip
  write_reports(result, out)
  return result


def write_reports(result: dict[str, Any], out_dir: str | Path) -> None:
  """report.json, report.md and the figures of ``result`` (run_experiment's), atomically."""
  out = Path(out_dir)
  seed_runs = [run for run in result["runs"] if run["phase"] == "seeds"]
  files.write_json(out / "report.json", result)
  files.write_text(out / "report.md", report.render_markdown(result))
  report.plot_scores(result["summary"], out / "scores.png")
  report.plot_tuning(result["tuning"]["table"], out / "tuning.png")
  report.plot_curves(seed_runs, out / "curves.png")
