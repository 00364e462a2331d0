"""The seed article's optimizer comparison on CIFAR-10.

  python experiments/cifar.py --data ../shared/data/cifar10-jpeg.tar.gz --out runs/cifar

Writes report.json, report.md, curves.png (and sweep.png with --sweep), TensorBoard summaries
(summaries/, unless --no-summaries) and per-epoch checkpoints to --out. Every field of
ComparisonConfig is a flag (--help).
"""

import sys

from jaxdiff import cli
from jaxdiff.experiments.cifar.config import ComparisonConfig
from jaxdiff.experiments.cifar.experiment import run_experiment

if __name__ == "__main__":
  sys.exit(cli.main(ComparisonConfig, run_experiment, description=__doc__.split("\n")[1],
                    default_out="runs/cifar"))  # fmt: skip
