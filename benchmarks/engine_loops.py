"""Measures the engine's per-backend choices: its epoch loop, and runs per call.

For each epoch loop (jitted step called from Python, or one lax.scan) and each way of running
N runs (one per call, or all vmapped into one call), it prints milliseconds per step of all N
runs on random uint8 data already on the device: the median of ``--repeats`` timed epochs after
an untimed first one (compile), the configurations' epochs taken in turns so that a drift in
the machine's speed hits all alike. ``--model`` picks the CIFAR SimpleCNN (SGD, batch 100) or
the tiny or small DDPM U-Net as the DDPM experiment trains it (batch 32, one run: its engine is
built for one).

  python benchmarks/engine_loops.py --runs 3 --steps 100
  python benchmarks/engine_loops.py --model unet-tiny --steps 20
"""

import argparse
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import alternate, engine_epochs, header, random_data

from jaxdiff import classification, diffusion_experiment, parallel, train
from jaxdiff.models import SimpleCNN


def cnn_engine(loop, runs_per_call, flags):
  task = classification.classifier_task(SimpleCNN(), (32, 32, 3))
  trainer = train.Trainer(task, optax.sgd, mesh=parallel.make_mesh(), batch_size=flags.batch_size,
                          loop=loop, runs_per_call=runs_per_call)  # fmt: skip
  state = trainer.init(jax.random.split(jax.random.key(2), flags.runs),
                       learning_rate=jnp.full(flags.runs, 1e-3))  # fmt: skip
  images, labels = random_data(flags.steps * flags.batch_size)
  return trainer, state, {"image": images, "label": labels}


def unet_engine(size, loop, runs_per_call, flags):
  config = diffusion_experiment.DiffusionConfig(model_size=size, batch_size=flags.batch_size)
  trainer, state = diffusion_experiment.make_trainer(config, (28, 28, 1))
  trainer = dataclasses.replace(trainer, loop=loop, runs_per_call=runs_per_call)
  images, _ = random_data(flags.steps * flags.batch_size, (28, 28, 1))
  return trainer, state, {"image": images}


ENGINES = {
  "cnn": cnn_engine,
  "unet-tiny": functools.partial(unet_engine, "tiny"),
  "unet-small": functools.partial(unet_engine, "small"),
}
DEFAULT_BATCH_SIZES = {"cnn": 100, "unet-tiny": 32, "unet-small": 32}


def refuse_runs_of_one_run_models(parser, flags):
  """The U-Net's engine is built for one run; more would silently profile or time one."""
  if flags.model != "cnn" and flags.runs != 1:
    parser.error(f"--model {flags.model} trains one run: leave out --runs or give --runs 1")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=ENGINES, default="cnn")
  parser.add_argument(
    "--runs", type=int, help="default: 3 (cnn), 1 (the U-Nets: their only choice)"
  )
  parser.add_argument("--steps", type=int, default=100, help="steps per timed epoch")
  parser.add_argument("--batch-size", type=int, help=f"default: {DEFAULT_BATCH_SIZES}")
  parser.add_argument("--repeats", type=int, default=3)
  flags = parser.parse_args()
  cnn = flags.model == "cnn"
  flags.batch_size = flags.batch_size or DEFAULT_BATCH_SIZES[flags.model]
  flags.runs = flags.runs or (3 if cnn else 1)
  refuse_runs_of_one_run_models(parser, flags)
  if min(flags.runs, flags.steps, flags.batch_size, flags.repeats) <= 0:
    parser.error("--runs, --steps, --batch-size and --repeats must be positive")
  print(header())
  print(
    f"{flags.model}, batch {flags.batch_size}, {flags.runs} runs, {flags.steps} steps per epoch"
  )
  ways = [(1, "one run per call")] + ([(0, f"{flags.runs} runs vmapped")] if flags.runs > 1 else [])
  epochs = {
    (loop, label): engine_epochs(*ENGINES[flags.model](loop, runs_per_call, flags))
    for loop in ("step", "scan")
    for runs_per_call, label in ways
  }
  for (loop, label), (compile_and_first, timings) in alternate(epochs, flags.repeats).items():
    ms = 1000 * np.median(timings) / flags.steps
    print(f"loop={loop:4s} {label:18s}: {ms:7.1f} ms per step of all runs "
          f"({flags.runs * flags.batch_size / ms * 1000:6.0f} images/s); "
          f"first epoch incl. compile {compile_and_first:.1f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
  main()
