"""Step time of each optimizer of the CIFAR comparison on the engine, one run each.

The cost claim of the seed article ("little overhead") is the ratio of each
Langevin optimizer's step time to plain SGD's, measured here on a quiet machine
with the same engine, model and batch as experiments/cifar.py and the comparison's
default learning rate and diffusion (``ComparisonConfig``). The optimizers'
timed epochs are taken in turns, so a drift in the machine's speed hits all alike.

  python -m benchmarks.optimizer_overhead --steps 200 --repeats 3
"""

import argparse
import statistics

import jax
import jax.numpy as jnp

from benchmarks import common
from jaxdiff.experiments.cifar.config import ComparisonConfig
from jaxdiff.experiments.cifar.registry import OPTIMIZERS


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--steps", type=int, default=200, help="steps per timed epoch")
  parser.add_argument("--repeats", type=int, default=3)
  flags = parser.parse_args()
  common.positive(parser, flags, "batch_size", "steps", "repeats")
  config = ComparisonConfig()
  print(common.header())
  print(f"SimpleCNN, batch {flags.batch_size}, one run, {flags.steps} steps per epoch, "
        f"lr {config.learning_rate}, D {config.diffusion}")  # fmt: skip
  images, labels = common.random_data(flags.steps * flags.batch_size)
  epochs = {}
  for name, spec in OPTIMIZERS.items():
    trainer = common.cnn_trainer(spec.factory, flags.batch_size)
    hyperparams = {"learning_rate": jnp.asarray([config.learning_rate])}
    if spec.langevin:
      hyperparams |= {"diffusion": jnp.asarray([config.diffusion]),
                      "key": jax.random.key(1)[None]}  # fmt: skip
    state = trainer.init(jax.random.key(0)[None], **hyperparams)
    epochs[name] = common.engine_epochs(trainer, state, {"image": images, "label": labels})
  baseline = None
  for name, (_, timings) in common.alternate(epochs, flags.repeats).items():
    milliseconds = 1000 * statistics.median(timings) / flags.steps
    baseline = baseline or milliseconds
    print(f"{name:14s} {milliseconds:6.2f} ms/step  x{milliseconds / baseline:.2f} of sgd")


if __name__ == "__main__":
  main()
