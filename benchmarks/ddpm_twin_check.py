"""Checks that the PyTorch U-Net twin computes jaxdiff's U-Net, at every size asked for.

For each size, the Flax parameters (perturbed, so that no zero or unit initialisation hides a
mis-copied leaf) are loaded into ``twins.TorchUNet``; both predict the noise of the same inputs
at the same timesteps, and the outputs must agree to 1e-4 of their scale, with equal parameter
counts (``twins.check_unet_twin``). ``ddpm_throughput.py`` runs the tiny size's check before
timing; this runs the others, which take longer.

  python -m benchmarks.ddpm_twin_check --sizes tiny,small,base
  python -m benchmarks.ddpm_twin_check --sizes base --image-shape 32,32,3
"""

import argparse

from benchmarks import common


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_unet_flags(parser, batch_size=None)
  flags = common.parse_unet_flags(parser)
  twins = common.require_twins(parser)
  print(common.header(twins.PACKAGES), flush=True)
  for size in flags.sizes:
    twins.check_unet_twin(size, flags.image_shape)


if __name__ == "__main__":
  main()
