"""DPM-Solver++(2M): DDIM at first order, the update by hand, and its order on a Gaussian."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import ddpm
from jaxdiff.ddpm.sampling import solver_timesteps

SCHEDULE = ddpm.make_schedule("linear", 1000)
# Data x_0 ~ N(MEAN, STD²) per dimension: the exact denoiser is the posterior mean's noise.
MEAN, STD = 0.3, 0.5


def exact_eps(schedule):
  def denoise(x, t):
    alpha = jnp.sqrt(schedule.alpha_bars[t])[:, None]
    sigma = jnp.sqrt(1.0 - schedule.alpha_bars[t])[:, None]
    x0 = MEAN + alpha * STD**2 / (alpha**2 * STD**2 + sigma**2) * (x - alpha * MEAN)
    return (x - alpha * x0) / sigma

  return denoise


def _affine_map(schedule, **kwargs):
  """The solver's map x_T → x_0 on the Gaussian, affine: (slope, intercept)."""
  starts = jnp.array([[0.0], [1.0]])
  out = ddpm.sample_dpm_solver(exact_eps(schedule), schedule, jax.random.key(0), (2, 1),
                               clip=False, initial_noise=starts, **kwargs)  # fmt: skip
  intercept = float(out[0, 0])
  return float(out[1, 0]) - intercept, intercept


def test_the_timesteps_are_even_in_log_snr_distinct_and_span_the_schedule():
  steps = solver_timesteps(SCHEDULE, 20)
  assert steps[0] == 999 and steps[-1] == 0 and np.all(np.diff(steps) < 0)
  alpha_bars = np.asarray(SCHEDULE.alpha_bars, np.float64)
  log_snrs = 0.5 * np.log(alpha_bars / (1 - alpha_bars))[steps]
  gaps = np.diff(log_snrs)
  assert gaps.max() / gaps.min() < 1.5  # even shares, up to rounding to timesteps
  assert len(set(solver_timesteps(SCHEDULE, 200))) == 200  # crowded near t = 0, still distinct
  np.testing.assert_array_equal(solver_timesteps(ddpm.make_schedule("linear", 10), 10),
                                np.arange(9, -1, -1))  # fmt: skip
  with pytest.raises(ValueError, match="num_steps"):
    solver_timesteps(SCHEDULE, 1001)


def test_first_order_is_ddim_on_every_timestep():
  schedule = ddpm.make_schedule("linear", 40)
  toy = lambda x, t: 0.3 * x + 0.01 * t[:, None, None, None]  # noqa: E731
  key = jax.random.key(3)
  solver = ddpm.sample_dpm_solver(toy, schedule, key, (2, 4, 4, 1), num_steps=40, order=1)
  ddim = ddpm.sample_ddim(toy, schedule, key, (2, 4, 4, 1), num_steps=40)
  np.testing.assert_allclose(solver, ddim, rtol=1e-5, atol=1e-6)


def test_two_steps_of_the_second_order_update_by_hand():
  schedule = ddpm.make_schedule("linear", 100)
  toy = lambda x, t: jnp.tanh(x) * (1.0 + 0.01 * t[:, None])  # noqa: E731
  x_start = np.array([[0.7, -1.2, 0.1]], np.float32)
  got = ddpm.sample_dpm_solver(toy, schedule, jax.random.key(0), (1, 3), num_steps=3, clip=False,
                               initial_noise=jnp.asarray(x_start))  # fmt: skip
  ab = np.asarray(schedule.alpha_bars, np.float64)
  t0, t1, t2 = solver_timesteps(schedule, 3)
  alpha, sigma = np.sqrt(ab), np.sqrt(1 - ab)
  log_snr = np.log(alpha / sigma)

  def x0_of(x, t):
    eps = np.tanh(x) * (1.0 + 0.01 * t)
    return (x - sigma[t] * eps) / alpha[t]

  x = x_start.astype(np.float64)
  d0 = x0_of(x, t0)
  h1 = log_snr[t1] - log_snr[t0]
  x = sigma[t1] / sigma[t0] * x + alpha[t1] * (1 - np.exp(-h1)) * d0  # first order
  d1 = x0_of(x, t1)
  h2 = log_snr[t2] - log_snr[t1]
  r = h1 / h2
  direction = (1 + 1 / (2 * r)) * d1 - 1 / (2 * r) * d0
  x = sigma[t2] / sigma[t1] * x + alpha[t2] * (1 - np.exp(-h2)) * direction
  np.testing.assert_allclose(got, x0_of(x, t2), rtol=2e-5, atol=2e-6)


def test_the_sampled_gaussian_converges_at_each_orders_rate():
  # From the exact marginal at T − 1, N(α·MEAN, α²·STD² + σ²), the probability-flow ODE carries
  # every sample to index 0 exactly (an affine map); the solver's last x̂_0 then maps the same
  # way in both. So the sampled variance's error against that reference is the solver's alone.
  ab = np.asarray(SCHEDULE.alpha_bars, np.float64)
  start_mean, start_var = np.sqrt(ab[-1]) * MEAN, ab[-1] * STD**2 + 1 - ab[-1]
  end_alpha, end_var = np.sqrt(ab[0]), ab[0] * STD**2 + 1 - ab[0]
  shrink = end_alpha * STD**2 / end_var  # the posterior mean's slope at index 0
  reference_var = shrink**2 * end_var

  def errors(order, num_steps):
    slope, intercept = _affine_map(SCHEDULE, num_steps=num_steps, order=order)
    mean_error = slope * start_mean + intercept - MEAN
    return abs(mean_error), abs(slope**2 * start_var - reference_var)

  for order in (1, 2):
    mean_errors, var_errors = zip(*(errors(order, k) for k in (20, 40, 80)))
    assert max(mean_errors) < 1e-6  # the mean is carried exactly (to float32 rounding)
    ratios = np.array(var_errors[:-1]) / np.array(var_errors[1:])
    # Halving the step divides the error by 2^order (asymptotically; measured 1.9-2.0 and
    # 3.9-4.1 here).
    assert np.all(np.abs(np.log2(ratios) - order) < 0.25), (order, var_errors)
  # The point of the second order: 20 evaluations beat DDIM's first order at 100.
  assert errors(2, 20)[1] < errors(1, 100)[1]
