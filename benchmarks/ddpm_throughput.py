"""Training throughput of the DDPM U-Net: jaxdiff's engine vs a PyTorch twin.

Measures images per second of one DDPM training run (batch 32 by default) on
random uint8 MNIST-shaped data (``--image-shape 32,32,3`` for CIFAR's) already
in memory, for each U-Net size asked for, with:

* jaxdiff: ``experiment.make_trainer``, the engine that the DDPM experiment trains with:
  ``ddpm.ddpm_task`` and ``experiment.ddpm_optimizer`` (global-norm clipping, Adam under a
  linear warm-up), the parameter EMA of ``Trainer(ema_decay=...)``, one epoch per call;
* pytorch: ``twins.TorchUNet``, which mirrors ``jaxdiff.models.unet.UNet`` layer by layer,
  NCHW, where JAX runs, starting from the same initial parameters, with the same per-step
  work (``twins.ddpm_epochs``).

``--dtype bfloat16`` computes both U-Nets in bfloat16 with float32 parameters:
``DDPMConfig.compute_dtype``, and ``torch.autocast`` for the twin.

Before timing, the twin is checked at the tiny size to be the same function
(``twins.check_unet_twin``; ``ddpm_twin_check.py`` checks every size).

Each framework first runs one untimed epoch (for JAX that is compile plus the
first epoch, reported separately), then ``--repeats`` timed epochs of ``--steps``
steps, taken in turns with the other's (``common.alternate``), each with its
framework's default thread count; the reported rate is the median. A busy machine or unsteady
epochs print a WARNING line and mark the ratio as not trusted (``common.MachineWatch``).

  python -m benchmarks.ddpm_throughput --sizes tiny,small --steps 50 --repeats 3
  python -m benchmarks.ddpm_throughput --image-shape 32,32,3 --size base --batch-size 64
  python -m benchmarks.ddpm_throughput --image-shape 32,32,3 --size base --dtype bfloat16

The twin's profile is ``ddpm_torch_profile.py``; each convolution timed alone in both
frameworks, ``ddpm_convolutions.py``.
"""

import argparse
import dataclasses

from benchmarks import common
from jaxdiff.experiments.ddpm_mnist.config import DDPMConfig


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  common.add_unet_flags(parser, steps=50, dtype=True)
  parser.add_argument("--repeats", type=int, default=3, help="timed epochs after the first")
  parser.add_argument("--skip-torch", action="store_true", help="time jaxdiff only")
  flags = common.parse_unet_flags(parser)
  common.positive(parser, flags, "repeats")
  twins = None if flags.skip_torch else common.import_twins()
  print(common.header(twins.PACKAGES if twins else ()), flush=True)
  if twins is not None:
    # Cheap at the tiny size, and the timings below mean nothing if the twin differs.
    twins.check_unet_twin("tiny", flags.image_shape)
  config = DDPMConfig(batch_size=flags.batch_size, compute_dtype=flags.dtype)
  images, _ = common.random_data(flags.steps * flags.batch_size, flags.image_shape)
  print(
    f"DDPM U-Net, {common.shape_text(flags.image_shape)} images, batch {flags.batch_size}, "
    f"clip {config.grad_clip} + Adam lr {config.learning_rate:g} (warm-up "
    f"{config.warmup_steps}) + EMA {config.ema_decay}, T {config.num_timesteps} "
    f"{config.schedule}, {config.compute_dtype}, one run, {flags.steps} steps per epoch",
    flush=True,
  )
  device = twins.torch_device() if twins else None
  for size in flags.sizes:
    watch = common.MachineWatch()
    size_config = dataclasses.replace(config, model_size=size)
    trainer, state = common.ddpm_engine(size_config, images)
    initial = common.first_run_params(state)
    epochs = {"jaxdiff": common.engine_epochs(trainer, state, {"image": images})}
    if twins is not None:
      epochs["pytorch"] = twins.ddpm_epochs(images, size_config, flags.steps, initial, device)
    timed = common.alternate(epochs, flags.repeats)
    rates, steady = common.report_rates(timed, flags.batch_size, flags.steps, f" ({size})",
                                        decimals=1)  # fmt: skip
    quiet = watch.report()
    common.print_ratio(rates, f" ({size})", common.skipped_torch(flags, twins), quiet and steady)


if __name__ == "__main__":
  main()
