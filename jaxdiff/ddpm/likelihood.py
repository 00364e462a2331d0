"""Likelihood: Ho et al.'s variational bound on ``−log p(x_0)`` in bits per dimension.

The prior and KL terms compare Gaussians in closed form; the decoder term is the discretised
Gaussian of :func:`discretized_gaussian_log_likelihood` on the 256 pixel levels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from jaxdiff.ddpm.losses import DenoiseFn, _check_variance, p_mean_variance, q_posterior, q_sample
from jaxdiff.ddpm.schedules import NoiseSchedule


def _normal_kl(mean1, log_var1, mean2, log_var2):
  """``KL(N(mean1, e^log_var1) || N(mean2, e^log_var2))`` per element, in nats."""
  # expm1(d) − d is the −1 + log σ2² − log σ1² + σ1²/σ2² of the usual formula, without the
  # cancellation when the variances nearly agree (the prior term).
  d = log_var1 - log_var2
  return 0.5 * (jnp.expm1(d) - d + jnp.square(mean1 - mean2) * jnp.exp(-log_var2))


def _log_ndtr_diff(upper: jax.Array, lower: jax.Array) -> jax.Array:
  """``log(Φ(upper) − Φ(lower))`` for ``upper > lower``, accurate in both tails."""
  # Φ(u) − Φ(l) = Φ(−l) − Φ(−u): work on the side where both CDFs are below 1/2, where float32
  # holds them with full relative precision.
  flip = upper + lower > 0
  hi = jnp.where(flip, -lower, upper)
  lo = jnp.where(flip, -upper, lower)
  log_hi = log_ndtr(hi)
  return log_hi + jnp.log(-jnp.expm1(log_ndtr(lo) - log_hi))


def discretized_gaussian_log_likelihood(
  x: jax.Array, mean: jax.Array, log_scale: jax.Array
) -> jax.Array:
  """Log-probability of 8-bit data under a Gaussian discretised into 256 bins.

  Ho et al.'s decoder: pixel ``k`` sits at ``x = k / 127.5 − 1`` and owns the interval
  ``x ± 1/255``; the first and last bins extend to ``∓∞`` (the CDF tails). The same as the
  authors' ``discretized_gaussian_log_likelihood`` except that the logs are taken in the tails
  (``log_ndtr``) instead of clamping probabilities at 1e-12.

  Args:
    x: data on the 256-level grid in ``[-1, 1]``.
    mean: the Gaussian's mean, broadcastable to ``x``.
    log_scale: the log of its standard deviation, broadcastable to ``x``.

  Returns:
    The log-probability (nats) of each element, the shape of ``x``.
  """
  centered = x - mean
  inv_std = jnp.exp(-log_scale)
  upper = inv_std * (centered + 1.0 / 255.0)
  lower = inv_std * (centered - 1.0 / 255.0)
  return jnp.where(
    x < -0.999,
    log_ndtr(upper),
    jnp.where(x > 0.999, log_ndtr(-lower), _log_ndtr_diff(upper, lower)),
  )


def bits_per_dim(
  denoise_fn: DenoiseFn,
  schedule: NoiseSchedule,
  x0: jax.Array,
  key: jax.Array,
  num_timesteps_sampled: int | None = None,
  variance: str = "beta",
  clip: bool = True,
  timesteps_per_call: int | None = None,
) -> dict[str, jax.Array]:
  """Ho et al.'s variational bound on ``−log p(x_0)``, per image, in bits per dimension.

  ``L = L_T + Σ_{t=1}^{T−1} L_{t−1} + L_0`` (0-based ``t``) with

  * ``L_T = KL(q(x_T | x_0) || N(0, I))``, the prior term (exact);
  * ``L_{t−1} = KL(q(x_{t−1} | x_t, x_0) || p_θ(x_{t−1} | x_t))`` at one draw
    ``x_t ~ q(x_t | x_0)`` per image and ``t``, with ``p_θ`` as in
    :func:`~jaxdiff.ddpm.losses.p_mean_variance` (the sampler's fixed ``variance`` and ``clip``);
  * ``L_0 = −log p_θ(x_0 | x_1)``, :func:`discretized_gaussian_log_likelihood` at the reverse
    mean of step ``t = 0`` with variance ``β̃_1``.

  Each is summed over the image's dimensions and divided by ``num_dims · ln 2``. The ``T − 1``
  KL terms cost one ``denoise_fn`` call each; ``num_timesteps_sampled = K`` instead estimates
  their sum as ``(T − 1) / K`` times the sum over ``K`` timesteps drawn without replacement from
  ``{1, ..., T − 1}``, independently per image: unbiased, and exact at ``K = T − 1``. The draw of
  ``x_t`` depends only on the image and ``t``, so both paths see the same noise. Under
  ``jax.jit`` mark ``num_timesteps_sampled``, ``variance``, ``clip`` and ``timesteps_per_call``
  static.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see :mod:`jaxdiff.ddpm`).
    schedule: the noise schedule.
    x0: images in ``[-1, 1]`` made from uint8 pixels
      (:func:`~jaxdiff.ddpm.images.to_unit_range`), ``(batch, ...)``.
    key: split into ``(t_key, noise_key)``: the timesteps drawn (when sampled), and the
      noise of image ``i`` at ``t`` from ``fold_in(fold_in(noise_key, t), i)``.
    num_timesteps_sampled: ``K`` in ``[1, T − 1]``, or None for the exact sum.
    variance: the reverse-process variance, ``"beta"`` or ``"beta_tilde"``. With ``"beta"``
      each KL term keeps a floor ``½(β̃_t / β_t − 1 − log(β̃_t / β_t))`` per dimension even for a
      perfect model.
    clip: clip the predicted ``x_0`` to ``[-1, 1]`` (the authors' code does).
    timesteps_per_call: evaluate this many timesteps per ``denoise_fn`` call, vmapped
      (``lax.map``'s ``batch_size``): more memory for fewer, larger calls; 0 evaluates all at
      once and None one at a time.

  Returns:
    ``{"total", "prior", "decoder", "kl_sum"}``, each of shape ``(batch,)`` in bits/dim, with
    ``total = prior + decoder + kl_sum``.
  """
  _check_variance(variance)
  num_steps = schedule.num_steps
  batch = x0.shape[0]
  if num_timesteps_sampled is not None and not 1 <= num_timesteps_sampled <= num_steps - 1:
    raise ValueError(
      f"num_timesteps_sampled must lie in [1, {num_steps - 1}] or be None, "
      f"got {num_timesteps_sampled}"
    )
  to_bits = 1.0 / (np.prod(x0.shape[1:]) * np.log(2.0))
  t_key, noise_key = jax.random.split(key)

  def per_image(nats):
    return jnp.sum(nats.reshape(batch, -1), axis=1) * to_bits

  def x_t_at(t):
    keys = jax.vmap(lambda i, t_i: jax.random.fold_in(jax.random.fold_in(noise_key, t_i), i))(
      jnp.arange(batch), t
    )
    noise = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(keys)
    return q_sample(schedule, x0, t, noise)

  def kl_term(t):
    x_t = x_t_at(t)
    q_mean, _, q_log_variance = q_posterior(schedule, x0, x_t, t)
    p_mean, _, p_log_variance, _ = p_mean_variance(denoise_fn, schedule, x_t, t, clip, variance)
    return per_image(_normal_kl(q_mean, q_log_variance, p_mean, p_log_variance))

  t0 = jnp.zeros(batch, jnp.int32)
  mean, _, log_variance, _ = p_mean_variance(denoise_fn, schedule, x_t_at(t0), t0, clip, variance)
  decoder = -per_image(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_variance))

  last = schedule.alpha_bars[-1]
  prior = per_image(_normal_kl(jnp.sqrt(last) * x0, jnp.log1p(-last), 0.0, 0.0))

  if num_timesteps_sampled is None:
    timesteps = jnp.broadcast_to(
      jnp.arange(1, num_steps, dtype=jnp.int32)[:, None], (num_steps - 1, batch)
    )
    scale = 1.0
  else:
    orders = jax.vmap(lambda k: jax.random.permutation(k, num_steps - 1))(
      jax.random.split(t_key, batch)
    )
    timesteps = (orders[:, :num_timesteps_sampled].T + 1).astype(jnp.int32)
    scale = (num_steps - 1) / num_timesteps_sampled
  kl_sum = scale * jnp.sum(jax.lax.map(kl_term, timesteps, batch_size=timesteps_per_call), axis=0)
  return {"total": prior + decoder + kl_sum, "prior": prior, "decoder": decoder, "kl_sum": kl_sum}
