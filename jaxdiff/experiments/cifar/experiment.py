"""The seed article's optimizer comparison on CIFAR-10, on the shared classifier layer.

For each optimizer, every seed (and, with a sweep, every learning rate and diffusion on the
grid) is one run of a single vmapped program, one :func:`jaxdiff.classification.train_and_score`.
All optimizers share the seeds' initial parameters and data orders, so differences between them
are paired. After each epoch the test set is scored; Langevin runs also average their predictive
probabilities over the epochs of the last half of training (cyclical samplers: each cycle's last
epoch), the posterior average, how SGLD is meant to be used.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import classification, environment, files, parallel, posterior, train
from jaxdiff import config as config_lib
from jaxdiff.checkpoint import check_no_checkpoints
from jaxdiff.classification import Evaluation, RunRecord, Scores
from jaxdiff.data import Dataset, load_dataset
from jaxdiff.experiments.cifar import plots, report
from jaxdiff.experiments.cifar.config import ComparisonConfig
from jaxdiff.experiments.cifar.registry import OPTIMIZERS, is_langevin
from jaxdiff.keys import langevin_noise_key, seed_key
from jaxdiff.models import SimpleCNN
from jaxdiff.policy import ExecutionPolicy
from jaxdiff.summaries import Summaries

# Where the TensorBoard summaries go, under --out.
SUMMARIES_DIR = "summaries"


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


class ComparisonRecord(RunRecord):
  """One run as report.json stores it and :mod:`.report` reads it: the classifier experiments'
  :class:`~jaxdiff.classification.RunRecord` (scored on the test set), plus the final
  parameters' scores on the training images, whose gap to the test scores is the overfitting
  claim."""

  final_train: Scores


# The phase of the runs at the main setting: the sweep's centre cell, the main temperature, or
# every run where neither is trained.
MAIN_PHASE = "main"


def run_phase(config: ComparisonConfig, setting: RunSetting, num_examples: int) -> str:
  """``"main"`` for a run at the main setting, else ``"sweep"`` or ``"temperatures"``."""
  main_lr = math.isclose(setting.learning_rate, config.learning_rate)
  diffusion = config.main_diffusion(num_examples)
  main_d = setting.diffusion is None or math.isclose(setting.diffusion, diffusion)
  if main_lr and main_d:
    return MAIN_PHASE
  return "sweep" if config.sweep else "temperatures"


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


def snapshots_of(config: ComparisonConfig, name: str) -> posterior.SnapshotEpochs | None:
  """When a Langevin run adds its test predictions to its posterior average: every epoch of the
  last half, or, cyclical, each cycle's last epoch (the end of its sampling phase). None for a
  noiseless optimizer, which is scored at its final parameters only."""
  if not is_langevin(name):
    return None
  if OPTIMIZERS[name].cyclical:
    return posterior.SnapshotEpochs(cycle_length=config.epochs // config.cycles)
  return posterior.SnapshotEpochs(burn_in=config.epochs // 2)


def run_comparison(
  config: ComparisonConfig,
  data: Dataset,
  out_dir: str | Path,
  *,
  resume: bool = False,
  quiet: bool = False,
  log: Callable[[str], None] = print,
  clock: train.PhaseClock | None = None,
  summaries: bool = True,
) -> list[ComparisonRecord]:
  """Trains every optimizer of ``config`` and returns one record per run.

  Each optimizer's runs are one :func:`jaxdiff.classification.train_and_score`, scored on the
  test set. Checkpoints go to ``out_dir/checkpoints/<optimizer>`` after every epoch; with
  ``resume`` each optimizer continues from its latest checkpoint. With ``summaries``, each
  run's training series and epoch scores go to TensorBoard event files and ``scalars.jsonl``
  in ``out_dir/summaries/<optimizer>/<run>`` (process 0 only; a resumed run continues its
  series). ``clock``, if given, sums the wall seconds spent
  compiling, training, scoring and checkpointing.

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
  num_examples = len(data.x_train)
  mesh = parallel.make_data_mesh(config.batch_size, num_examples)
  policy = ExecutionPolicy.for_mesh(mesh, convolution="auto", loop=config.loop)
  model = SimpleCNN(num_classes=data.num_classes, convolution=policy.convolution)
  task = classification.classifier_task(model, data.image_shape)
  predict = classification.make_predictor(model, mesh, policy=policy)
  settings = {name: run_settings(config, name, num_examples) for name in config.optimizers}
  total_steps = config.epochs * (num_examples // config.batch_size)
  trainers = {
    name: train.Trainer(
      task, OPTIMIZERS[name].for_budget(total_steps, config.cycles), mesh, config.batch_size, policy
    )
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
  test = Evaluation("test", data.x_test, data.y_test)
  records = []
  for name in config.optimizers:
    run_names = [setting.describe() for setting in settings[name]]
    writer = Summaries(Path(out_dir) / SUMMARIES_DIR / name, run_names) if summaries else None
    try:
      scored = classification.train_and_score(
        trainers[name], states[name], device_data, train.Budget(epochs=config.epochs),
        predict=predict, evaluation=test, num_classes=data.num_classes,
        snapshots=snapshots_of(config, name),
        checkpointing=train.Checkpointing(checkpoint_root / name, resume=resume),
        reporter=train.Reporter(name, run_names, quiet, log, summaries=writer), clock=clock,
      )  # fmt: skip
    finally:
      if writer is not None:
        writer.close()
    with clock("score"):
      train_probs = predict(scored.state.params, data.x_train)
    for run, (setting, scores) in enumerate(zip(settings[name], scored.runs)):
      temperature = None if setting.diffusion is None else setting.diffusion * num_examples
      record = classification.run_record(
        scores, method=name, phase=run_phase(config, setting, num_examples), seed=setting.seed,
        learning_rate=setting.learning_rate, diffusion=setting.diffusion, temperature=temperature,
      )  # fmt: skip
      final_train = classification.scores(train_probs[run], data.y_train)
      records.append(ComparisonRecord(**record, final_train=final_train))
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


def main_results(records: Sequence[ComparisonRecord]) -> list[ComparisonRecord]:
  """The runs at the main setting (:func:`run_phase`)."""
  return [record for record in records if record["phase"] == MAIN_PHASE]


def rerun_command(
  config: ComparisonConfig, data_source: str, out_dir: str | Path, *, summaries: bool = True
) -> str:
  """The command line that runs ``config`` again (with ``--resume``: continues it)."""
  return config_lib.rerun_command("experiments/cifar.py", config, data_source, out_dir,
                                  summaries=summaries)  # fmt: skip


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

  Writes ``report.json``, ``report.md`` and the figures of :func:`write_reports`, each
  atomically.

  Returns:
    The contents of ``report.json``.
  """
  started = time.perf_counter()
  clock = train.PhaseClock()
  with clock("load"):
    data = load_dataset(data_source, name="cifar10" if data_source == "tfds" else None)
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  records = run_comparison(config, data, out, resume=resume, quiet=quiet, clock=clock,
                           summaries=summaries)  # fmt: skip
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
  main_runs = main_results(records)
  summary = report.summarize(main_runs, num_classes=data.num_classes)
  sweep = report.summarize_sweep(records) if config.sweep else None
  cold_posterior = report.summarize_temperatures(records) if config.temperatures else None
  result = {
    "config": settings,
    "command": rerun_command(config, data_source, out_dir, summaries=summaries),
    "summaries": SUMMARIES_DIR if summaries else None,
    "environment": env,
    "data_label": data.label,
    "summary": summary,
    "sweep": sweep,
    "cold_posterior": cold_posterior,
    "runs": records,
  }
  write_reports(result, out)
  return result


def write_reports(result: dict[str, Any], out_dir: str | Path) -> None:
  """report.json, report.md and :func:`report.figures` of ``result`` (run_experiment's),
  atomically: ``curves.png``, with a sweep ``sweep.png``, with temperatures
  ``cold_posterior.png``."""
  out = Path(out_dir)
  files.write_json(out / "report.json", result)
  files.write_text(out / "report.md", report.render_markdown(result))
  drawn = report.figures(result)
  plots.plot_curves(main_results(result["runs"]), out / "curves.png")
  if "sweep.png" in drawn:
    plots.plot_sweep(result["sweep"], out / "sweep.png")
  if "cold_posterior.png" in drawn:
    plots.plot_cold_posterior(result["cold_posterior"], out / "cold_posterior.png")
