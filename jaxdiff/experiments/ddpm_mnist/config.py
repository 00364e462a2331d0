"""The DDPM experiment's configuration: every field is a flag of ``experiments/ddpm_mnist.py``."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxdiff.config import ConfigError, option, validate
from jaxdiff.ddpm import LOSS_WEIGHTINGS, PREDICTIONS, PREDICTORS, SCHEDULES
from jaxdiff.models.unet import UNET_SIZES, UNet, make_unet

SAMPLERS = ("ddpm", "ddim", "pc", "dpm_solver")
#: The classes of a class-conditional run: MNIST's digits.
NUM_CLASSES = 10
# bfloat16 halves the activations' bytes and runs on GPU/TPU matrix units; on a CPU it is slower.
COMPUTE_DTYPES = ("float32", "bfloat16")


#: The fields that fix what a trained model's parameters are: a run sampled again or resumed
#: must be asked for with the same values.
MODEL_FIELDS = ("schedule", "num_timesteps", "prediction", "model_size", "base_channels",
                "num_res_blocks", "conditional")  # fmt: skip
#: The fields that shaped the training beside the model: a run sampled again keeps its own.
TRAINING_FIELDS = ("steps", "train_minutes", "batch_size", "loss_weighting", "min_snr_gamma",
                   "learning_rate", "warmup_steps", "grad_clip", "ema_decay",
                   "langevin_diffusion", "label_dropout", "seed")  # fmt: skip
#: What is drawn and measured after training: ``--sample-only`` takes them from the flags, and
#: a finished run resumed with other values is refused (it would only replace its outputs).
#: The remaining fields say how this invocation runs (compute_dtype, sample_only).
SAMPLING_FIELDS = ("sampler", "sample_steps", "pc_predictor", "corrector_steps", "snr",
                   "guidance", "class_labels", "guidance_scales", "num_samples", "eval_images",
                   "bpd_timesteps", "sampler_table")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class DDPMConfig:
  """A DDPM training run, its sampling and its evaluation (each field's help says what it is).

  The defaults are the recipe that learnt most per CPU second in ``benchmarks/ddpm_recipe.py``
  (``benchmarks/RESULTS.md``): the narrow U-Net, v-prediction, the cosine schedule, Adam at
  2e-3 on batches of 32, sampled from an EMA of decay 0.999. The default sampler is the sampler
  table's most confident row in the 20-minute runs (``experiments/results``): predictor-corrector,
  DDIM 100 steps with 2 Langevin corrector steps at snr 0.24.
  """

  steps: int = option(2000, "optimizer steps", greater_than=0)
  train_minutes: float | None = option(
    None, "train for this many minutes of wall time instead of --steps (the steps reached are "
    "recorded), so any machine gets the model its time allows", greater_than=0,
  )  # fmt: skip
  batch_size: int = option(32, "global batch size, a multiple of the devices", greater_than=0)
  schedule: str = option(
    "cosine", "noise schedule: linear (Ho et al.) or cosine (Nichol & Dhariwal)",
    choices=SCHEDULES, noun="noise schedule",
  )  # fmt: skip
  num_timesteps: int = option(1000, "T, the steps of the forward process", greater_than=0)
  prediction: str = option(
    "v", "what the U-Net predicts: eps (the noise, Ho et al.), v (Salimans & Ho) or x0",
    choices=PREDICTIONS, noun="prediction target",
  )  # fmt: skip
  loss_weighting: str = option(
    "uniform", "per-timestep loss weights: uniform or min_snr (Hang et al.'s min-SNR-gamma)",
    choices=LOSS_WEIGHTINGS, noun="loss weighting",
  )  # fmt: skip
  min_snr_gamma: float = option(5.0, "gamma of --loss-weighting min_snr", greater_than=0)
  sampler: str = option(
    "pc", "ddpm (ancestral), ddim (eta = 0), pc (predictor-corrector: Langevin corrector "
    "steps before each step of --pc-predictor) or dpm_solver (DPM-Solver++(2M), "
    "--sample-steps model evaluations)", choices=SAMPLERS, noun="sampler",
  )  # fmt: skip
  sample_steps: int = option(
    100, "DDIM's and DPM-Solver's steps, also PC's with --pc-predictor ddim (DDPM always takes "
    "T)", greater_than=0,
  )  # fmt: skip
  pc_predictor: str = option(
    "ddim", "pc: the predictor, ddpm (the ancestral step, all T levels) or ddim "
    "(--sample-steps levels)", choices=PREDICTORS, noun="predictor",
  )  # fmt: skip
  corrector_steps: int = option(2, "pc: Langevin corrector steps per noise level", at_least=0)
  snr: float = option(0.24, "pc: the corrector's target signal-to-noise ratio", greater_than=0)
  conditional: bool = option(
    False, "train a class-conditional U-Net on the labels, for classifier-free guidance (Ho & "
    "Salimans): each label is dropped to a null label with probability --label-dropout",
  )  # fmt: skip
  label_dropout: float = option(
    0.1, "--conditional: the probability a training label is dropped", at_least=0, below=1
  )
  guidance: float = option(
    0.0, "--conditional: the guidance weight w, eps = (1 + w) eps(x, t, y) - w eps(x, t, null), "
    "in every sampler (0: the conditional model)", at_least=0,
  )  # fmt: skip
  class_labels: tuple[int, ...] = option(
    (), "--conditional: the digits to draw, in turn (default: an equal number of each digit)",
    choices=range(NUM_CLASSES), noun="digit",
  )  # fmt: skip
  guidance_scales: tuple[float, ...] = option(
    (), "--conditional: also sample with each of these guidance weights (e.g. 0,0.5,1,2,4) from "
    "the same parameters and noise, and table and plot their class accuracy against their FD",
    at_least=0,
  )  # fmt: skip
  model_size: str = option("narrow", "U-Net size", choices=UNET_SIZES, noun="model size")
  base_channels: int | None = option(
    None, "the U-Net's channels at full resolution, in place of the size's", greater_than=0
  )
  num_res_blocks: int | None = option(
    None, "residual blocks per resolution, in place of the size's", greater_than=0
  )
  compute_dtype: str = option(
    "float32", "the U-Net's computation dtype (bfloat16 on a GPU or TPU); parameters, "
    "optimizer state and the loss stay float32", choices=COMPUTE_DTYPES, noun="compute dtype",
  )  # fmt: skip
  learning_rate: float = option(2e-3, "Adam's peak learning rate", flag="lr", greater_than=0)
  warmup_steps: int = option(200, "linear warm-up of the learning rate", at_least=0)
  grad_clip: float = option(1.0, "global-norm gradient clipping", greater_than=0)
  ema_decay: float = option(
    0.999, "decay of the parameter EMA used for sampling and evaluation: 0.999 (a half-life of "
    "about 700 steps) suits the CPU runs of benchmarks/RESULTS.md, \"DDPM recipe\"; the "
    "paper's 0.9999 far longer ones",
    at_least=0, below=1,
  )  # fmt: skip
  langevin_diffusion: float = option(0.0, "D of Langevin noise added after Adam (0: off)",
                                     at_least=0)  # fmt: skip
  num_samples: int = option(256, "samples drawn for the figures and the scores", greater_than=0)
  eval_images: int = option(256, "held-out test images for bits/dim", greater_than=0)
  bpd_timesteps: int | None = option(
    100,
    "timesteps sampled per image for bits/dim (None, from Python: all T - 1)",
    greater_than=0,
  )
  sampler_table: bool = option(
    False, "also sample with DDPM, DDIM (25/50/100 steps) and PC (the DDIM-100 predictor, 1-3 "
    "corrector steps, a few snr values) from the same EMA parameters, and table their scores "
    "and times",
  )  # fmt: skip
  seed: int = option(0, "the root of every key")
  sample_only: bool = option(
    False, "train nothing: load the EMA parameters of the last checkpoint in --out, and sample "
    "and score them with the sampling flags given (the model's flags must be the run's); "
    "writes samples-<sampler>.png and report-<sampler>.json/.md beside the training report",
  )  # fmt: skip

  def __post_init__(self):
    validate(self)
    uses_steps = self.sampler in ("ddim", "dpm_solver") or (
      self.sampler == "pc" and self.pc_predictor == "ddim"
    )
    if uses_steps and self.sample_steps > self.num_timesteps:
      raise ConfigError("sample_steps", f"must be at most T = {self.num_timesteps}")
    groups = UNET_SIZES[self.model_size].get("num_groups", UNet.num_groups)
    if self.base_channels is not None and self.base_channels % groups:
      raise ConfigError("base_channels", f"must be a multiple of the {groups} GroupNorm groups")
    if self.bpd_timesteps is not None and self.bpd_timesteps > self.num_timesteps - 1:
      raise ConfigError("bpd_timesteps", f"must be at most T - 1 = {self.num_timesteps - 1}")
    if not self.conditional:
      for name, unset in (("guidance", 0.0), ("class_labels", ()), ("guidance_scales", ())):
        if getattr(self, name) != unset:
          raise ConfigError(name, "needs a class-conditional model: add --conditional")

  def sampler_tag(self) -> str:
    """The sampler and its settings as a file-name part, e.g. ``dpm_solver-20`` or
    ``pc-ddim-100-c2-snr0.24``, with ``-w2`` (the guidance) and ``-digits37`` (the digits
    asked for) for a conditional run: the names of a run's outputs sampled again."""
    steps = f"-{self.sample_steps}"
    tag = {
      "ddpm": "ddpm",
      "ddim": f"ddim{steps}",
      "dpm_solver": f"dpm_solver{steps}",
      "pc": f"pc-{self.pc_predictor}{steps if self.pc_predictor == 'ddim' else ''}"
      f"-c{self.corrector_steps}-snr{self.snr:g}",
    }[self.sampler]
    if self.conditional:
      tag += f"-w{self.guidance:g}"
      if self.class_labels:
        tag += "-digits" + "".join(map(str, self.class_labels))
    return tag

  def make_model(self) -> UNet:
    """The U-Net of ``model_size`` with any width or depth given, computing in ``compute_dtype``."""
    overrides = {"base_channels": self.base_channels, "num_res_blocks": self.num_res_blocks}
    given = {name: value for name, value in overrides.items() if value is not None}
    if self.conditional:
      given["num_classes"] = NUM_CLASSES
    return make_unet(self.model_size, dtype=jnp.dtype(self.compute_dtype), **given)
