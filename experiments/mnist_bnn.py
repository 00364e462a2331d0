"""The classic Bayesian neural-network benchmark on MNIST: SGD, SGLD, pSGLD, SGHMC and cSGLD.

  python experiments/mnist_bnn.py --data ../shared/data/mnist.npz --out runs/mnist_bnn

Tunes each method's learning rate on held-out training images, trains its seeds at the picked
rate and writes report.json, report.md, scores.png, tuning.png, curves.png and per-epoch
checkpoints to --out. Every field of BnnConfig is a flag (--help).
"""

import sys

from jaxdiff import cli
from jaxdiff.experiments.mnist_bnn.config import BnnConfig
from jaxdiff.experiments.mnist_bnn.experiment import run_experiment

if __name__ == "__main__":
  sys.exit(cli.main(BnnConfig, run_experiment, description=__doc__.split("\n")[1],
                    default_out="runs/mnist_bnn"))  # fmt: skip
