"""Train a first DDPM on MNIST and show its samples.

  python experiments/ddpm_mnist.py --data ../shared/data/mnist.npz --out runs/ddpm

Writes samples.png, loss.png, denoise.png, report.json, report.md and orbax
checkpoints to --out. Every field of DDPMConfig is a flag (--help).
"""

import sys

from jaxdiff import cli
from jaxdiff.experiments.ddpm_mnist.config import DDPMConfig
from jaxdiff.experiments.ddpm_mnist.experiment import run_experiment

if __name__ == "__main__":
  sys.exit(cli.main(DDPMConfig, run_experiment, description=__doc__.split("\n")[1],
                    default_out="runs/ddpm_mnist"))  # fmt: skip
