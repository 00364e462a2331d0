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
  (:func:`to_unit_range`; :func:`to_uint8` inverts it).
* The network enters as ``denoise_fn(x_t, t) -> eps``: ``x_t`` of shape ``(batch, ...)``, ``t`` an
  int32 array of shape ``(batch,)``, and the predicted noise with the shape of ``x_t``. It closes
  over the parameters, e.g. ``lambda x, t: model.apply({"params": params}, x, t)``.
* Every random function takes an explicit ``jax.random`` key.

References:
  Ho, Jain & Abbeel, `Denoising Diffusion Probabilistic Models
  <https://arxiv.org/abs/2006.11239>`_, NeurIPS 2020 (and the authors' code,
  ``diffusion_tf/diffusion_utils_2.py``).

  Nichol & Dhariwal, `Improved Denoising Diffusion Probabilistic Models
  <https://arxiv.org/abs/2102.09672>`_, ICML 2021.

  Song, Meng & Ermon, `Denoising Diffusion Implicit Models
  <https://arxiv.org/abs/2010.02502>`_, ICLR 2021.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.scipy.special import log_ndtr

from jaxdiff.train import Task

__all__ = [
  "SCHEDULES",
  "VARIANCES",
  "NoiseSchedule",
  "ParamsEMAState",
  "bits_per_dim",
  "cosine_schedule",
  "ddim_timesteps",
  "diffusion_task",
  "discretized_gaussian_log_likelihood",
  "find_params_ema",
  "linear_schedule",
  "make_schedule",
  "noise_prediction_loss",
  "p_mean_variance",
  "predict_x0_from_eps",
  "q_posterior",
  "q_sample",
  "sample_ddim",
  "sample_ddpm",
  "schedule_from_betas",
  "to_uint8",
  "to_unit_range",
  "track_params_ema",
]

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
SCHEDULES = ("linear", "cosine")
VARIANCES = ("beta", "beta_tilde")


# ----------------------------------------------------------------------------- data range


def to_unit_range(images: jax.Array) -> jax.Array:
  """uint8 pixels to float32 in ``[-1, 1]``: ``pixel / 127.5 − 1``."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x: jax.Array) -> jax.Array:
  """Inverse of :func:`to_unit_range` for samples: rounds and clips to uint8 pixels."""
  return jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


# ----------------------------------------------------------------------------- schedules


class NoiseSchedule(NamedTuple):
  """Precomputed float32 arrays of length ``T`` (computed in float64).

  Index ``t`` is 0-based (see the module docstring). A schedule is a pytree: it can be closed over
  or passed to a jitted function.

  Attributes:
    betas: ``β_t``.
    alphas: ``α_t = 1 − β_t``.
    alpha_bars: ``ᾱ_t = Π_{s ≤ t} α_s``.
    alpha_bars_prev: ``ᾱ_{t−1}``, with ``ᾱ_{−1} = 1``.
    sqrt_alpha_bars: ``√ᾱ_t``.
    sqrt_one_minus_alpha_bars: ``√(1 − ᾱ_t)``.
    sqrt_recip_alpha_bars: ``1 / √ᾱ_t``.
    sqrt_recipm1_alpha_bars: ``√(1 / ᾱ_t − 1)``.
    posterior_variance: ``β̃_t = β_t (1 − ᾱ_{t−1}) / (1 − ᾱ_t)``, the variance of
      ``q(x_{t−1} | x_t, x_0)``; ``β̃_0 = 0``.
    posterior_log_variance_clipped: ``log β̃_t`` with ``β̃_0`` replaced by ``β̃_1`` (by ``β_0``
      when ``T = 1``), as in the authors' code, to keep the log finite.
    posterior_mean_coef1: ``β_t √ᾱ_{t−1} / (1 − ᾱ_t)``, the weight of ``x_0`` in the posterior
      mean.
    posterior_mean_coef2: ``(1 − ᾱ_{t−1}) √α_t / (1 − ᾱ_t)``, the weight of ``x_t``.
  """

  betas: jax.Array
  alphas: jax.Array
  alpha_bars: jax.Array
  alpha_bars_prev: jax.Array
  sqrt_alpha_bars: jax.Array
  sqrt_one_minus_alpha_bars: jax.Array
  sqrt_recip_alpha_bars: jax.Array
  sqrt_recipm1_alpha_bars: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array

  @property
  def num_steps(self) -> int:
    """``T``, the number of diffusion steps."""
    return self.betas.shape[0]


def _check_num_steps(num_steps: Any) -> None:
  if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps <= 0:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")


def schedule_from_betas(betas: Sequence[float] | np.ndarray) -> NoiseSchedule:
  """All the :class:`NoiseSchedule` arrays for the given ``β_0, ..., β_{T−1}``.

  Args:
    betas: the per-step noise variances, each in ``(0, 1)``.

  Returns:
    The schedule, computed in float64 and stored as float32.
  """
  betas = np.asarray(betas, np.float64)
  if betas.ndim != 1 or betas.size == 0:
    raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {betas.shape}")
  if not np.all((betas > 0) & (betas < 1)):
    raise ValueError(f"every beta must lie in (0, 1); got min {betas.min()}, max {betas.max()}")
  alphas = 1.0 - betas
  alpha_bars = np.cumprod(alphas)
  alpha_bars_prev = np.append(1.0, alpha_bars[:-1])
  posterior_variance = betas * (1.0 - alpha_bars_prev) / (1.0 - alpha_bars)
  first = posterior_variance[1] if betas.size > 1 else betas[0]
  arrays = {
    "betas": betas,
    "alphas": alphas,
    "alpha_bars": alpha_bars,
    "alpha_bars_prev": alpha_bars_prev,
    "sqrt_alpha_bars": np.sqrt(alpha_bars),
    "sqrt_one_minus_alpha_bars": np.sqrt(1.0 - alpha_bars),
    "sqrt_recip_alpha_bars": np.sqrt(1.0 / alpha_bars),
    "sqrt_recipm1_alpha_bars": np.sqrt(1.0 / alpha_bars - 1.0),
    "posterior_variance": posterior_variance,
    "posterior_log_variance_clipped": np.log(np.append(first, posterior_variance[1:])),
    "posterior_mean_coef1": betas * np.sqrt(alpha_bars_prev) / (1.0 - alpha_bars),
    "posterior_mean_coef2": (1.0 - alpha_bars_prev) * np.sqrt(alphas) / (1.0 - alpha_bars),
  }
  return NoiseSchedule(**{name: jnp.asarray(value, jnp.float32) for name, value in arrays.items()})


def linear_schedule(
  num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
  """Ho et al.'s schedule: ``β_t`` evenly spaced from ``beta_start`` to ``beta_end``.

  Args:
    num_steps: ``T``.
    beta_start: ``β_0``.
    beta_end: ``β_{T−1}``.

  Returns:
    The schedule.
  """
  _check_num_steps(num_steps)
  return schedule_from_betas(np.linspace(beta_start, beta_end, num_steps, dtype=np.float64))


def cosine_schedule(
  num_steps: int = 1000, s: float = 0.008, max_beta: float = 0.999
) -> NoiseSchedule:
  """Nichol & Dhariwal's schedule: ``ᾱ`` follows a squared cosine.

  With ``f(u) = cos²((u / T + s) / (1 + s) · π / 2)``, step ``t`` (0-based) takes
  ``β_t = min(1 − f(t + 1) / f(t), max_beta)``, so ``ᾱ_t = f(t + 1) / f(0)`` wherever no
  ``β`` is clipped (only the last steps are, where ``f`` reaches 0).

  Args:
    num_steps: ``T``.
    s: the offset that keeps ``β`` from being tiny near ``t = 0``.
    max_beta: the cap on ``β_t``, which avoids the singularity at ``t = T``.

  Returns:
    The schedule.
  """
  _check_num_steps(num_steps)
  u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  f = np.cos((u + s) / (1.0 + s) * np.pi / 2) ** 2
  return schedule_from_betas(np.minimum(1.0 - f[1:] / f[:-1], max_beta))


def make_schedule(name: str, num_steps: int) -> NoiseSchedule:
  """A named schedule of ``num_steps`` steps.

  ``"linear"`` scales Ho et al.'s endpoints by ``1000 / num_steps`` (as Nichol & Dhariwal's code
  does), capping ``β`` at 0.999, so that ``ᾱ_{T−1}`` stays close to 0 for any ``T``; at
  ``T = 1000`` it is exactly :func:`linear_schedule`'s default. Without the scaling, ``T = 200``
  would end at ``ᾱ_{T−1} ≈ 0.13``, far from the ``N(0, I)`` the samplers start from.
  ``"cosine"`` is :func:`cosine_schedule`.

  Args:
    name: one of :data:`SCHEDULES`.
    num_steps: ``T``, a positive integer.

  Returns:
    The schedule.

  Raises:
    ValueError: for an unknown name or a ``num_steps`` that is not a positive integer.
  """
  if name not in SCHEDULES:
    raise ValueError(f"unknown noise schedule {name!r}; choose one of {SCHEDULES}")
  _check_num_steps(num_steps)
  if name == "linear":
    scale = 1000 / num_steps
    return linear_schedule(num_steps, 1e-4 * scale, min(0.02 * scale, 0.999))
  return cosine_schedule(num_steps)


# ----------------------------------------------------------------------------- forward process


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
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see the module docstring).
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
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see the module docstring).
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


# ----------------------------------------------------------------------------- samplers


def _initial_noise(key: jax.Array, shape: tuple[int, ...], initial_noise: jax.Array | None):
  if initial_noise is None:
    return jax.random.normal(key, shape, jnp.float32)
  if initial_noise.shape != tuple(shape):
    raise ValueError(f"initial_noise has shape {initial_noise.shape}, expected {tuple(shape)}")
  return initial_noise


def sample_ddpm(
  denoise_fn: DenoiseFn,
  schedule: NoiseSchedule,
  key: jax.Array,
  shape: tuple[int, ...],
  variance: str = "beta",
  clip: bool = True,
  return_trajectory_at: tuple[int, ...] = (),
  initial_noise: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Ancestral sampling: ``T`` steps of ``p_θ(x_{t−1} | x_t)`` from ``x_T ~ N(0, I)``.

  Each step draws ``x_{t−1} = mean + σ_t z`` (:func:`p_mean_variance`), except the last
  (``t = 0``), which returns the mean. The loop is one ``lax.scan``. Under ``jax.jit`` mark
  ``shape``, ``variance``, ``clip`` and ``return_trajectory_at`` static.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see the module docstring).
    schedule: the noise schedule.
    key: split into ``(init_key, step_key)``: ``x_T = normal(init_key, shape)`` and step ``t``
      draws its noise from ``fold_in(step_key, t)``.
    shape: the batch shape, e.g. ``(64, 32, 32, 3)``.
    variance: ``σ_t²``: ``"beta"`` (``β_t``) or ``"beta_tilde"`` (``β̃_t``).
    clip: clip each predicted ``x_0`` to ``[-1, 1]``.
    return_trajectory_at: timesteps ``t`` (0-based, in ``[0, T)``) at which to record the sample
      entering step ``t``, i.e. ``x_{t+1}`` in the paper's 1-based notation: ``T − 1`` records
      the initial noise.
    initial_noise: ``x_T`` to start from instead of a draw from ``init_key``.

  Returns:
    The samples ``x_0``, float32 of ``shape``: the last step's mean, which is the predicted
    ``x_0`` (so within ``[-1, 1]`` when ``clip``). With ``return_trajectory_at``, the pair
    ``(x_0, trajectory)``, ``trajectory`` of shape ``(len(return_trajectory_at),) + shape`` in
    the order given.

  Example:
    >>> sample = jax.jit(
    ...   lambda params, key: sample_ddpm(
    ...     lambda x, t: model.apply({"params": params}, x, t), schedule, key, (16, 32, 32, 3)
    ...   )
    ... )
    >>> images = to_uint8(sample(params, jax.random.key(0)))
  """
  _check_variance(variance)
  num_steps = schedule.num_steps
  record = tuple(int(t) for t in return_trajectory_at)
  if any(not 0 <= t < num_steps for t in record):
    raise ValueError(f"return_trajectory_at must lie in [0, {num_steps}), got {record}")
  init_key, step_key = jax.random.split(key)
  x = _initial_noise(init_key, shape, initial_noise)
  record_at = jnp.asarray(record, jnp.int32).reshape((-1,) + (1,) * len(shape))
  trajectory = jnp.zeros((len(record),) + tuple(shape), x.dtype)

  def step(carry, t):
    x, trajectory = carry
    if record:
      trajectory = jnp.where(record_at == t, x[None], trajectory)
    t_batch = jnp.full((shape[0],), t, jnp.int32)
    mean, _, log_variance, _ = p_mean_variance(denoise_fn, schedule, x, t_batch, clip, variance)
    noise = jax.random.normal(jax.random.fold_in(step_key, t), shape, x.dtype)
    x = mean + jnp.where(t > 0, jnp.exp(0.5 * log_variance), 0.0) * noise
    return (x, trajectory), None

  timesteps = jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32)
  (x, trajectory), _ = jax.lax.scan(step, (x, trajectory), timesteps)
  return (x, trajectory) if record else x


def ddim_timesteps(schedule_steps: int, num_steps: int) -> np.ndarray:
  """The DDIM subsequence: ``num_steps`` evenly spaced, distinct timesteps, descending.

  ``round(linspace(T − 1, 0, num_steps))``: it starts at ``T − 1`` and, for two steps or more,
  ends at 0. Consecutive values differ by ``(T − 1) / (num_steps − 1) ≥ 1`` before rounding, so
  they stay distinct.

  Args:
    schedule_steps: ``T``.
    num_steps: how many steps, in ``[1, T]``.

  Returns:
    An int32 numpy array of length ``num_steps``.
  """
  if not 1 <= num_steps <= schedule_steps:
    raise ValueError(f"num_steps must lie in [1, {schedule_steps}], got {num_steps}")
  return np.round(np.linspace(schedule_steps - 1, 0, num_steps)).astype(np.int32)


def sample_ddim(
  denoise_fn: DenoiseFn,
  schedule: NoiseSchedule,
  key: jax.Array,
  shape: tuple[int, ...],
  num_steps: int = 50,
  eta: float = 0.0,
  clip: bool = True,
  initial_noise: jax.Array | None = None,
) -> jax.Array:
  """DDIM sampling (Song et al. 2021) on the subsequence :func:`ddim_timesteps`.

  From ``t`` to the next timestep ``s`` of the subsequence (``ᾱ_s = 1`` after the last):
  ``x_s = √ᾱ_s x̂_0 + √(1 − ᾱ_s − σ²) ε_θ + σ z`` with
  ``σ = η √((1 − ᾱ_s) / (1 − ᾱ_t)) √(1 − ᾱ_t / ᾱ_s)``. ``η = 0`` is deterministic given ``x_T``;
  ``η = 1`` with every step is DDPM with ``σ_t² = β̃_t``. With ``clip``, ``ε_θ`` is recomputed
  from the clipped ``x̂_0`` so the two stay consistent (as Nichol & Dhariwal's code does). The
  loop is one ``lax.scan``; under ``jax.jit`` mark ``shape``, ``num_steps`` and ``clip`` static.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see the module docstring).
    schedule: the noise schedule the model was trained with.
    key: split into ``(init_key, step_key)``: ``x_T = normal(init_key, shape)`` and step ``t``
      draws its noise (used only when ``eta > 0``) from ``fold_in(step_key, t)``.
    shape: the batch shape.
    num_steps: steps in the subsequence, in ``[1, T]``.
    eta: ``η ≥ 0``.
    clip: clip each predicted ``x_0`` to ``[-1, 1]``.
    initial_noise: ``x_T`` to start from instead of a draw from ``init_key``.

  Returns:
    The samples ``x_0``, float32 of ``shape``.

  Example:
    >>> sample = jax.jit(
    ...   lambda params, key: sample_ddim(
    ...     lambda x, t: model.apply({"params": params}, x, t), schedule, key, (16, 32, 32, 3)
    ...   )
    ... )
  """
  timesteps = ddim_timesteps(schedule.num_steps, num_steps)
  init_key, step_key = jax.random.split(key)
  x = _initial_noise(init_key, shape, initial_noise)
  alpha_bars_next = jnp.append(schedule.alpha_bars[timesteps[1:]], 1.0)

  def step(x, inputs):
    t, alpha_bar_next = inputs
    t_batch = jnp.full((shape[0],), t, jnp.int32)
    eps = denoise_fn(x, t_batch)
    x0 = predict_x0_from_eps(schedule, x, t_batch, eps)
    if clip:
      x0 = jnp.clip(x0, -1.0, 1.0)
      eps = (schedule.sqrt_recip_alpha_bars[t] * x - x0) / schedule.sqrt_recipm1_alpha_bars[t]
    alpha_bar = schedule.alpha_bars[t]
    sigma = eta * jnp.sqrt(
      (1.0 - alpha_bar_next) / (1.0 - alpha_bar) * (1.0 - alpha_bar / alpha_bar_next)
    )
    # Rounding can take the (non-negative) remainder just below 0 when η = 1.
    direction = jnp.sqrt(jnp.maximum(1.0 - alpha_bar_next - sigma**2, 0.0))
    noise = jax.random.normal(jax.random.fold_in(step_key, t), shape, x.dtype)
    return jnp.sqrt(alpha_bar_next) * x0 + direction * eps + sigma * noise, None

  x, _ = jax.lax.scan(step, x, (jnp.asarray(timesteps), alpha_bars_next))
  return x


# ----------------------------------------------------------------------------- bound


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
    ``x_t ~ q(x_t | x_0)`` per image and ``t``, with ``p_θ`` as in :func:`p_mean_variance`
    (the sampler's fixed ``variance`` and ``clip``);
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
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see the module docstring).
    schedule: the noise schedule.
    x0: images in ``[-1, 1]`` made from uint8 pixels (:func:`to_unit_range`), ``(batch, ...)``.
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


# ----------------------------------------------------------------------------- EMA


class ParamsEMAState(NamedTuple):
  """State of :func:`track_params_ema`.

  Attributes:
    ema: the exponential moving average of the parameters, their structure and dtypes.
  """

  ema: optax.Params


def track_params_ema(decay: float) -> optax.GradientTransformation:
  """Keeps an exponential moving average of the parameters in the optimizer state.

  Place it last in an :func:`optax.chain`, so that the updates it sees are the final ones. Each
  update computes the new parameters ``params + updates`` and sets
  ``ema ← decay · ema + (1 − decay) · (params + updates)``; the updates pass through unchanged.
  The average starts at the initial parameters. Read it with :func:`find_params_ema`.

  Args:
    decay: the EMA decay in ``[0, 1]``, e.g. 0.9999 as in Ho et al.

  Returns:
    The transformation; its ``update`` requires ``params``.

  Example:
    >>> optimizer = optax.chain(optax.adam(2e-4), track_params_ema(0.9999))
    >>> opt_state = optimizer.init(params)
    >>> ema_params = find_params_ema(opt_state)
  """
  if not isinstance(decay, jax.core.Tracer) and not 0.0 <= float(decay) <= 1.0:
    raise ValueError(f"decay must lie in [0, 1], got {decay!r}")

  def init_fn(params):
    return ParamsEMAState(ema=jax.tree.map(jnp.asarray, params))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("track_params_ema needs params: call update(updates, state, params)")
    new_params = optax.apply_updates(params, updates)
    ema = jax.tree.map(
      lambda old, new: (decay * old + (1.0 - decay) * new).astype(old.dtype), state.ema, new_params
    )
    return updates, ParamsEMAState(ema=ema)

  return optax.GradientTransformation(init_fn, update_fn)


def find_params_ema(opt_state: optax.OptState) -> optax.Params:
  """The parameter average of the one :class:`ParamsEMAState` in an optimizer state.

  Searches the whole state tree (chains, ``optax.inject_hyperparams`` inner states, masks, ...).

  Args:
    opt_state: an optimizer state built with :func:`track_params_ema`.

  Returns:
    The ``ema`` field, with the parameters' structure (and any leading axes the state has, such
    as the training engine's run axis).

  Raises:
    ValueError: if the state holds no :class:`ParamsEMAState`, or more than one.
  """
  found = optax.tree.get_all_with_path(opt_state, ParamsEMAState.__name__)
  found = [state for _, state in found if isinstance(state, ParamsEMAState)]
  if len(found) != 1:
    raise ValueError(
      f"expected one ParamsEMAState (from track_params_ema) in the optimizer state, "
      f"found {len(found)}"
    )
  return found[0].ema


# ----------------------------------------------------------------------------- engine task


def diffusion_task(model: nn.Module, schedule: NoiseSchedule, image_shape: tuple[int, ...]) -> Task:
  """A :class:`jaxdiff.train.Task` that trains ``model`` with :func:`noise_prediction_loss`.

  Args:
    model: a Linen module called as ``model.apply({"params": p}, x_t, t) -> eps`` with ``x_t``
      float32 ``(batch,) + image_shape`` and ``t`` int32 ``(batch,)``.
    schedule: the noise schedule.
    image_shape: one image's shape, ``(height, width, channels)``.

  Returns:
    The task: ``init(key)`` is ``model.init(key, zeros, zeros_t)["params"]``, and ``loss`` takes
    ``{"image": uint8 NHWC}`` batches, maps them to ``[-1, 1]`` and returns
    ``(L_simple, {})``.
  """

  def init(key):
    images = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    return model.init(key, images, jnp.zeros((1,), jnp.int32))["params"]

  def loss(params, batch, key):
    def denoise_fn(x_t, t):
      return model.apply({"params": params}, x_t, t)

    return noise_prediction_loss(denoise_fn, schedule, to_unit_range(batch["image"]), key), {}

  return Task(init, loss)
