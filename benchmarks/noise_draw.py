"""What Langevin noise costs per step: SGD, SGLD with Gaussian and with Rademacher noise, and
the bare draws, on the MNIST MLP and the CIFAR SimpleCNN.

Issue 33's targets: SGLD's step at most 1.5x SGD's on the 784-400-400-10 MLP (batch 100,
478 410 parameters) and at most 1.1x on the SimpleCNN. On the MLP every program is one jitted
``lax.scan`` of ``--steps`` steps; the draws alone are scans that add ``σ·ε`` to a
parameter-shaped tree, through ``jax.random`` as the noise was drawn before (its bits, its
normals) and through ``add_langevin_noise`` (both noises). The CNN's optimizers run through the
engine, one epoch of ``--steps`` steps, as ``optimizer_overhead.py`` runs them. Every timed
epoch is taken in turns with the others of its model, so a drift in the machine's speed hits
all alike; the table gives each one's median over ``--repeats``.

  python -m benchmarks.noise_draw --steps 200 --repeats 5
"""

import argparse
import functools
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import classification, environment, parallel, train
from jaxdiff.experiments.cifar.config import ComparisonConfig
from jaxdiff.langevin import add_langevin_noise, diffusion_for_temperature, langevin_sgd
from jaxdiff.models import MLP, SimpleCNN
from jaxdiff.policy import ExecutionPolicy

MNIST_EXAMPLES = 60_000
MLP_LEARNING_RATE = 0.1
MLP_DIFFUSION = diffusion_for_temperature(1.0, MNIST_EXAMPLES)  # T = 1
POOL_BATCHES = 20  # distinct batches the MLP's steps cycle through


def header() -> str:
  described = environment.describe()
  versions = ", ".join(f"{name} {version}" for name, version in described["versions"].items())
  return (f"device: {described['device_kind']} x{described['device_count']}; cpu: "
          f"{described['cpu_model']}, {described['usable_cores']} cores; {versions}")  # fmt: skip


def load_average() -> str:
  return "load average " + " ".join(f"{load:.2f}" for load in os.getloadavg())


def scanned(step, carry, steps):
  """A function that runs ``steps`` jitted steps of ``step(carry, t)`` per call and returns the
  seconds; the first call compiles. Each call continues from the last one's carry."""
  run = jax.jit(lambda carry: jax.lax.scan(lambda c, t: (step(c, t), None), carry,
                                           jnp.arange(steps))[0])  # fmt: skip
  carry = jax.block_until_ready(run(carry))

  def seconds():
    nonlocal carry
    started = time.perf_counter()
    carry = jax.block_until_ready(run(carry))
    return time.perf_counter() - started

  return seconds


def mlp_programs(batch_size, steps):
  """``{name: seconds function}`` of the MLP's optimizers and draws."""
  model = MLP()
  params = model.init(jax.random.key(0), jnp.zeros((1, 784)))["params"]
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(POOL_BATCHES * batch_size, 784)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, POOL_BATCHES * batch_size), jnp.int32)

  def loss(params, t):
    start = (t % POOL_BATCHES) * batch_size
    x = jax.lax.dynamic_slice_in_dim(images, start, batch_size)
    y = jax.lax.dynamic_slice_in_dim(labels, start, batch_size)
    logits = model.apply({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def training(optimizer):
    def step(carry, t):
      params, state = carry
      updates, state = optimizer.update(jax.grad(loss)(params, t), state, params)
      return optax.apply_updates(params, updates), state

    return scanned(step, (params, optimizer.init(params)), steps)

  key = jax.random.key(1)
  std = float(np.sqrt(2 * MLP_DIFFUSION * MLP_LEARNING_RATE))

  def jax_random(draw):
    """Adds ``std · draw(leaf_key, leaf)`` to every leaf, the keys split as the noise's are."""

    def step(tree, t):
      keys = optax.tree.split_key_like(jax.random.fold_in(key, t), tree)
      return jax.tree.map(lambda leaf, k: leaf + std * draw(k, leaf), tree, keys)

    return scanned(step, params, steps)

  def library_draw(noise):
    stage = add_langevin_noise(key, MLP_LEARNING_RATE, MLP_DIFFUSION, noise)
    return scanned(lambda carry, t: stage.update(*carry), (params, stage.init(params)), steps)

  sgld = functools.partial(langevin_sgd, MLP_LEARNING_RATE, MLP_DIFFUSION, key)
  return {
    "sgd": training(optax.sgd(MLP_LEARNING_RATE)),
    "sgld gaussian": training(sgld()),
    "sgld rademacher": training(sgld(noise="rademacher")),
    "jax.random.bits": jax_random(
      lambda k, leaf: jax.random.bits(k, leaf.shape).astype(jnp.float32)
    ),
    "jax.random.normal": jax_random(lambda k, leaf: jax.random.normal(k, leaf.shape)),
    "draw gaussian": library_draw("gaussian"),
    "draw rademacher": library_draw("rademacher"),
  }


def cnn_programs(batch_size, steps):
  """``{name: seconds function}``: one engine epoch of the SimpleCNN per call, as the CIFAR
  comparison builds its engine, at the comparison's default learning rate and diffusion."""
  config = ComparisonConfig()
  mesh = parallel.make_mesh()
  policy = ExecutionPolicy.for_mesh(mesh, convolution="auto", loop=config.loop)
  task = classification.classifier_task(SimpleCNN(convolution=policy.convolution), (32, 32, 3))
  rng = np.random.default_rng(0)
  arrays = {"image": rng.integers(0, 256, (steps * batch_size, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, (steps * batch_size,), dtype=np.int32)}  # fmt: skip
  factories = {
    "sgd": (optax.sgd, {}),
    "sgld gaussian": (langevin_sgd, {"diffusion": config.diffusion}),
    "sgld rademacher": (functools.partial(langevin_sgd, noise="rademacher"),
                        {"diffusion": config.diffusion}),
  }  # fmt: skip
  programs = {}
  for name, (factory, hyperparams) in factories.items():
    trainer = train.Trainer(task, factory, mesh, batch_size, policy)
    if hyperparams:
      hyperparams["key"] = jax.random.key(1)[None]
    state = trainer.init(jax.random.key(0)[None], learning_rate=config.learning_rate,
                         **hyperparams)  # fmt: skip
    data = trainer.put_data(arrays)
    programs[name] = engine_epochs(trainer, state, data)
  return programs


def engine_epochs(trainer, state, data):
  """A function that trains one more epoch per call and returns its seconds; the first call
  compiles."""
  epoch = 0

  def seconds():
    nonlocal state, epoch
    started = time.perf_counter()
    state, _ = trainer.train_epoch(state, data, epoch)
    state = jax.block_until_ready(state)
    epoch += 1
    return time.perf_counter() - started

  seconds()
  return seconds


def report(title, programs, steps, repeats):
  """Times ``programs`` in turns and prints each one's median ms per step and its ratio to
  ``sgd``'s."""
  timings = {name: [] for name in programs}
  for _ in range(repeats):
    for name, seconds in programs.items():
      timings[name].append(seconds())
  print(title, flush=True)
  baseline = statistics.median(timings["sgd"])
  for name, values in timings.items():
    median = statistics.median(values)
    spread = max(values) / min(values)
    print(f"  {name:18s} {1000 * median / steps:7.3f} ms/step  x{median / baseline:.2f} of sgd"
          f"  (max/min {spread:.2f})", flush=True)  # fmt: skip


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--steps", type=int, default=200, help="steps per timed scan or epoch")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--models", default="mlp,cnn", help="comma-separated, of mlp and cnn")
  flags = parser.parse_args()
  if min(flags.batch_size, flags.steps, flags.repeats) <= 0:
    parser.error("--batch-size, --steps and --repeats must be positive")
  models = flags.models.split(",")
  if not models or set(models) - {"mlp", "cnn"}:
    parser.error(f"--models must name mlp and/or cnn, got {flags.models!r}")
  print(header())
  print(f"start: {load_average()}", flush=True)
  if "mlp" in models:
    report(f"MLP 784-400-400-10, batch {flags.batch_size}, {flags.steps} steps per scan",
           mlp_programs(flags.batch_size, flags.steps), flags.steps, flags.repeats)  # fmt: skip
  if "cnn" in models:
    report(f"SimpleCNN (engine), batch {flags.batch_size}, {flags.steps} steps per epoch",
           cnn_programs(flags.batch_size, flags.steps), flags.steps, flags.repeats)  # fmt: skip
  print(f"end: {load_average()}", flush=True)


if __name__ == "__main__":
  main()
