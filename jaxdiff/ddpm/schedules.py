"""Noise schedules: the ``β_t`` of the forward process and everything derived from them.

Index ``t`` is 0-based, ``t = 0, ..., T − 1`` (see :mod:`jaxdiff.ddpm`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULES = ("linear", "cosine")
"""The noise schedules :func:`make_schedule` makes: Ho et al.'s linear, Nichol & Dhariwal's cosine."""


class NoiseSchedule(NamedTuple):
  """Precomputed float32 arrays of length ``T`` (computed in float64).

  Index ``t`` is 0-based (see :mod:`jaxdiff.ddpm`). A schedule is a pytree: it can be closed over
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
