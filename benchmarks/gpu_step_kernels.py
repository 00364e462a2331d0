"""The GPU kernels of the CIFAR SimpleCNN's training step: how many, and how long each runs.

Builds the engine as ``cnn_throughput.py`` does (SGD momentum, batch 100, random data on the
device, ``--runs`` runs vmapped into one program), trains an untimed epoch, times two, then
traces two more with ``jax.profiler`` and prints per step: the untraced wall time, the number of
GPU kernel events, their summed duration ("busy") and the span from the first to the last, then
the ``--top`` kernels by time. Busy close to wall means the GPU runs kernels back to back (the
step is bound by its kernels, not by launching them). ``--out DIR`` also writes every kernel and
the compiled epoch program's HLO there. ``--toeplitz-block cpu`` gives ``cpu_ops.conv_toeplitz``
the CPU's narrow blocks instead of the platform's choice.

  python benchmarks/gpu_step_kernels.py --runs 1 --steps 200
  python benchmarks/gpu_step_kernels.py --runs 3 --cpu-ops off --out /tmp/kernels
"""

import argparse
import collections
import functools
import gzip
import json
import pathlib
import tempfile
import time

import jax
import jax.numpy as jnp
import optax
from common import header, random_data

from jaxdiff import classification, parallel, train
from jaxdiff.models import SimpleCNN, cpu_ops

CPU_OPS = {"auto": None, "on": True, "off": False}  # SimpleCNN.cpu_ops


def trace_events(trainer, state, data, epochs):
  """Trains ``epochs`` epochs under ``jax.profiler`` and returns the trace's events."""
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for epoch in epochs:
        state, _ = trainer.train_epoch(state, data, epoch)
      jax.block_until_ready(state)
    (trace,) = pathlib.Path(trace_dir).rglob("*.trace.json.gz")
    with gzip.open(trace) as file:
      events = json.load(file)
  return events["traceEvents"] if isinstance(events, dict) else events


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", type=int, default=1)
  parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
  parser.add_argument("--cpu-ops", choices=CPU_OPS, default="auto")
  parser.add_argument("--toeplitz-block", choices=("auto", "cpu"), default="auto")
  parser.add_argument("--top", type=int, default=25, help="kernels to list")
  parser.add_argument("--out", default=None, help="folder for the kernel list and the HLO")
  flags = parser.parse_args()
  if min(flags.runs, flags.steps, flags.top) <= 0:
    parser.error("--runs, --steps and --top must be positive")
  if flags.toeplitz_block == "cpu":
    platform_choice = cpu_ops.toeplitz_block
    cpu_ops.toeplitz_block = lambda width, kernel, platform=None: platform_choice(
      width, kernel, "cpu"
    )
  tag = f"cpu_ops_{flags.cpu_ops}_block_{flags.toeplitz_block}_runs_{flags.runs}"

  task = classification.classifier_task(SimpleCNN(cpu_ops=CPU_OPS[flags.cpu_ops]), (32, 32, 3))
  trainer = train.Trainer(task, functools.partial(optax.sgd, momentum=0.9),
                          mesh=parallel.make_mesh(), batch_size=100, runs_per_call=0)  # fmt: skip
  state = trainer.init(jax.random.split(jax.random.key(0), flags.runs),
                       learning_rate=jnp.full(flags.runs, 1e-3))  # fmt: skip
  images, labels = random_data(flags.steps * 100)
  data = trainer.put_data({"image": images, "label": labels})
  state, _ = trainer.train_epoch(state, data, 0)  # compiles
  jax.block_until_ready(state)
  if flags.out:
    # The engine's private compiled epoch: a profiling tool, not an API.
    indices = trainer._indices(state.key, 0, flags.steps, len(images))
    hlo = trainer._epoch.lower(state, data, indices).compile().as_text()
    pathlib.Path(flags.out, f"hlo_{tag}.txt").write_text(hlo)
  started = time.perf_counter()
  for epoch in (1, 2):
    state, _ = trainer.train_epoch(state, data, epoch)
  jax.block_until_ready(state)
  wall = (time.perf_counter() - started) / (2 * flags.steps)
  events = trace_events(trainer, state, data, (3, 4))

  processes = {
    event["pid"]: event["args"]["name"]
    for event in events
    if event.get("ph") == "M" and event.get("name") == "process_name"
  }
  gpus = {pid for pid, name in processes.items() if "GPU" in name}
  micros, counts = collections.Counter(), collections.Counter()
  starts, ends = [], []
  for event in events:
    if event.get("ph") == "X" and event["pid"] in gpus:
      name = event["name"][:160]
      micros[name] += event["dur"]
      counts[name] += 1
      starts.append(event["ts"])
      ends.append(event["ts"] + event["dur"])
  steps = 2 * flags.steps
  span = (max(ends) - min(starts)) / steps if starts else 0.0
  print(header())
  kernels, busy = sum(counts.values()) / steps, sum(micros.values()) / steps
  print(f"{tag}: wall {wall * 1e6:.1f} us/step untraced; GPU events {kernels:.1f}/step, "
        f"busy {busy:.1f} us/step, span {span:.1f} us/step")  # fmt: skip
  lines = [
    f"{us / steps:8.2f} us  x{counts[name] / steps:5.2f}  {name}"
    for name, us in micros.most_common()
  ]
  print("\n".join(lines[: flags.top]))
  if flags.out:
    pathlib.Path(flags.out, f"kernels_{tag}.txt").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
