"""Where the engine's training step spends its time: a jax.profiler trace, summed per XLA op.

Builds the engine as ``engine_loops.py`` does (``--model``, ``--runs``, the engine's own epoch
loop unless ``--loop``), trains one untimed epoch, then traces ``--epochs`` more with
``jax.profiler`` and prints the ``--top`` XLA thunks by time per step, each with its shape and
the JAX operation it came from. Thunks can run concurrently, so their sum can exceed the wall
time; read them as shares.

  python benchmarks/profile_step.py --model cnn --runs 1
  python benchmarks/profile_step.py --model cnn --runs 8 --loop scan
"""

import argparse
import collections
import gzip
import json
import pathlib
import re
import tempfile

import jax
import numpy as np
from common import header
from engine_loops import DEFAULT_BATCH_SIZES, ENGINES, refuse_runs_of_one_run_models

from jaxdiff import train


def hlo_ops(trainer, state, data):
  """``{thunk name: (shape, JAX op name)}`` from the optimized HLO of the compiled step/epoch.

  Reads the engine's private compiled functions: a profiling tool, not an API.
  """
  step = trainer._epoch if trainer.loop == "scan" else trainer._step
  indices = trainer._indices(state.key, 0, trainer.steps_per_epoch(data), len(data["image"]))
  args = (state, data, indices) + (() if trainer.loop == "scan" else (np.int32(0),))
  ops = {}
  for line in step.lower(*args).compile().as_text().splitlines():
    found = re.match(r"\s+(?:ROOT )?%?([\w.\-]+) = (\S+) ", line)
    if found:
      # YNNPACK fusions carry no op name; their name says what they are.
      op_name = re.search(r'op_name="([^"]*)"', line)
      ops[found[1]] = (found[2], op_name[1] if op_name else "")
  return ops


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=ENGINES, default="cnn")
  parser.add_argument("--runs", type=int, default=1)
  parser.add_argument("--steps", type=int, default=50, help="steps per epoch")
  parser.add_argument("--epochs", type=int, default=2, help="traced epochs")
  parser.add_argument("--loop", choices=train.LOOPS, default="auto")
  parser.add_argument("--top", type=int, default=15, help="thunks to list")
  flags = parser.parse_args()
  refuse_runs_of_one_run_models(parser, flags)
  if min(flags.runs, flags.steps, flags.epochs, flags.top) <= 0:
    parser.error("--runs, --steps, --epochs and --top must be positive")
  flags.batch_size = DEFAULT_BATCH_SIZES[flags.model]
  runs_per_call = 1 if flags.runs == 1 else 0
  trainer, state, arrays = ENGINES[flags.model](flags.loop, runs_per_call, flags)
  data = trainer.put_data(arrays)
  state, _ = trainer.train_epoch(state, data, 0)  # compiles, and settles loop="auto"
  ops = hlo_ops(trainer, state, data)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      for epoch in range(1, flags.epochs + 1):
        state, _ = trainer.train_epoch(state, data, epoch)
      jax.block_until_ready(state)
    (trace,) = pathlib.Path(trace_dir).rglob("*.trace.json.gz")
    with gzip.open(trace) as file:
      events = json.load(file)
  events = events["traceEvents"] if isinstance(events, dict) else events
  micros = collections.Counter()
  for event in events:
    if event.get("ph") == "X" and event["name"] in ops:
      micros[event["name"]] += event["dur"]
  steps = flags.steps * flags.epochs
  print(header())
  print(f"{flags.model}, batch {flags.batch_size}, {flags.runs} runs ({runs_per_call or 'all'} per "
        f"call), loop={trainer.loop}; XLA thunks in ms per step of all runs, {steps} steps traced")  # fmt: skip
  print(f"{sum(micros.values()) / steps / 1000:8.3f}  all thunks")
  for name, total in micros.most_common(flags.top):
    shape, op = ops[name]
    print(f"{total / steps / 1000:8.3f}  {name:32s} {shape:28s} {op.split('/', 1)[-1][:70]}")


if __name__ == "__main__":
  main()
