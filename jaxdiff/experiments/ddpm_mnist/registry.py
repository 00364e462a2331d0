"""The DDPM experiment's samplers: the denoiser of a trained model (guided when conditional),
the configured sampler, and the sampler table's rows."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np

from jaxdiff import ddpm
from jaxdiff.experiments.ddpm_mnist.config import DDPMConfig


def make_denoiser(
  config: DDPMConfig,
  model: nn.Module,
  schedule: ddpm.NoiseSchedule,
  params: Any,
  labels: np.ndarray | None = None,
  guidance: float = 0.0,
) -> ddpm.DenoiseFn:
  """The samplers' ``denoise_fn(x_t, t) -> ε`` from the model's ``config.prediction``.

  With ``labels`` (one per sample), classifier-free guidance towards them at weight
  ``guidance`` (:func:`jaxdiff.ddpm.guided_denoiser`), so that every sampler, the
  predictor-corrector's corrector included, follows the guided score. Without labels a
  conditional model predicts for its null label: the unconditional model.
  """
  if labels is None:
    return ddpm.denoiser(
      lambda x, t: model.apply({"params": params}, x, t), schedule, config.prediction
    )
  return ddpm.guided_denoiser(lambda x, t, y: model.apply({"params": params}, x, t, y), schedule,
                              labels, model.null_label, guidance, config.prediction)  # fmt: skip


def draw(
  config: DDPMConfig,
  denoise: ddpm.DenoiseFn,
  schedule: ddpm.NoiseSchedule,
  key: jax.Array,
  shape: tuple[int, ...],
  trajectory_at: tuple[int, ...] = (),
) -> tuple[jax.Array, jax.Array | None]:
  """One batch from ``config.sampler`` (its steps, predictor and corrector as configured).

  Returns ``(samples in [-1, 1], trajectory)``: the ancestral samplers (ddpm, pc with the ddpm
  predictor) record the samples entering the timesteps ``trajectory_at``, the others None.
  """
  ancestral = config.sampler == "ddpm" or (config.sampler == "pc" and config.pc_predictor == "ddpm")
  record = trajectory_at if ancestral else ()
  if config.sampler == "ddpm":
    drawn = ddpm.sample_ddpm(denoise, schedule, key, shape, return_trajectory_at=record)
  elif config.sampler == "pc":
    drawn = ddpm.sample_pc(
      denoise, schedule, key, shape, corrector_steps=config.corrector_steps, snr=config.snr,
      return_trajectory_at=record, predictor=config.pc_predictor, num_steps=config.sample_steps,
    )  # fmt: skip
  elif config.sampler == "ddim":
    drawn = ddpm.sample_ddim(denoise, schedule, key, shape, num_steps=config.sample_steps)
  else:
    drawn = ddpm.sample_dpm_solver(denoise, schedule, key, shape, num_steps=config.sample_steps)
  return drawn if record else (drawn, None)


# (sampler, steps, corrector steps, snr) of the sampler table's rows: a PC row with steps has
# the DDIM predictor, one without the ancestral predictor over all T levels. The PC rows use the
# DDIM predictor: with the ancestral one each row would cost (1 + M)·T model evaluations, two to
# four times the DDPM row, for a table that must fit a CPU session. The PC rows past the
# default (M = 2, snr 0.24) are there because the confident share rose with both up to it
# (RESULTS.md, "The full budget"). DPM-Solver++(2M) takes K evaluations, as DDIM does, at the
# few-step budgets where its second order should tell.
SAMPLER_TABLE = (
  ("ddpm", None, 0, None),
  ("ddim", 25, 0, None),
  ("ddim", 50, 0, None),
  ("ddim", 100, 0, None),
  ("dpm_solver", 10, 0, None),
  ("dpm_solver", 15, 0, None),
  ("dpm_solver", 20, 0, None),
  ("dpm_solver", 25, 0, None),
  ("pc", 100, 1, 0.08),
  ("pc", 100, 1, 0.16),
  ("pc", 100, 2, 0.16),
  ("pc", 100, 2, 0.24),
  ("pc", 100, 2, 0.32),
  ("pc", 100, 3, 0.16),
  ("pc", 100, 3, 0.24),
)


# Images of each sampler table row shown in samplers.png.
PREVIEW_IMAGES = 16
