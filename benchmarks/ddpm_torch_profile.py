"""Where the PyTorch U-Net twin's DDPM training step spends its time: ``torch.profiler``.

For each U-Net size, trains ``twins.TorchUNet`` as ``ddpm_throughput.py`` times it (the DDPM
experiment's step, ``twins.ddpm_epochs``, on random uint8 data already where the twin runs) for
one untimed epoch of ``--steps`` steps, then profiles one more and prints the ``--top`` ops by
self CPU time per step (on CUDA, the time spent launching kernels). jaxdiff's side of the
same step is ``engine_profile.py --model unet-tiny``.

  python -m benchmarks.ddpm_torch_profile --sizes tiny,small --steps 30
"""

import argparse

import jax

from benchmarks import common
from jaxdiff import ddpm
from jaxdiff.experiments.ddpm_mnist.config import DDPMConfig


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_unet_flags(parser, steps=30, dtype=True)
  parser.add_argument("--top", type=int, default=12, help="ops to list")
  flags = common.parse_unet_flags(parser)
  common.positive(parser, flags, "top")
  twins, device = common.start_twins(parser)
  images, _ = common.random_data(flags.steps * flags.batch_size, flags.image_shape)
  for size in flags.sizes:
    config = DDPMConfig(model_size=size, batch_size=flags.batch_size, compute_dtype=flags.dtype)
    schedule = ddpm.make_schedule(config.schedule, config.num_timesteps)
    task = ddpm.ddpm_task(config.make_model(), schedule, flags.image_shape)
    params = task.init(jax.random.key(config.seed))
    epoch_seconds = twins.ddpm_epochs(images, config, flags.steps, params, device)
    print(f"pytorch warm-up epoch ({size}): {epoch_seconds():.1f} s", flush=True)
    twins.print_profile(size, epoch_seconds, flags.steps, flags.top)


if __name__ == "__main__":
  main()
