"""Training throughput of the CIFAR SimpleCNN: jaxdiff's engine vs a PyTorch twin.

Measures images per second of one SGD-with-momentum run (batch 100 by
default) on random uint8 CIFAR-shaped data already in memory, for:

* jaxdiff: ``train.Trainer`` as the experiments build it (``common.cnn_trainer``: the
  platform's ``ExecutionPolicy`` and its convolution formulation unless ``--convolution``),
  one epoch per call;
* pytorch: the seed article's loop on the same architecture (``twins.cnn_epochs``), float32
  NCHW, with the same per-step work as the engine, where JAX runs.

Each framework first runs one untimed epoch (for JAX that is compile plus the
first epoch, reported separately), then ``--repeats`` timed epochs of ``--steps``
steps, taken in turns with the other's (``common.alternate``), each with its
framework's default thread count; the reported rate is the median. A busy machine (other
processes' CPU time, ``common.MachineWatch``) or unsteady epochs print a WARNING line and mark
the ratio as not trusted.

  python -m benchmarks.cnn_throughput --batch-size 100 --steps 200 --repeats 3
  python -m benchmarks.cnn_throughput --skip-torch --convolution lax
"""

import argparse

from benchmarks import common
from jaxdiff.policy import CONVOLUTIONS


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch-size", type=int, default=100)
  parser.add_argument("--steps", type=int, default=200, help="steps per epoch")
  parser.add_argument("--repeats", type=int, default=3, help="timed epochs after the first")
  parser.add_argument("--skip-torch", action="store_true", help="time jaxdiff only")
  parser.add_argument("--convolution", choices=("auto", *CONVOLUTIONS), default="auto",
                      help="SimpleCNN's formulation (default auto: the platform policy's)")  # fmt: skip
  parser.add_argument("--scan-unroll", type=int, default=1,
                      help="steps per iteration of the engine's epoch scan")  # fmt: skip
  flags = parser.parse_args()
  common.positive(parser, flags, "batch_size", "steps", "repeats", "scan_unroll")
  twins = None if flags.skip_torch else common.import_twins()

  print(common.header(twins.PACKAGES if twins else ()), flush=True)
  watch = common.MachineWatch()
  trainer, state, arrays = common.cnn_engine(1, flags.batch_size, flags.steps,
                                             convolution=flags.convolution,
                                             scan_unroll=flags.scan_unroll)  # fmt: skip
  convolution = trainer.policy.convolution if flags.convolution == "auto" else flags.convolution
  print(
    f"SimpleCNN (convolution {convolution}), SGD momentum 0.9, batch {flags.batch_size}, "
    f"one run, {flags.steps} steps per epoch, scan unroll {flags.scan_unroll}",
    flush=True,
  )
  epochs = {"jaxdiff": common.engine_epochs(trainer, state, arrays)}
  if twins is not None:
    epochs["pytorch"] = twins.cnn_epochs(
      arrays["image"], arrays["label"], flags.batch_size, flags.steps, twins.torch_device()
    )
  rates, steady = common.report_rates(
    common.alternate(epochs, flags.repeats), flags.batch_size, flags.steps
  )
  quiet = watch.report()
  common.print_ratio(rates, why_not=common.skipped_torch(flags, twins), trusted=quiet and steady)


if __name__ == "__main__":
  main()
