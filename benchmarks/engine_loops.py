"""Measures the engine's per-backend choices on the CIFAR SimpleCNN step.

For each epoch loop (jitted step called from Python, or one lax.scan) and
each way of running N runs (one per call, or all vmapped into one call), it
prints milliseconds per step of all N runs, after a warm-up epoch, on random
uint8 data already on the device.

  python benchmarks/engine_loops.py --runs 3 --steps 100
"""

import argparse
import jax
import jax.numpy as jnp
import numpy as np
import optax

from common import header, random_data, time_engine
from jaxdiff import classification, parallel, train
from jaxdiff.models import SimpleCNN


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", type=int, default=3)
  parser.add_argument("--steps", type=int, default=100, help="steps per timed epoch")
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=3)
  flags = parser.parse_args()
  mesh = parallel.make_mesh()
  task = classification.classifier_task(SimpleCNN(), (32, 32, 3))
  images, labels = random_data(flags.steps * flags.batch_size)
  print(header())
  print(f"SimpleCNN, batch {flags.batch_size}, {flags.runs} runs, {flags.steps} steps per epoch")
  for loop in ("step", "scan"):
    for runs_per_call, label in ((1, "one run per call"), (0, f"{flags.runs} runs vmapped")):
      trainer = train.Trainer(task, optax.sgd, mesh=mesh, batch_size=flags.batch_size, loop=loop,
                              runs_per_call=runs_per_call)  # fmt: skip
      state = trainer.init(jax.random.split(jax.random.key(2), flags.runs),
                           learning_rate=jnp.full(flags.runs, 1e-3))  # fmt: skip
      compile_and_first, timings = time_engine(
        trainer, state, {"image": images, "label": labels}, flags.repeats
      )
      timings = [seconds / flags.steps for seconds in timings]
      ms = 1000 * np.median(timings)
      print(f"loop={loop:4s} {label:18s}: {ms:7.1f} ms per step of all runs "
            f"({flags.runs * flags.batch_size / ms * 1000:6.0f} images/s); "
            f"first epoch incl. compile {compile_and_first:.1f} s")  # fmt: skip


if __name__ == "__main__":
  main()
