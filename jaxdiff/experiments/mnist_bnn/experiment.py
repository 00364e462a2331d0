"""The benchmark on the shared classifier layer: tuning on held-out images, the seeds at the picked
rate, the cold-posterior curve, and the test images under rotation.

The last ``validation_size`` training images are held out and every run trains on the rest (N
images; the prior's ½‖θ‖²/(σ²N) and ``D = T/N`` use this N). Each group of runs is one
:func:`jaxdiff.classification.train_and_score`:

* **tuning** (a grid of two rates or more): one run per learning rate of the shared grid, all
  from the same parameters, data order and noise (a paired comparison), scored on the held-out
  images; the rate whose averaged predictive has the lowest validation NLL is picked. A method
  whose every tuning run diverged is a result (its row says so) and trains no seeds.
* **seeds**: the seeds at the picked rate, scored on the test set, at every rotation of
  ``shift_angles`` too.
* **temperatures**: the samplers of the cold-posterior curve rerun the same seeds at each other
  temperature of ``temperatures``, at the same rate.

Every run averages its predictive probabilities over the snapshots after burn-in (cSGLD: over
each cycle's sampling phase; with ``thin_steps``: every so many steps), SGD's included (an
ensemble along its trajectory), and is also scored at its final parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import classification, environment, files, langevin, parallel, posterior, tasks, train
from jaxdiff import config as config_lib
from jaxdiff import summaries as summaries_lib
from jaxdiff.checkpoint import check_no_checkpoints
from jaxdiff.classification import Evaluation, RunRecord
from jaxdiff.data import Dataset, load_dataset
from jaxdiff.experiments.mnist_bnn import plots, report
from jaxdiff.experiments.mnist_bnn.config import BnnConfig
from jaxdiff.experiments.mnist_bnn.registry import METHODS, RunPlan
from jaxdiff.keys import langevin_noise_key, seed_key
from jaxdiff.models import MLP, normalize_images
from jaxdiff.policy import ExecutionPolicy

NUM_CLASSES = 10
# The live series' folder under --out: `tensorboard --logdir <out>/summaries`.
SUMMARIES_DIR = "summaries"


# Stream 0 of the root (jaxdiff.keys has the seeds' streams); fixed, as it fixes a result.
def tuning_key(root: jax.Array) -> jax.Array:
  """The tuning runs' parameters, data order and noise: the same for every grid point."""
  return jax.random.fold_in(root, 0)


class Setup(NamedTuple):
  """What every group of runs shares."""

  mesh: jax.sharding.Mesh
  policy: ExecutionPolicy
  task: tasks.Task
  predict: Callable[[Any, np.ndarray], np.ndarray]
  train_data: dict[str, jax.Array]
  num_train: int


def held_out_split(data: Dataset, validation_size: int) -> tuple[Dataset, Evaluation]:
  """The training images without their last ``validation_size``, and those as an evaluation.

  Raises:
    ValueError: fewer than ``validation_size`` + 1 training images.
  """
  train_count = len(data.x_train) - validation_size
  if train_count <= 0:
    raise ValueError(
      f"{len(data.x_train)} training images leave none after holding out {validation_size}"
    )
  validation = Evaluation("validation", data.x_train[train_count:], data.y_train[train_count:])
  return data.take_train(np.arange(train_count)), validation


def run_plan(config: BnnConfig, epochs: int, steps_per_epoch: int) -> RunPlan:
  """The learning-rate plan of a run of ``epochs``: the seeds' cadence scaled to its length."""
  return RunPlan(
    total_steps=epochs * steps_per_epoch,
    lr_schedule=config.lr_schedule,
    halving_steps=max(1, round(config.halving_epochs(epochs) * steps_per_epoch)),
    cycles=config.cycles,
    exploration=config.exploration,
    burn_in_steps=config.burn_in_epochs(epochs) * steps_per_epoch,
  )


def snapshots_of(
  config: BnnConfig, name: str, epochs: int, steps_per_epoch: int
) -> posterior.SnapshotEpochs | posterior.SnapshotSteps:
  """After burn-in every epoch (or every ``thin_steps``); cSGLD: each cycle's sampling epochs.

  Raises:
    ValueError: a burn-in that is not a whole number of ``thin_steps``.
  """
  if METHODS[name].cyclical:
    cycle_length = epochs // config.cycles
    # The epochs that end inside the sampling phase: the ends of the cycle's last epochs
    # after its first ``exploration`` fraction.
    exploring_epochs = math.floor(cycle_length * config.exploration + 1e-9)
    return posterior.SnapshotEpochs(
      cycle_length=cycle_length, per_cycle=cycle_length - exploring_epochs
    )
  burn_in_epochs = config.burn_in_epochs(epochs)
  if config.thin_steps is None:
    return posterior.SnapshotEpochs(burn_in=burn_in_epochs)
  burn_in_steps = burn_in_epochs * steps_per_epoch
  if burn_in_steps % config.thin_steps:
    raise ValueError(f"a burn-in of {burn_in_steps} steps is not a multiple of --thin-steps "
                     f"{config.thin_steps}")  # fmt: skip
  return posterior.SnapshotSteps(burn_in=max(burn_in_steps, config.thin_steps),
                                        thin=config.thin_steps)  # fmt: skip


class Group(NamedTuple):
  """One group of ``name``'s runs: a key, a learning rate and a temperature per run."""

  name: str
  phase: str
  keys: jax.Array
  learning_rates: list[float]
  temperatures: list[float]
  seeds: list[int | None]
  epochs: int
  evaluation: Evaluation


def train_group(
  config: BnnConfig,
  setup: Setup,
  group: Group,
  checkpoint_dir: Path,
  *,
  resume: bool,
  quiet: bool,
  log: Callable[[str], None],
  clock: train.PhaseClock,
  summaries_dir: Path | None = None,
) -> list[RunRecord]:
  """Trains one vmapped group on :func:`jaxdiff.classification.train_and_score`; its records.

  With ``summaries_dir``, each run's training and test series go to its own TensorBoard run
  under ``summaries_dir/<phase>/<method>``.
  """
  spec = METHODS[group.name]
  steps_per_epoch = len(setup.train_data["label"]) // config.batch_size
  plan = run_plan(config, group.epochs, steps_per_epoch)
  trainer = train.Trainer(setup.task, spec.factory(plan), setup.mesh, config.batch_size,
                          setup.policy)  # fmt: skip
  diffusions = [langevin.diffusion_for_temperature(t, setup.num_train) for t in group.temperatures]
  hyperparams: dict[str, Any] = {"learning_rate": jnp.asarray(group.learning_rates, jnp.float32)}
  if spec.langevin:
    hyperparams["diffusion"] = jnp.asarray(diffusions, jnp.float32)
    hyperparams["key"] = jax.vmap(langevin_noise_key)(group.keys)
  state = trainer.init(group.keys, **hyperparams)
  run_names = [
    f"lr {lr:g}" + ("" if seed is None else f", seed {seed}") + (f", T {t:g}" if spec.langevin else "")
    for lr, seed, t in zip(group.learning_rates, group.seeds, group.temperatures)
  ]  # fmt: skip
  summaries = None
  if summaries_dir is not None:
    summaries = summaries_lib.Summaries(summaries_dir / group.phase / group.name, run_names)
  reporter = train.Reporter(f"{group.name} ({group.phase})", run_names, quiet, log,
                            summaries=summaries)  # fmt: skip
  try:
    scored = _train_and_score(config, setup, group, trainer, state, steps_per_epoch,
                              checkpoint_dir, resume, reporter, clock)  # fmt: skip
  finally:
    if summaries is not None:
      summaries.close()
  return [
    classification.run_record(
      run,
      method=group.name,
      phase=group.phase,
      seed=seed,
      learning_rate=lr,
      diffusion=d if spec.langevin else None,
      temperature=t if spec.langevin else None,
    )
    for run, lr, seed, t, d in zip(
      scored.runs, group.learning_rates, group.seeds, group.temperatures, diffusions
    )
  ]


def _train_and_score(config, setup, group, trainer, state, steps_per_epoch, checkpoint_dir,
                     resume, reporter, clock) -> classification.ScoredGroup:  # fmt: skip
  return classification.train_and_score(
    trainer, state, setup.train_data,
    train.Budget(epochs=group.epochs, steps_per_call=config.thin_steps),
    predict=setup.predict, evaluation=group.evaluation, num_classes=NUM_CLASSES,
    snapshots=snapshots_of(config, group.name, group.epochs, steps_per_epoch),
    # About a hundred checkpoints a run: a save per epoch of a 2 000-epoch chain would write
    # more than it trains.
    checkpointing=train.Checkpointing(checkpoint_dir, resume=resume,
                                      every_epochs=max(1, group.epochs // 100)),
    reporter=reporter, clock=clock,
  )  # fmt: skip


def pick_learning_rate(tuning_runs: list[RunRecord]) -> float | None:
  """The learning rate whose averaged predictive has the lowest validation NLL, or None.

  Diverged runs and runs without snapshots are not candidates; None means none is.
  """
  candidates = [
    run
    for run in tuning_runs
    if run["status"] == "ok" and run["averaged"] and run["averaged"]["nll"] is not None
  ]
  if not candidates:
    return None
  return min(candidates, key=lambda run: run["averaged"]["nll"])["learning_rate"]


class Benchmark(NamedTuple):
  """What :func:`run_benchmark` returns."""

  records: list[RunRecord]
  picked: dict[str, float | None]  # None: every tuning run diverged (or took no snapshot)
  num_train: int


def make_setup(config: BnnConfig, data: Dataset) -> Setup:
  """The mesh, policy, the prior's task and the predictor over ``data``'s training images."""
  num_train = len(data.x_train)
  mesh = parallel.make_data_mesh(config.batch_size, num_train)
  policy = ExecutionPolicy.for_mesh(mesh, convolution="none")  # the MLP has no convolutions
  model = MLP(num_classes=NUM_CLASSES)
  normalize = functools.partial(normalize_images, mean=0.0, std=1.0 / config.input_scale)
  likelihood = classification.classifier_task(model, data.image_shape, normalize=normalize)
  task = tasks.with_gaussian_prior(likelihood, num_train, config.prior_variance)
  predict = classification.make_predictor(model, mesh, policy=policy, normalize=normalize)
  train_data = parallel.replicate({"image": data.x_train, "label": data.y_train}, mesh)
  return Setup(mesh, policy, task, predict, train_data, num_train)


def run_benchmark(
  config: BnnConfig,
  data: Dataset,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
  log: Callable[[str], None] = print,
  clock: train.PhaseClock | None = None,
  summaries: bool = True,
) -> Benchmark:
  """Tunes every method's learning rate, trains its seeds, then the cold-posterior curve.

  Checkpoints go to ``out_dir/checkpoints/<phase>/<method>`` after every call of the engine;
  with ``resume`` each group continues from its latest checkpoint. With ``summaries``, every
  run's series go to ``out_dir/summaries/<phase>/<method>/<run>`` (TensorBoard event files and
  ``scalars.jsonl``), resumed runs appending to theirs.

  Raises:
    jaxdiff.checkpoint.CheckpointsExistError: not ``resume``, and ``out_dir`` holds
      checkpoints.
  """
  checkpoint_root = Path(out_dir) / "checkpoints"
  if not resume:  # before compiling anything
    check_no_checkpoints(checkpoint_root)
  clock = clock or train.PhaseClock()
  if data.num_classes != NUM_CLASSES:
    raise ValueError(f"the benchmark classifies 10 digits, the data has {data.num_classes}")
  train_split, validation = held_out_split(data, config.validation_size)
  test = Evaluation("test", data.x_test, data.y_test, tuple(config.shift_angles))
  setup = make_setup(config, train_split)
  root = jax.random.key(config.seed)
  seeds = list(range(config.first_seed, config.first_seed + config.seeds))
  seed_keys = jnp.stack([seed_key(root, seed) for seed in seeds])
  grid = list(config.learning_rates)
  train_one = functools.partial(
    train_group, config, setup, resume=resume, quiet=quiet, log=log, clock=clock,
    summaries_dir=Path(out_dir) / SUMMARIES_DIR if summaries else None,
  )  # fmt: skip
  records: list[RunRecord] = []
  picked: dict[str, float | None] = {}
  for name in config.methods:
    if config.tuned:
      tuning = Group(name, "tuning", jnp.stack([tuning_key(root)] * len(grid)), grid,
                     [config.temperature] * len(grid), [None] * len(grid),
                     config.run_tuning_epochs, validation)  # fmt: skip
      tuning_runs = train_one(tuning, checkpoint_root / "tuning" / name)
      records += tuning_runs
      picked[name] = pick_learning_rate(tuning_runs)
    else:
      picked[name] = grid[0]
    if picked[name] is None:
      log(f"{name}: every tuning run diverged or took no snapshot; no seeds are trained")
      continue
    if config.tuned:
      log(f"{name}: picked lr {picked[name]:g} by validation NLL of the averaged predictive")
    lrs = [picked[name]] * len(seeds)
    seed_group = Group(name, "seeds", seed_keys, lrs, [config.temperature] * len(seeds), seeds,
                       config.epochs, test)  # fmt: skip
    records += train_one(seed_group, checkpoint_root / "seeds" / name)
  for name in config.cold_methods:
    others = [t for t in config.temperatures if t != config.temperature]
    if picked[name] is None or not others:
      continue
    runs = [(t, seed) for t in others for seed in seeds]
    cold = Group(name, "temperatures", jnp.stack([seed_key(root, seed) for _, seed in runs]),
                 [picked[name]] * len(runs), [t for t, _ in runs], [seed for _, seed in runs],
                 config.epochs, test._replace(angles=()))  # fmt: skip
    records += train_one(cold, checkpoint_root / "temperatures" / name)
  return Benchmark(records, picked, setup.num_train)


def rerun_command(
  config: BnnConfig, data_source: str, out_dir: str | Path, *, summaries: bool = True
) -> str:
  """The command line that runs ``config`` again: the CLI with its preset and every other flag."""
  return config_lib.rerun_command("experiments/mnist_bnn.py", config, data_source, out_dir,
                                  summaries=summaries)  # fmt: skip


def run_experiment(
  config: BnnConfig,
  data_source: str,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
  summaries: bool = True,
) -> dict[str, Any]:
  """Loads the data, runs the benchmark and writes the reports to ``out_dir``.

  Writes ``report.json``, ``report.md`` and the figures of :func:`write_reports`, each
  atomically, and with ``summaries`` the live series of :func:`run_benchmark`.

  Returns:
    The contents of ``report.json``.
  """
  started = time.perf_counter()
  clock = train.PhaseClock()
  with clock("load"):
    data = load_dataset(data_source, name="mnist" if data_source == "tfds" else None)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  benchmark = run_benchmark(config, data, out, resume=resume, quiet=quiet, clock=clock,
                            summaries=summaries)  # fmt: skip
  env = environment.describe_run(started, clock.seconds)
  tuning_runs = [run for run in benchmark.records if run["phase"] == "tuning"]
  result = {
    "config": dataclasses.asdict(config),
    "command": rerun_command(config, data_source, out_dir, summaries=summaries),
    "summaries": SUMMARIES_DIR if summaries else None,
    "data": {"source": data.source, "label": data.label, "train_images": benchmark.num_train,
             "validation_images": config.validation_size, "test_images": len(data.y_test)},
    "protocol": report.describe_protocol(config, benchmark.num_train),
    "environment": env,
    "tuning": {
      "grid": list(config.learning_rates),
      "tuned": config.tuned,
      "epochs": config.run_tuning_epochs,
      "criterion": "lowest validation NLL of the averaged predictive",
      "picked": benchmark.picked,
      "table": report.tuning_table(tuning_runs),
    },
    **report.score_runs(benchmark.records, benchmark.picked),
    "runs": benchmark.records,
  }  # fmt: skip
  write_reports(result, out)
  return result


def write_reports(result: dict[str, Any], out_dir: str | Path) -> None:
  """report.json, report.md and the figures of ``result`` (run_experiment's), atomically."""
  out = Path(out_dir)
  seed_runs = [run for run in result["runs"] if run["phase"] == "seeds"]
  files.write_json(out / "report.json", result)
  files.write_text(out / "report.md", report.render_markdown(result))
  if result["tuning"]["tuned"]:
    plots.plot_tuning(result["tuning"]["table"], out / "tuning.png")
  if seed_runs:  # none where every method's tuning diverged
    plots.plot_scores(result["summary"], out / "scores.png")
    plots.plot_curves(seed_runs, out / "curves.png")
  if result["cold_posterior"]:
    plots.plot_cold_posterior(result["cold_posterior"], out / "cold_posterior.png")
  if result["shift"]:
    plots.plot_shift(result["shift"], out / "shift.png")
