"""The seed article's optimizer comparison on CIFAR-10.

  python experiments/cifar.py --data ../shared/data/cifar10-jpeg.tar.gz --out runs/cifar

Writes report.json, report.md, curves.png (and sweep.png with --sweep) and
per-epoch checkpoints to --out.
"""

import sys

from jaxdiff import cli
from jaxdiff.comparison import OPTIMIZERS, SWEEP_DIFFUSIONS, ComparisonConfig


def parse_flags(argv):
  parser = cli.ArgumentParser(description=__doc__.split("\n")[1])
  cli.add_common_flags(parser, default_out="runs/cifar")
  parser.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                      help=f"comma-separated, from: {', '.join(OPTIMIZERS)}")  # fmt: skip
  parser.add_argument("--epochs", type=cli.positive_int, default=10)
  parser.add_argument("--batch-size", type=cli.positive_int, default=100)
  parser.add_argument("--lr", type=cli.positive_float, default=1e-3, help="learning rate")
  parser.add_argument("--diffusion", type=float, default=1e-2,
                      help="Langevin D; the temperature is T = N·D for N training images")  # fmt: skip
  parser.add_argument("--seeds", type=cli.positive_int, default=3, help="seeds per optimizer")
  parser.add_argument("--train-size", type=cli.positive_int, default=None,
                      help="use the first N training images after a fixed shuffle")  # fmt: skip
  parser.add_argument("--sweep", action="store_true", help="train the lr × D sensitivity grid")
  parser.add_argument("--sweep-lrs", type=cli.float_list, default=None,
                      help="default: ×0.1, ×1, ×10 of --lr")  # fmt: skip
  parser.add_argument("--sweep-diffusions", type=cli.float_list, default=SWEEP_DIFFUSIONS)
  parser.add_argument("--note", action="append", default=[],
                      help="a line added to report.md's setup (repeatable)")  # fmt: skip
  parser.add_argument("--loop", choices=("auto", "step", "scan"), default="auto",
                      help="epoch loop: jitted step called from Python, or one lax.scan")  # fmt: skip
  flags = parser.parse_args(argv)
  try:
    config = ComparisonConfig(
      optimizers=tuple(name.strip() for name in flags.optimizers.split(",") if name.strip()),
      epochs=flags.epochs,
      batch_size=flags.batch_size,
      learning_rate=flags.lr,
      diffusion=flags.diffusion,
      seeds=flags.seeds,
      train_size=flags.train_size,
      sweep=flags.sweep,
      sweep_lrs=flags.sweep_lrs,
      sweep_diffusions=flags.sweep_diffusions,
      loop=flags.loop,
    )
  except ValueError as error:
    parser.error(str(error))
  return flags, config


def main(argv=None):
  flags, config = parse_flags(argv)
  from jaxdiff import comparison, parallel  # pylint: disable=g-import-not-at-top

  parallel.select_platform(flags.platform)
  cli.use_compilation_cache()
  comparison.run_experiment(config, flags.data, flags.out, resume=flags.resume, quiet=flags.quiet,
                            notes=flags.note)  # fmt: skip


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
