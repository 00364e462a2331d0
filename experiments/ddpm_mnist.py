"""Train a first DDPM on MNIST and show its samples.

  python experiments/ddpm_mnist.py --data ../shared/data/mnist.npz --out runs/ddpm

Writes samples.png, loss.png, denoise.png, report.json, report.md and orbax
checkpoints to --out.
"""

import sys

from jaxdiff import cli


def parse_flags(argv):
  parser = cli.ArgumentParser(description=__doc__.split("\n")[1])
  cli.add_common_flags(parser, default_out="runs/ddpm_mnist")
  parser.add_argument("--steps", type=cli.positive_int, default=2000)
  parser.add_argument("--batch-size", type=cli.positive_int, default=128)
  parser.add_argument("--schedule", default="linear", help="linear (Ho et al.) or cosine")
  parser.add_argument("--sampler", default="ddpm", help="ddpm (ancestral) or ddim (eta = 0)")
  parser.add_argument("--sample-steps", type=cli.positive_int, default=100, help="DDIM steps")
  parser.add_argument("--model-size", default="small", help="U-Net size: tiny, small or base")
  parser.add_argument("--compute-dtype", default="float32",
                      help="the U-Net's computation dtype: float32 or bfloat16 (GPU/TPU)")  # fmt: skip
  parser.add_argument("--lr", type=cli.positive_float, default=2e-4)
  parser.add_argument("--ema-decay", type=float, default=0.995,
                      help="EMA of the parameters used for sampling and evaluation")  # fmt: skip
  parser.add_argument("--langevin-diffusion", type=float, default=0.0,
                      help="D of Langevin noise added after Adam (0 = off)")  # fmt: skip
  parser.add_argument("--num-samples", type=cli.positive_int, default=256)
  parser.add_argument("--eval-images", type=cli.positive_int, default=256,
                      help="held-out test images for bits/dim")  # fmt: skip
  parser.add_argument("--bpd-timesteps", type=cli.positive_int, default=100,
                      help="timesteps sampled per image for bits/dim (default 100 of T)")  # fmt: skip
  flags = parser.parse_args(argv)
  from jaxdiff.diffusion_experiment import DiffusionConfig  # pylint: disable=g-import-not-at-top

  try:
    config = DiffusionConfig(
      steps=flags.steps,
      batch_size=flags.batch_size,
      schedule=flags.schedule,
      sampler=flags.sampler,
      sample_steps=flags.sample_steps,
      model_size=flags.model_size,
      compute_dtype=flags.compute_dtype,
      learning_rate=flags.lr,
      ema_decay=flags.ema_decay,
      langevin_diffusion=flags.langevin_diffusion,
      num_samples=flags.num_samples,
      eval_images=flags.eval_images,
      bpd_timesteps=flags.bpd_timesteps,
    )
  except ValueError as error:
    parser.error(str(error))
  return flags, config


def main(argv=None):
  flags, config = parse_flags(argv)
  from jaxdiff import diffusion_experiment, parallel  # pylint: disable=g-import-not-at-top

  parallel.select_platform(flags.platform)
  cli.use_compilation_cache()
  diffusion_experiment.run_experiment(config, flags.data, flags.out, resume=flags.resume,
                                      quiet=flags.quiet)  # fmt: skip


if __name__ == "__main__":
  sys.exit(cli.run_main(main))
