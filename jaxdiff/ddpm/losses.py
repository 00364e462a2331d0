"""The forward process ``q``, the training losses and the reverse step ``p_θ`` they fit.

``q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)`` (:func:`q_sample`), its posterior
``q(x_{t−1} | x_t, x_0)`` (:func:`q_posterior`), Ho et al.'s noise-prediction loss
(:func:`noise_prediction_loss`) and its generalisation to other prediction targets and loss
weightings (:func:`diffusion_loss`), and the Gaussian reverse step built from a noise
prediction (:func:`p_mean_variance`) that the samplers and the bound share.

A network may predict the noise ``ε`` (Ho et al.), the clean image ``x_0``, or the velocity
``v = √ᾱ_t ε − √(1 − ᾱ_t) x_0`` (Salimans & Ho 2022). :func:`denoiser` turns any of them into
the ``denoise_fn(x_t, t) -> eps`` that the samplers and the bound take, so they are written once.

References:
  Salimans & Ho, `Progressive Distillation for Fast Sampling of Diffusion Models
  <https://arxiv.org/abs/2202.00512>`_, ICLR 2022 (v-prediction).

  Hang et al., `Efficient Diffusion Training via Min-SNR Weighting Strategy
  <https://arxiv.org/abs/2303.09556>`_, ICCV 2023.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxdiff.ddpm.schedules import NoiseSchedule

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
VARIANCES = ("beta", "beta_tilde")
#: What the network predicts, the noise, the velocity or the clean image.
PREDICTIONS = ("eps", "v", "x0")
#: The per-timestep loss weights, none or min-SNR-γ.
LOSS_WEIGHTINGS = ("uniform", "min_snr")


def _at(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """``values[t]`` shaped ``(batch, 1, ..., 1)`` to broadcast against rank-``ndim`` arrays."""
  return values[t].reshape((-1,) + (1,) * (ndim - 1))


def q_sample(schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """A draw of ``q(x_t | x_0)``: ``√ᾱ_t x_0 + √(1 − ᾱ_t) ε``.

  Args:
    schedule: the noise schedule.
    x0: clean data, ``(batch, ...)``.
    t: int32 timesteps, ``(batch,)``.
    noise: ``ε``, the shape of ``x0``.

  Returns:
    ``x_t``, the shape of ``x0``.
  """
  return (
    _at(schedule.sqrt_alpha_bars, t, x0.ndim) * x0
    + _at(schedule.sqrt_one_minus_alpha_bars, t, x0.ndim) * noise
  )


def noise_prediction_loss(
  denoise_fn: DenoiseFn, schedule: NoiseSchedule, x0: jax.Array, key: jax.Array
) -> jax.Array:
  """Ho et al.'s ``L_simple``: the noise-prediction MSE at a uniformly drawn timestep.

  ``E_{t, ε} ‖ε − ε_θ(√ᾱ_t x_0 + √(1 − ᾱ_t) ε, t)‖²`` with ``t ~ U{0, ..., T − 1}`` per example
  and ``ε ~ N(0, I)``: the variational bound with its per-timestep weights dropped (and without
  the decoder and prior terms), which Ho et al. found gives better samples.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see :mod:`jaxdiff.ddpm`).
    schedule: the noise schedule.
    x0: a batch of data in ``[-1, 1]``, ``(batch, ...)``.
    key: split into ``(t_key, noise_key)``: ``t = randint(t_key, (batch,), 0, T)`` and
      ``ε = normal(noise_key, x0.shape)``.

  Returns:
    The mean over every element of the batch, a scalar.
  """
  t, noise = _draw_timesteps_and_noise(schedule, x0, key)
  return jnp.mean(jnp.square(denoise_fn(q_sample(schedule, x0, t, noise), t) - noise))


def _draw_timesteps_and_noise(schedule: NoiseSchedule, x0: jax.Array, key: jax.Array):
  """The losses' draws: ``key → (t_key, noise_key)``, ``t ~ U{0, ..., T − 1}``, ``ε ~ N(0, I)``."""
  t_key, noise_key = jax.random.split(key)
  t = jax.random.randint(t_key, (x0.shape[0],), 0, schedule.num_steps, dtype=jnp.int32)
  return t, jax.random.normal(noise_key, x0.shape, x0.dtype)


def q_posterior(
  schedule: NoiseSchedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The Gaussian ``q(x_{t−1} | x_t, x_0)``.

  Args:
    schedule: the noise schedule.
    x0: clean data, ``(batch, ...)``.
    x_t: its noisy version at ``t``, the same shape.
    t: int32 timesteps, ``(batch,)``.

  Returns:
    ``(mean, variance, log_variance)``: ``coef1_t x_0 + coef2_t x_t``, ``β̃_t`` and
    ``posterior_log_variance_clipped[t]``; the variances are shaped ``(batch, 1, ..., 1)``.
  """
  mean = (
    _at(schedule.posterior_mean_coef1, t, x_t.ndim) * x0
    + _at(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t
  )
  variance = _at(schedule.posterior_variance, t, x_t.ndim)
  log_variance = _at(schedule.posterior_log_variance_clipped, t, x_t.ndim)
  return mean, variance, log_variance


def predict_x0_from_eps(
  schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, eps: jax.Array
) -> jax.Array:
  """The ``x_0`` that the noise ``eps`` implies: ``x_t / √ᾱ_t − √(1 / ᾱ_t − 1) ε``.

  Args:
    schedule: the noise schedule.
    x_t: noisy data, ``(batch, ...)``.
    t: int32 timesteps, ``(batch,)``.
    eps: the (predicted) noise, the shape of ``x_t``.

  Returns:
    ``x_0``, the shape of ``x_t``.
  """
  return (
    _at(schedule.sqrt_recip_alpha_bars, t, x_t.ndim) * x_t
    - _at(schedule.sqrt_recipm1_alpha_bars, t, x_t.ndim) * eps
  )


def _check_choice(value: str, choices: tuple[str, ...], noun: str) -> None:
  if value not in choices:
    raise ValueError(f"unknown {noun} {value!r}; choose one of {choices}")


def _check_variance(variance: str) -> None:
  _check_choice(variance, VARIANCES, "reverse-process variance")


def _model_log_variance(schedule: NoiseSchedule, t: jax.Array, variance: str) -> jax.Array:
  if variance == "beta_tilde":
    return schedule.posterior_log_variance_clipped[t]
  # The authors' code gives t = 0 the β̃_1 of the clipped log-variance in place of β_0; only the
  # decoder L_0 sees it, as no noise is added at t = 0.
  return jnp.where(t == 0, schedule.posterior_log_variance_clipped[0], jnp.log(schedule.betas[t]))


def p_mean_variance(
  denoise_fn: DenoiseFn,
  schedule: NoiseSchedule,
  x_t: jax.Array,
  t: jax.Array,
  clip: bool = True,
  variance: str = "beta",
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The reverse step ``p_θ(x_{t−1} | x_t) = N(mean, variance)``.

  The mean is the posterior mean of :func:`q_posterior` at the predicted ``x_0``; the variance is
  fixed, ``σ_t² = β_t`` (``"beta"``, the upper bound of Ho et al.) or ``β̃_t`` (``"beta_tilde"``,
  the lower bound). At ``t = 0`` both take ``β̃_1``, as the authors' code does.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see :mod:`jaxdiff.ddpm`).
    schedule: the noise schedule.
    x_t: noisy data, ``(batch, ...)``.
    t: int32 timesteps, ``(batch,)``.
    clip: clip the predicted ``x_0`` to ``[-1, 1]``, the data range.
    variance: ``"beta"`` or ``"beta_tilde"``.

  Returns:
    ``(mean, variance, log_variance, x0)``: the variances shaped ``(batch, 1, ..., 1)``, and the
    predicted (clipped) ``x_0``.
  """
  _check_variance(variance)
  x0 = predict_x0_from_eps(schedule, x_t, t, denoise_fn(x_t, t))
  if clip:
    x0 = jnp.clip(x0, -1.0, 1.0)
  mean, _, _ = q_posterior(schedule, x0, x_t, t)
  log_variance = _model_log_variance(schedule, t, variance).reshape((-1,) + (1,) * (x_t.ndim - 1))
  return mean, jnp.exp(log_variance), log_variance, x0


def signal_to_noise(schedule: NoiseSchedule, t: jax.Array) -> jax.Array:
  """``SNR(t) = ᾱ_t / (1 − ᾱ_t)``, the signal-to-noise ratio of ``x_t``, shaped like ``t``."""
  return schedule.alpha_bars[t] / (1.0 - schedule.alpha_bars[t])


def prediction_target(
  schedule: NoiseSchedule, x0: jax.Array, t: jax.Array, noise: jax.Array, prediction: str
) -> jax.Array:
  """What a network trained for ``prediction`` should output at ``x_t = q_sample(x0, t, noise)``.

  Args:
    schedule: the noise schedule.
    x0: clean data, ``(batch, ...)``.
    t: int32 timesteps, ``(batch,)``.
    noise: ``ε``, the shape of ``x0``.
    prediction: ``"eps"`` (``ε``), ``"x0"`` (``x_0``) or ``"v"`` (``√ᾱ_t ε − √(1 − ᾱ_t) x_0``).

  Returns:
    The target, the shape of ``x0``.
  """
  _check_choice(prediction, PREDICTIONS, "prediction target")
  if prediction == "eps":
    return noise
  if prediction == "x0":
    return x0
  return (
    _at(schedule.sqrt_alpha_bars, t, x0.ndim) * noise
    - _at(schedule.sqrt_one_minus_alpha_bars, t, x0.ndim) * x0
  )


def eps_from_prediction(
  schedule: NoiseSchedule, x_t: jax.Array, t: jax.Array, output: jax.Array, prediction: str
) -> jax.Array:
  """The noise ``ε`` that a network's ``output`` for ``prediction`` implies at ``x_t``.

  From ``x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε``: for ``"x0"``, ``ε = (x_t − √ᾱ_t x̂_0) / √(1 − ᾱ_t)``;
  for ``"v"``, ``ε = √ᾱ_t v̂ + √(1 − ᾱ_t) x_t``; ``"eps"`` returns ``output`` itself.

  Args:
    schedule: the noise schedule.
    x_t: noisy data, ``(batch, ...)``.
    t: int32 timesteps, ``(batch,)``.
    output: the network's prediction, the shape of ``x_t``.
    prediction: one of :data:`PREDICTIONS`.

  Returns:
    ``ε``, the shape of ``x_t``.
  """
  _check_choice(prediction, PREDICTIONS, "prediction target")
  if prediction == "eps":
    return output
  sqrt_alpha_bar = _at(schedule.sqrt_alpha_bars, t, x_t.ndim)
  sqrt_one_minus = _at(schedule.sqrt_one_minus_alpha_bars, t, x_t.ndim)
  if prediction == "x0":
    return (x_t - sqrt_alpha_bar * output) / sqrt_one_minus
  return sqrt_alpha_bar * output + sqrt_one_minus * x_t


def denoiser(model_fn: DenoiseFn, schedule: NoiseSchedule, prediction: str = "eps") -> DenoiseFn:
  """The ``denoise_fn(x_t, t) -> eps`` of a network that predicts ``prediction``.

  Args:
    model_fn: ``model_fn(x_t, t)``, the network's output for ``prediction``.
    schedule: the noise schedule it was trained with.
    prediction: one of :data:`PREDICTIONS`; ``"eps"`` returns ``model_fn`` itself.

  Returns:
    A function the samplers and :func:`~jaxdiff.ddpm.likelihood.bits_per_dim` take.

  Example:
    >>> from jaxdiff.ddpm import make_schedule, sample_ddim
    >>> schedule = make_schedule("linear", 10)
    >>> predict_v = lambda x_t, t: jnp.zeros_like(x_t)  # a v-network: model.apply(..., x_t, t)
    >>> denoise_fn = denoiser(predict_v, schedule, "v")
    >>> x_t, t = jnp.ones((2, 3)), jnp.array([0, 9])
    >>> eps = denoise_fn(x_t, t)  # from v̂ = 0: ε̂ = √(1 − ᾱ_t)·x_t
    >>> bool(jnp.allclose(eps, schedule.sqrt_one_minus_alpha_bars[t][:, None]))
    True
    >>> sample_ddim(denoise_fn, schedule, jax.random.key(0), (4, 3), num_steps=5).shape
    (4, 3)
  """
  _check_choice(prediction, PREDICTIONS, "prediction target")
  if prediction == "eps":
    return model_fn

  def denoise_fn(x_t, t):
    return eps_from_prediction(schedule, x_t, t, model_fn(x_t, t), prediction)

  return denoise_fn


def loss_weight(
  schedule: NoiseSchedule,
  t: jax.Array,
  prediction: str,
  weighting: str = "uniform",
  min_snr_gamma: float = 5.0,
) -> jax.Array:
  """The weight of timestep ``t``'s squared error on the ``prediction`` target.

  ``"uniform"`` weighs every timestep 1. ``"min_snr"`` (Hang et al. 2023) weighs the error on
  ``x_0`` by ``min(SNR(t), γ)``, so that the nearly clean timesteps, whose easy targets would
  otherwise dominate the gradient, count at most ``γ``. An error on ``ε`` is ``SNR(t)`` times
  the ``x_0`` error it implies, and one on ``v`` ``SNR(t) + 1`` times, so the weights are
  ``min(SNR, γ) / SNR`` for ``"eps"``, ``min(SNR, γ) / (SNR + 1)`` for ``"v"`` and
  ``min(SNR, γ)`` for ``"x0"``.

  Args:
    schedule: the noise schedule.
    t: int32 timesteps, ``(batch,)``.
    prediction: one of :data:`PREDICTIONS`.
    weighting: one of :data:`LOSS_WEIGHTINGS`.
    min_snr_gamma: ``γ > 0`` of ``"min_snr"`` (Hang et al. use 5).

  Returns:
    float32 weights, ``(batch,)``.
  """
  _check_choice(prediction, PREDICTIONS, "prediction target")
  _check_choice(weighting, LOSS_WEIGHTINGS, "loss weighting")
  if weighting == "uniform":
    return jnp.ones(t.shape, jnp.float32)
  if not min_snr_gamma > 0:
    raise ValueError(f"min_snr_gamma must be positive, got {min_snr_gamma}")
  snr = signal_to_noise(schedule, t)
  clipped = jnp.minimum(snr, min_snr_gamma)
  return {"eps": clipped / snr, "v": clipped / (snr + 1.0), "x0": clipped}[prediction]


def diffusion_loss(
  model_fn: DenoiseFn,
  schedule: NoiseSchedule,
  x0: jax.Array,
  key: jax.Array,
  prediction: str = "eps",
  weighting: str = "uniform",
  min_snr_gamma: float = 5.0,
) -> jax.Array:
  """The weighted squared error of a network's ``prediction`` at a uniformly drawn timestep.

  ``E_{t, ε} w(t) ‖target − model_fn(x_t, t)‖²`` with ``t``, ``ε`` and ``x_t`` drawn as in
  :func:`noise_prediction_loss` (the same key gives the same draws), the target of
  :func:`prediction_target` and ``w`` of :func:`loss_weight`. With ``prediction="eps"`` and
  ``weighting="uniform"`` it is :func:`noise_prediction_loss`, bit for bit.

  Args:
    model_fn: ``model_fn(x_t, t)``, the network's output for ``prediction``.
    schedule: the noise schedule.
    x0: a batch of data in ``[-1, 1]``, ``(batch, ...)``.
    key: as for :func:`noise_prediction_loss`.
    prediction: one of :data:`PREDICTIONS`.
    weighting: one of :data:`LOSS_WEIGHTINGS`.
    min_snr_gamma: ``γ`` of ``"min_snr"``.

  Returns:
    The mean over every element of the batch, a scalar.
  """
  _check_choice(prediction, PREDICTIONS, "prediction target")
  _check_choice(weighting, LOSS_WEIGHTINGS, "loss weighting")
  if prediction == "eps" and weighting == "uniform":
    return noise_prediction_loss(model_fn, schedule, x0, key)
  t, noise = _draw_timesteps_and_noise(schedule, x0, key)
  target = prediction_target(schedule, x0, t, noise, prediction)
  squared_error = jnp.square(model_fn(q_sample(schedule, x0, t, noise), t) - target)
  weights = loss_weight(schedule, t, prediction, weighting, min_snr_gamma)
  return jnp.mean(weights.reshape((-1,) + (1,) * (x0.ndim - 1)) * squared_error)
