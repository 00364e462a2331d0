"""Measures the engine's per-backend choices on the CIFAR SimpleCNN step.

For each epoch loop (jitted step called from Python, or one lax.scan) and
each way of running N runs (one per call, or all vmapped into one call), it
prints milliseconds per step of all N runs, after a warm-up epoch, on random
uint8 data already on the device.

  python benchmarks/engine_loops.py --runs 3 --steps 100
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

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
  examples = flags.steps * flags.batch_size
  images = np.asarray(
    jax.random.randint(jax.random.key(0), (examples, 32, 32, 3), 0, 256, jnp.uint8)
  )
  labels = np.asarray(jax.random.randint(jax.random.key(1), (examples,), 0, 10))
  device = jax.devices()[0]
  print(
    f"device: {device.device_kind} x{jax.device_count()} ({device.platform}); jax {jax.__version__}"
  )
  print(f"SimpleCNN, batch {flags.batch_size}, {flags.runs} runs, {flags.steps} steps per epoch")
  for loop in ("step", "scan"):
    for runs_per_call, label in ((1, "one run per call"), (0, f"{flags.runs} runs vmapped")):
      trainer = train.Trainer(task, optax.sgd, mesh=mesh, batch_size=flags.batch_size, loop=loop,
                              runs_per_call=runs_per_call)  # fmt: skip
      state = trainer.init(jax.random.split(jax.random.key(2), flags.runs),
                           learning_rate=jnp.full(flags.runs, 1e-3))  # fmt: skip
      data = trainer.put_data({"image": images, "label": labels})
      started = time.perf_counter()
      state, _ = trainer.train_epoch(state, data, 0)
      compile_and_first = time.perf_counter() - started
      timings = []
      for epoch in range(1, flags.repeats + 1):
        started = time.perf_counter()
        state, _ = trainer.train_epoch(state, data, epoch)
        jax.block_until_ready(state)
        timings.append((time.perf_counter() - started) / flags.steps)
      ms = 1000 * np.median(timings)
      print(f"loop={loop:4s} {label:18s}: {ms:7.1f} ms per step of all runs "
            f"({flags.runs * flags.batch_size / ms * 1000:6.0f} images/s); "
            f"first epoch incl. compile {compile_and_first:.1f} s")  # fmt: skip


if __name__ == "__main__":
  main()
