"""Denoising diffusion probabilistic models (DDPM): schedules, loss, samplers and bound.

The forward process adds Gaussian noise in ``T`` steps,
``q(x_t | x_{t-1}) = N(√(1 − β_t) x_{t-1}, β_t I)``, so that
``q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)`` with ``ᾱ_t = Π_{s ≤ t} (1 − β_s)``. A network
``ε_θ(x_t, t)`` is trained to predict the noise, and the reverse process
``p_θ(x_{t-1} | x_t)`` is the Gaussian whose mean is the posterior mean
``q(x_{t-1} | x_t, x_0)`` at the ``x_0`` implied by ``ε_θ``.

Conventions used throughout:

* Timesteps are 0-based: ``t = 0, ..., T − 1`` indexes ``schedule.betas[t]``, so index ``t`` is the
  paper's step ``t + 1``: ``q_sample(schedule, x0, t, noise)`` is the paper's ``x_{t+1}``, and the
  sampler's last step (``t = 0``) maps the paper's ``x_1`` to ``x_0``.
* Data are NHWC float32 images in ``[-1, 1]``, from uint8 pixels as ``x = pixel / 127.5 − 1``
  (:func:`~jaxdiff.ddpm.images.to_unit_range`; :func:`~jaxdiff.ddpm.images.to_uint8` inverts it).
* The network enters as ``denoise_fn(x_t, t) -> eps``: ``x_t`` of shape ``(batch, ...)``, ``t`` an
  int32 array of shape ``(batch,)``, and the predicted noise with the shape of ``x_t``. It closes
  over the parameters, e.g. ``lambda x, t: model.apply({"params": params}, x, t)``. A network
  trained to predict ``v`` or ``x_0`` enters through :func:`~jaxdiff.ddpm.losses.denoiser`, which converts its output.
* Every random function takes an explicit ``jax.random`` key.

The package is split by stage, as in score_sde's ``losses.py`` / ``sampling.py``:

* :mod:`jaxdiff.ddpm.schedules`: the noise schedules, :class:`~jaxdiff.ddpm.schedules.NoiseSchedule`.
* :mod:`jaxdiff.ddpm.images`: the data range, :func:`~jaxdiff.ddpm.images.to_unit_range` and :func:`~jaxdiff.ddpm.images.to_uint8`.
* :mod:`jaxdiff.ddpm.losses`: the forward process, the training losses (ε, v or ``x_0``
  prediction; uniform or min-SNR weights), :func:`~jaxdiff.ddpm.losses.denoiser` and the reverse step.
* :mod:`jaxdiff.ddpm.sampling`: the DDPM, predictor–corrector and DDIM samplers and DPM-Solver++.
* :mod:`jaxdiff.ddpm.guidance`: classifier-free guidance, :func:`~jaxdiff.ddpm.guidance.guided_denoiser`.
* :mod:`jaxdiff.ddpm.likelihood`: the variational bound in bits per dimension.
* :mod:`jaxdiff.ddpm.task`: :func:`~jaxdiff.ddpm.task.ddpm_task`, the training-engine task.

Every public name is importable from :mod:`jaxdiff.ddpm` itself. The parameter EMA that the
experiments sample from is the training engine's (``Trainer(ema_decay=...)``, :mod:`jaxdiff.ema`).

References:
  Ho, Jain & Abbeel, `Denoising Diffusion Probabilistic Models
  <https://arxiv.org/abs/2006.11239>`_, NeurIPS 2020 (and the authors' code,
  ``diffusion_tf/diffusion_utils_2.py``).

  Nichol & Dhariwal, `Improved Denoising Diffusion Probabilistic Models
  <https://arxiv.org/abs/2102.09672>`_, ICML 2021.

  Song, Meng & Ermon, `Denoising Diffusion Implicit Models
  <https://arxiv.org/abs/2010.02502>`_, ICLR 2021.
"""

from jaxdiff.ddpm.guidance import guided_denoiser
from jaxdiff.ddpm.images import to_uint8, to_unit_range
from jaxdiff.ddpm.likelihood import bits_per_dim, discretized_gaussian_log_likelihood
from jaxdiff.ddpm.losses import (
  LOSS_WEIGHTINGS,
  PREDICTIONS,
  VARIANCES,
  denoiser,
  diffusion_loss,
  eps_from_prediction,
  loss_weight,
  noise_prediction_loss,
  p_mean_variance,
  predict_x0_from_eps,
  prediction_target,
  q_posterior,
  q_sample,
  signal_to_noise,
)
from jaxdiff.ddpm.losses import DenoiseFn as DenoiseFn  # the type of denoise_fn, not in __all__
from jaxdiff.ddpm.sampling import (
  PREDICTORS,
  SOLVER_ORDERS,
  ddim_timesteps,
  langevin_corrector_step,
  sample_ddim,
  sample_ddpm,
  sample_dpm_solver,
  sample_pc,
)
from jaxdiff.ddpm.schedules import (
  SCHEDULES,
  NoiseSchedule,
  cosine_schedule,
  linear_schedule,
  make_schedule,
  schedule_from_betas,
)
from jaxdiff.ddpm.task import ddpm_task

__all__ = [
  "LOSS_WEIGHTINGS",
  "PREDICTIONS",
  "PREDICTORS",
  "SCHEDULES",
  "SOLVER_ORDERS",
  "VARIANCES",
  "NoiseSchedule",
  "bits_per_dim",
  "cosine_schedule",
  "ddim_timesteps",
  "ddpm_task",
  "denoiser",
  "diffusion_loss",
  "discretized_gaussian_log_likelihood",
  "eps_from_prediction",
  "guided_denoiser",
  "langevin_corrector_step",
  "linear_schedule",
  "loss_weight",
  "make_schedule",
  "noise_prediction_loss",
  "p_mean_variance",
  "predict_x0_from_eps",
  "prediction_target",
  "q_posterior",
  "q_sample",
  "sample_ddim",
  "sample_ddpm",
  "sample_dpm_solver",
  "sample_pc",
  "schedule_from_betas",
  "signal_to_noise",
  "to_uint8",
  "to_unit_range",
]
