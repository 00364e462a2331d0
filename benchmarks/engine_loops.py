"""Measures the engine's per-backend choices: its epoch loop, and runs per call.

For each epoch loop (jitted step called from Python, or one lax.scan) and each way of running
N runs (one per call, or all vmapped into one call), it prints milliseconds per step of all N
runs on random uint8 data already on the device: the median of ``--repeats`` timed epochs after
an untimed first one (compile), the configurations' epochs taken in turns so that a drift in
the machine's speed hits all alike. ``--model`` picks the CIFAR SimpleCNN (SGD, batch 100) or
the tiny or small DDPM U-Net as the DDPM experiment trains it (batch 32, one run: its engine is
built for one). Each configuration is an ``ExecutionPolicy.for_mesh(mesh, loop=...,
runs_per_call=...)``.

  python -m benchmarks.engine_loops --runs 3 --steps 100
  python -m benchmarks.engine_loops --model unet-tiny --steps 20
"""

import argparse

import numpy as np

from benchmarks import common


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=common.MODELS, default="cnn")
  parser.add_argument(
    "--runs", type=int, help="default: 3 (cnn), 1 (the U-Nets: their only choice)"
  )
  parser.add_argument("--steps", type=int, default=100, help="steps per timed epoch")
  parser.add_argument("--batch-size", type=int, help=f"default: {common.DEFAULT_BATCH_SIZES}")
  parser.add_argument("--repeats", type=int, default=3)
  flags = parser.parse_args()
  cnn = flags.model == "cnn"
  flags.batch_size = flags.batch_size or common.DEFAULT_BATCH_SIZES[flags.model]
  flags.runs = flags.runs or (3 if cnn else 1)
  common.refuse_runs_of_one_run_models(parser, flags)
  common.positive(parser, flags, "runs", "steps", "batch_size", "repeats")
  print(common.header())
  print(
    f"{flags.model}, batch {flags.batch_size}, {flags.runs} runs, {flags.steps} steps per epoch"
  )
  ways = [(1, "one run per call")] + ([(0, f"{flags.runs} runs vmapped")] if flags.runs > 1 else [])
  epochs = {
    (loop, label): common.engine_epochs(
      *common.model_engine(
        flags.model,
        flags.runs,
        flags.batch_size,
        flags.steps,
        loop=loop,
        runs_per_call=runs_per_call,
      )
    )
    for loop in ("step", "scan")
    for runs_per_call, label in ways
  }
  for (loop, label), (compile_and_first, timings) in common.alternate(
    epochs, flags.repeats
  ).items():
    ms = 1000 * np.median(timings) / flags.steps
    print(f"loop={loop:4s} {label:18s}: {ms:7.1f} ms per step of all runs "
          f"({flags.runs * flags.batch_size / ms * 1000:6.0f} images/s); "
          f"first epoch incl. compile {compile_and_first:.1f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
  main()
