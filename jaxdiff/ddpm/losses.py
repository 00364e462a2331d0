"""The forward process ``q``, the training loss and the reverse step ``p_θ`` it fits.

``q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I)`` (:func:`q_sample`), its posterior
``q(x_{t−1} | x_t, x_0)`` (:func:`q_posterior`), Ho et al.'s noise-prediction loss
(:func:`noise_prediction_loss`), and the Gaussian reverse step built from a noise prediction
(:func:`p_mean_variance`) that the samplers and the bound share.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxdiff.ddpm.schedules import NoiseSchedule

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
VARIANCES = ("beta", "beta_tilde")


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
  t_key, noise_key = jax.random.split(key)
  t = jax.random.randint(t_key, (x0.shape[0],), 0, schedule.num_steps, dtype=jnp.int32)
  noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
  return jnp.mean(jnp.square(denoise_fn(q_sample(schedule, x0, t, noise), t) - noise))


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


def _check_variance(variance: str) -> None:
  if variance not in VARIANCES:
    raise ValueError(f"unknown reverse-process variance {variance!r}; choose one of {VARIANCES}")


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
