"""N seeds of the CIFAR SimpleCNN in one vmapped program vs the same N runs one after another.

For each N in ``--runs`` (default 1, 4, 8) it trains N runs of SGD with momentum, batch 100
each, on random uint8 data already on the device, with the engine's epoch loop (``--loop``;
by default its own choice, printed with the results):

* sequential: ``ExecutionPolicy.for_mesh(mesh, runs_per_call=1)``: each call of the compiled
  step or epoch trains one run;
* vmapped: ``runs_per_call=N``: one compiled step or epoch holds all N runs (``jax.vmap``).

It prints the total images/s of all N runs for each (median of the timed epochs, after an
untimed compile + first epoch; the two ways' epochs taken in turns, so that a drift in the
machine's speed hits both alike), the cores each kept busy (the process's CPU time over the
wall time of its timed epochs: batching runs can only gain where one run leaves cores idle),
and the ratio vmapped ÷ sequential.

  python -m benchmarks.vmap_runs --runs 1,4,8 --steps 20 --repeats 3
"""

import argparse
import time

import numpy as np

from benchmarks import common
from jaxdiff.policy import LOOPS


def counting_cores(epoch_seconds):
  """``epoch_seconds`` that also records, per call, the process's CPU seconds over wall seconds."""
  busy = []

  def timed():
    cpu_started = time.process_time()
    seconds = epoch_seconds()
    busy.append((time.process_time() - cpu_started) / seconds)
    return seconds

  return timed, busy


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", default="1,4,8", help="comma-separated numbers of runs")
  parser.add_argument("--steps", type=int, default=20, help="steps per timed epoch")
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=3, help="timed epochs after the first")
  parser.add_argument("--loop", choices=LOOPS, default="auto",
                      help="the engine's epoch loop (default: its own choice)")  # fmt: skip
  flags = parser.parse_args()
  try:
    run_counts = [int(n) for n in flags.runs.split(",")]
  except ValueError:
    parser.error(f"--runs must be comma-separated integers, got {flags.runs!r}")
  if min(run_counts) <= 0:
    parser.error("--runs must be positive")
  common.positive(parser, flags, "steps", "batch_size", "repeats")

  print(common.header(), flush=True)
  print(f"SimpleCNN, SGD momentum 0.9, batch {flags.batch_size} per run, "
        f"{flags.steps} steps per epoch", flush=True)  # fmt: skip
  for num_runs in run_counts:
    epochs, busy = {}, {}
    for name, runs_per_call in (("sequential", 1), ("vmapped", num_runs)):
      trainer, state, arrays = common.cnn_engine(num_runs, flags.batch_size, flags.steps,
                                                 loop=flags.loop, runs_per_call=runs_per_call)  # fmt: skip
      loop = trainer.policy.loop  # the same for both ways
      epochs[name], busy[name] = counting_cores(common.engine_epochs(trainer, state, arrays))
    timed = common.alternate(epochs, flags.repeats)
    rates = {
      name: num_runs * flags.steps * flags.batch_size / np.median(timings)
      for name, (_, timings) in timed.items()
    }
    # The first call of each is the untimed compile + first epoch: its cores are left out.
    cores = {name: np.median(values[1:]) for name, values in busy.items()}
    print(f"N={num_runs}, loop={loop}: sequential {rates['sequential']:6.0f} images/s "
          f"(first epoch {timed['sequential'][0]:.1f} s, {cores['sequential']:.2f} cores busy), "
          f"vmapped {rates['vmapped']:6.0f} images/s (first epoch {timed['vmapped'][0]:.1f} s, "
          f"{cores['vmapped']:.2f} cores busy); "
          f"vmapped/sequential {rates['vmapped'] / rates['sequential']:.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
  main()
