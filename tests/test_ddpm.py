"""Tests for jaxdiff.ddpm: schedules, forward process, loss, samplers, bound, task, API.

Statistical checks use fixed keys and n i.i.d. draws; their tolerances are 5 standard errors,
SE(mean) = σ/√n and SE(var) = σ²·√(2/n), so a correct implementation fails with probability
< 1e-6 per check (and the fixed keys make each run deterministic anyway). Deterministic checks
compare float32 results with float64 closed forms at rtol 1e-5: the schedule is rounded to
float32 once (relative error 6e-8) and a few float32 operations follow.
"""

import functools
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import norm

from jaxdiff import ddpm
from jaxdiff.models.unet import make_unet

N_SE = 5  # standard errors allowed in every statistical check
RTOL = 1e-5  # float32 against float64 closed forms


def _assert_moments(sample, mean, variance):
  """Sample mean and variance equal ``mean`` and ``variance`` within N_SE standard errors."""
  x = np.asarray(sample, np.float64).ravel()
  n = x.size
  assert abs(x.mean() - mean) < N_SE * np.sqrt(variance / n), (x.mean(), mean, n)
  assert abs(x.var() - variance) < N_SE * variance * np.sqrt(2.0 / n), (x.var(), variance, n)


def _f64(schedule):
  return {name: np.asarray(value, np.float64) for name, value in schedule._asdict().items()}


# ----------------------------------------------------------------------------- schedules


def test_linear_schedule_closed_form():
  schedule = ddpm.linear_schedule()
  s = _f64(schedule)
  assert schedule.num_steps == 1000
  assert all(value.dtype == jnp.float32 and value.shape == (1000,) for value in schedule)
  np.testing.assert_allclose([s["betas"][0], s["betas"][-1]], [1e-4, 0.02], rtol=RTOL)
  ab = s["alpha_bars"]
  assert np.all(np.diff(ab) < 0) and np.all((ab > 0) & (ab < 1))
  # Hand formulas for every derived array, from float64 betas.
  betas = np.linspace(1e-4, 0.02, 1000)
  ab = np.cumprod(1 - betas)
  ab_prev = np.append(1.0, ab[:-1])
  tilde = betas * (1 - ab_prev) / (1 - ab)
  expected = {
    "alphas": 1 - betas,
    "alpha_bars": ab,
    "alpha_bars_prev": ab_prev,
    "sqrt_alpha_bars": np.sqrt(ab),
    "sqrt_one_minus_alpha_bars": np.sqrt(1 - ab),
    "sqrt_recip_alpha_bars": 1 / np.sqrt(ab),
    "sqrt_recipm1_alpha_bars": np.sqrt(1 / ab - 1),
    "posterior_variance": tilde,
    "posterior_log_variance_clipped": np.log(np.append(tilde[1], tilde[1:])),
    "posterior_mean_coef1": betas * np.sqrt(ab_prev) / (1 - ab),
    "posterior_mean_coef2": (1 - ab_prev) * np.sqrt(1 - betas) / (1 - ab),
  }
  for name, value in expected.items():
    np.testing.assert_allclose(s[name], value, rtol=RTOL, atol=1e-12, err_msg=name)
  assert s["posterior_variance"][0] == 0.0


def test_cosine_schedule_matches_the_formula():
  T, offset = 1000, 0.008
  s = _f64(ddpm.cosine_schedule(T))

  def f(u):
    return np.cos((u / T + offset) / (1 + offset) * np.pi / 2) ** 2

  t = np.array([0, 10, 500, 900, 990])  # β is clipped at the last step only
  np.testing.assert_allclose(s["alpha_bars"][t], f(t + 1) / f(0), rtol=RTOL)
  assert np.all(s["betas"] <= np.float32(0.999)) and s["betas"][-1] == np.float32(0.999)
  assert np.all(np.diff(s["alpha_bars"]) < 0) and np.all(s["alpha_bars"] > 0)


def test_make_schedule():
  for got, want in zip(ddpm.make_schedule("linear", 1000), ddpm.linear_schedule()):
    np.testing.assert_array_equal(got, want)
  for got, want in zip(ddpm.make_schedule("cosine", 50), ddpm.cosine_schedule(50)):
    np.testing.assert_array_equal(got, want)
  # Endpoints scaled by 1000/T, so ᾱ_{T−1} stays near 0 (3e-5 at T = 200).
  short = ddpm.make_schedule("linear", 200)
  np.testing.assert_allclose([short.betas[0], short.betas[-1]], [5e-4, 0.1], rtol=RTOL)
  assert short.alpha_bars[-1] < 1e-4
  assert np.all(np.asarray(ddpm.make_schedule("linear", 5).betas) < 1)  # capped at 0.999
  with pytest.raises(ValueError, match="unknown noise schedule"):
    ddpm.make_schedule("quadratic", 100)
  for bad in (0, -3, 2.5):
    with pytest.raises(ValueError, match="num_steps must be a positive integer"):
      ddpm.make_schedule("linear", bad)
  with pytest.raises(ValueError, match="num_steps"):
    ddpm.cosine_schedule(0)


# ----------------------------------------------------------------------------- forward process

SCHEDULE = ddpm.linear_schedule(10)  # small, for the algebraic checks


def test_q_sample_statistics():
  schedule = ddpm.linear_schedule()
  n, t, x0 = 100_000, 300, 0.8
  x0s = jnp.full((n, 1, 1, 1), x0)
  ts = jnp.full((n,), t, jnp.int32)
  x_t = ddpm.q_sample(schedule, x0s, ts, jax.random.normal(jax.random.key(0), x0s.shape))
  ab = float(schedule.alpha_bars[t])
  _assert_moments(x_t, np.sqrt(ab) * x0, 1 - ab)


def test_q_posterior_matches_bayes_rule():
  # Hand values from float64 betas: differences like 1 − ᾱ_0 lose digits if taken from float32.
  betas = np.linspace(1e-4, 0.02, 10)
  ab = np.cumprod(1 - betas)
  x0 = jnp.array([0.7, -0.4, 0.1]).reshape(3, 1, 1, 1)
  x_t = jnp.array([-0.2, 1.3, 0.0]).reshape(3, 1, 1, 1)
  t = jnp.array([3, 9, 1], jnp.int32)
  mean, variance, log_variance = ddpm.q_posterior(SCHEDULE, x0, x_t, t)
  assert mean.shape == (3, 1, 1, 1) and variance.shape == (3, 1, 1, 1)
  # Bayes: prior q(x_{t−1}|x_0) = N(√ᾱ_{t−1} x_0, 1 − ᾱ_{t−1}) times the likelihood
  # q(x_t|x_{t−1}) = N(√α_t x_{t−1}, β_t); precisions add and precision-weighted means add.
  tt = np.asarray(t)
  ab_prev, alpha, beta = ab[tt - 1], 1 - betas[tt], betas[tt]
  precision = 1 / (1 - ab_prev) + alpha / beta
  want_mean = (
    np.sqrt(ab_prev) * np.asarray(x0).ravel() / (1 - ab_prev)
    + np.sqrt(alpha) * np.asarray(x_t).ravel() / beta
  ) / precision
  np.testing.assert_allclose(np.ravel(mean), want_mean, rtol=RTOL)
  np.testing.assert_allclose(np.ravel(variance), 1 / precision, rtol=RTOL)
  np.testing.assert_allclose(np.ravel(log_variance), np.log(1 / precision), rtol=RTOL)
  # At t = 0 the posterior is x_0 itself; its log-variance is clipped to log β̃_1.
  mean0, variance0, log_variance0 = ddpm.q_posterior(SCHEDULE, x0, x_t, jnp.zeros(3, jnp.int32))
  np.testing.assert_allclose(mean0, x0, rtol=RTOL)
  assert np.all(np.asarray(variance0) == 0)
  tilde_1 = betas[1] * (1 - ab[0]) / (1 - ab[1])
  np.testing.assert_allclose(log_variance0.ravel(), np.log(tilde_1), rtol=RTOL)


def test_predict_x0_inverts_q_sample():
  x0 = jax.random.uniform(jax.random.key(1), (4, 2, 2, 3), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(2), x0.shape)
  t = jnp.array([0, 3, 6, 9], jnp.int32)
  x_t = ddpm.q_sample(SCHEDULE, x0, t, noise)
  np.testing.assert_allclose(ddpm.predict_x0_from_eps(SCHEDULE, x_t, t, noise), x0, atol=1e-5)


def test_p_mean_variance_with_the_true_noise():
  x0 = jax.random.uniform(jax.random.key(3), (4, 2, 2, 1), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.key(4), x0.shape)
  t = jnp.array([0, 1, 5, 9], jnp.int32)
  x_t = ddpm.q_sample(SCHEDULE, x0, t, noise)
  s = _f64(SCHEDULE)
  tilde_1 = s["posterior_variance"][1]
  want_variance = {
    "beta": np.append(tilde_1, s["betas"][[1, 5, 9]]),  # t = 0 takes β̃_1, as the authors' code
    "beta_tilde": np.append(tilde_1, s["posterior_variance"][[1, 5, 9]]),
  }
  for variance, want in want_variance.items():
    mean, var, log_var, x0_pred = ddpm.p_mean_variance(
      lambda x, tt: noise, SCHEDULE, x_t, t, variance=variance
    )
    np.testing.assert_allclose(x0_pred, x0, atol=1e-5)
    np.testing.assert_allclose(mean, ddpm.q_posterior(SCHEDULE, x0, x_t, t)[0], atol=1e-5)
    np.testing.assert_allclose(var.ravel(), want, rtol=RTOL)
    np.testing.assert_allclose(log_var.ravel(), np.log(want), rtol=RTOL)
  with pytest.raises(ValueError, match="variance"):
    ddpm.p_mean_variance(lambda x, tt: noise, SCHEDULE, x_t, t, variance="learned")


def test_noise_prediction_loss_reproduced_by_hand():
  x0 = jax.random.uniform(jax.random.key(5), (6, 3, 3, 2), minval=-1, maxval=1)
  key = jax.random.key(6)

  def denoise_fn(x, t):  # uses both arguments, so a wrong t or x_t would show
    return 0.5 * x + 0.01 * t.reshape(-1, 1, 1, 1)

  loss = ddpm.noise_prediction_loss(denoise_fn, SCHEDULE, x0, key)
  # The documented draws: key → (t_key, noise_key).
  t_key, noise_key = jax.random.split(key)
  t = np.asarray(jax.random.randint(t_key, (6,), 0, 10, dtype=jnp.int32))
  noise = np.asarray(jax.random.normal(noise_key, x0.shape), np.float64)
  s = _f64(SCHEDULE)
  x_t = (
    np.sqrt(s["alpha_bars"][t]).reshape(-1, 1, 1, 1) * np.asarray(x0)
    + np.sqrt(1 - s["alpha_bars"][t]).reshape(-1, 1, 1, 1) * noise
  )
  want = np.mean((0.5 * x_t + 0.01 * t.reshape(-1, 1, 1, 1) - noise) ** 2)
  np.testing.assert_allclose(loss, want, rtol=RTOL)
  assert loss.shape == ()
  zero_loss = ddpm.noise_prediction_loss(lambda x, t: jnp.zeros_like(x), SCHEDULE, x0, key)
  np.testing.assert_allclose(zero_loss, np.mean(noise**2), rtol=RTOL)


def _x_t_and_draws(schedule, x0, key):
  """The loss's documented draws (key → (t_key, noise_key)) and the x_t they make."""
  t_key, noise_key = jax.random.split(key)
  t = jax.random.randint(t_key, (x0.shape[0],), 0, schedule.num_steps, dtype=jnp.int32)
  noise = jax.random.normal(noise_key, x0.shape)
  return ddpm.q_sample(schedule, x0, t, noise), t, noise


def test_prediction_targets_by_hand_and_their_conversion_to_eps():
  x0 = jax.random.uniform(jax.random.key(30), (10, 3, 3, 1), minval=-1, maxval=1)
  x_t, t, noise = _x_t_and_draws(SCHEDULE, x0, jax.random.key(31))
  s = _f64(SCHEDULE)
  sqrt_ab = np.sqrt(s["alpha_bars"][np.asarray(t)]).reshape(-1, 1, 1, 1)
  sqrt_1m = np.sqrt(1 - s["alpha_bars"][np.asarray(t)]).reshape(-1, 1, 1, 1)
  want_v = sqrt_ab * np.asarray(noise) - sqrt_1m * np.asarray(x0)
  np.testing.assert_allclose(
    ddpm.prediction_target(SCHEDULE, x0, t, noise, "v"), want_v, rtol=RTOL, atol=1e-6
  )
  assert ddpm.prediction_target(SCHEDULE, x0, t, noise, "x0") is x0
  assert ddpm.prediction_target(SCHEDULE, x0, t, noise, "eps") is noise
  # The exact target of each parametrisation implies the true noise and the true x_0. The x0
  # case divides by √(1 − ᾱ_0) = 0.01, which scales float32 rounding (1e-7) up to 1e-5.
  for prediction in ddpm.PREDICTIONS:
    target = ddpm.prediction_target(SCHEDULE, x0, t, noise, prediction)
    eps = ddpm.eps_from_prediction(SCHEDULE, x_t, t, target, prediction)
    np.testing.assert_allclose(eps, noise, rtol=1e-4, atol=1e-4, err_msg=prediction)
    x0_back = ddpm.predict_x0_from_eps(SCHEDULE, x_t, t, eps)
    np.testing.assert_allclose(x0_back, x0, rtol=1e-4, atol=1e-4, err_msg=prediction)
    denoise_fn = ddpm.denoiser(lambda x, t, target=target: target, SCHEDULE, prediction)
    np.testing.assert_array_equal(denoise_fn(x_t, t), eps)


def test_min_snr_weights_by_hand():
  t = jnp.array([0, 3, 6, 9], jnp.int32)
  s = _f64(SCHEDULE)
  snr = s["alpha_bars"][np.asarray(t)] / (1 - s["alpha_bars"][np.asarray(t)])
  np.testing.assert_allclose(ddpm.signal_to_noise(SCHEDULE, t), snr, rtol=RTOL)
  gamma = 30.0
  assert snr.min() < gamma < snr.max()  # both sides of the clip are checked
  clipped = np.minimum(snr, gamma)
  want = {"eps": clipped / snr, "v": clipped / (snr + 1), "x0": clipped}
  for prediction, weights in want.items():
    got = ddpm.loss_weight(SCHEDULE, t, prediction, "min_snr", gamma)
    np.testing.assert_allclose(got, weights, rtol=RTOL, err_msg=prediction)
    np.testing.assert_array_equal(ddpm.loss_weight(SCHEDULE, t, prediction), np.ones(4))
  with pytest.raises(ValueError, match="loss weighting 'snr'"):
    ddpm.loss_weight(SCHEDULE, t, "eps", "snr")
  with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
    ddpm.loss_weight(SCHEDULE, t, "eps", "min_snr", 0.0)


def test_min_snr_loss_is_the_same_in_every_parametrisation():
  # One x_0 estimate written as an ε, v or x_0 prediction: min-SNR weights the x_0 error by
  # min(SNR, γ) in all three, so the three losses agree (same key, same draws).
  x0 = jax.random.uniform(jax.random.key(32), (8, 3, 3, 1), minval=-1, maxval=1)
  key = jax.random.key(33)

  def x0_estimate(x, t):
    return jnp.tanh(0.8 * x) - 0.02 * t.reshape(-1, 1, 1, 1)

  def as_prediction(prediction):
    def model_fn(x, t):
      eps = ddpm.eps_from_prediction(SCHEDULE, x, t, x0_estimate(x, t), "x0")
      return {"eps": eps, "x0": x0_estimate(x, t)}.get(
        prediction, ddpm.prediction_target(SCHEDULE, x0_estimate(x, t), t, eps, "v")
      )

    return model_fn

  losses = {
    prediction: ddpm.diffusion_loss(
      as_prediction(prediction), SCHEDULE, x0, key, prediction, "min_snr", 30.0
    )
    for prediction in ddpm.PREDICTIONS
  }
  np.testing.assert_allclose(losses["eps"], losses["x0"], rtol=1e-4)
  np.testing.assert_allclose(losses["v"], losses["x0"], rtol=1e-4)
  # And the x0 loss by hand.
  x_t, t, _ = _x_t_and_draws(SCHEDULE, x0, key)
  weights = np.minimum(np.asarray(ddpm.signal_to_noise(SCHEDULE, t)), 30.0).reshape(-1, 1, 1, 1)
  want = np.mean(weights * (np.asarray(x0_estimate(x_t, t)) - np.asarray(x0)) ** 2)
  np.testing.assert_allclose(losses["x0"], want, rtol=1e-5)


def test_diffusion_loss_defaults_are_noise_prediction_loss_bitwise():
  x0 = jax.random.uniform(jax.random.key(34), (6, 3, 3, 2), minval=-1, maxval=1)

  def model_fn(x, t):
    return 0.5 * x + 0.01 * t.reshape(-1, 1, 1, 1)

  got = ddpm.diffusion_loss(model_fn, SCHEDULE, x0, jax.random.key(35))
  np.testing.assert_array_equal(got, ddpm.noise_prediction_loss(model_fn, SCHEDULE, x0,
                                                                jax.random.key(35)))  # fmt: skip
  with pytest.raises(ValueError, match="prediction target 'score'"):
    ddpm.diffusion_loss(model_fn, SCHEDULE, x0, jax.random.key(35), prediction="score")


# ----------------------------------------------------------------------------- samplers


def _toy_denoise(params, x, t):
  """A nonlinear stand-in for a network: params enter through the closure under jit."""
  return jnp.tanh(params * x) + 0.01 * t.reshape(-1, 1, 1, 1)


def test_ddim_with_eta_0_is_deterministic_given_x_T():
  schedule = ddpm.linear_schedule(50, 1e-3, 0.2)
  shape = (4, 2, 2, 1)

  @functools.partial(jax.jit, static_argnames=("eta",))
  def sample(params, key, initial_noise, eta):
    denoise_fn = functools.partial(_toy_denoise, params)
    return ddpm.sample_ddim(denoise_fn, schedule, key, shape, 10, eta, initial_noise=initial_noise)

  params = jnp.float32(0.7)
  x_T = jax.random.normal(jax.random.key(7), shape)
  a = sample(params, jax.random.key(8), x_T, 0.0)
  np.testing.assert_array_equal(a, sample(params, jax.random.key(8), x_T, 0.0))
  # With η = 0 the key has nothing left to do once x_T is given.
  np.testing.assert_array_equal(a, sample(params, jax.random.key(9), x_T, 0.0))
  assert not np.allclose(sample(params, jax.random.key(9), x_T, 1.0), a)
  assert a.shape == shape and np.all(np.isfinite(a))
  # Without initial_noise, x_T comes from the key: same key, same samples.
  denoise_fn = functools.partial(_toy_denoise, params)
  eager = ddpm.sample_ddim(denoise_fn, schedule, jax.random.key(8), shape, 10)
  np.testing.assert_array_equal(
    eager, ddpm.sample_ddim(denoise_fn, schedule, jax.random.key(8), shape, 10)
  )
  with pytest.raises(ValueError, match="num_steps"):
    ddpm.sample_ddim(denoise_fn, schedule, jax.random.key(8), shape, 51)


def test_ddim_timesteps():
  np.testing.assert_array_equal(ddpm.ddim_timesteps(10, 4), [9, 6, 3, 0])
  np.testing.assert_array_equal(ddpm.ddim_timesteps(10, 1), [9])
  np.testing.assert_array_equal(ddpm.ddim_timesteps(5, 5), [4, 3, 2, 1, 0])
  steps = ddpm.ddim_timesteps(1000, 50)
  assert steps[0] == 999 and steps[-1] == 0 and np.all(np.diff(steps) < 0)


def test_ddpm_trajectory():
  schedule = ddpm.linear_schedule(20, 1e-3, 0.2)
  shape = (3, 2, 2, 1)
  key = jax.random.key(10)
  denoise_fn = functools.partial(_toy_denoise, 0.5)
  x0, trajectory = ddpm.sample_ddpm(
    denoise_fn, schedule, key, shape, clip=False, return_trajectory_at=(19, 0, 10)
  )
  assert trajectory.shape == (3,) + shape
  # t = T − 1 records x_T, the draw from the documented init_key.
  x_T = jax.random.normal(jax.random.split(key)[0], shape)
  np.testing.assert_array_equal(trajectory[0], x_T)
  # The last step (t = 0) adds no noise: x_0 is the reverse mean at the recorded input.
  t0 = jnp.zeros(3, jnp.int32)
  mean, *_ = ddpm.p_mean_variance(denoise_fn, schedule, trajectory[1], t0, clip=False)
  np.testing.assert_allclose(x0, mean, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(x0, ddpm.sample_ddpm(denoise_fn, schedule, key, shape, clip=False))
  with pytest.raises(ValueError, match="return_trajectory_at"):
    ddpm.sample_ddpm(denoise_fn, schedule, key, shape, return_trajectory_at=(20,))


# Gaussian data x_0 ~ N(μ, s²) per dimension, and its exact noise predictor
# E[ε | x_t] = √(1−ᾱ_t)(x_t − √ᾱ_t μ) / (ᾱ_t s² + 1 − ᾱ_t).
MU, S = 0.3, 0.2


def _gaussian_denoise(schedule, x, t):
  ab = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)
  return jnp.sqrt(1 - ab) * (x - jnp.sqrt(ab) * MU) / (ab * S**2 + 1 - ab)


def _posterior_x0(ab):
  """E[x_0 | x_t] = a x_t + b for the Gaussian data."""
  a = np.sqrt(ab) * S**2 / (ab * S**2 + 1 - ab)
  return a, MU - a * np.sqrt(ab) * MU


def _exact_sampler_moments(schedule, sampler, variance=None, num_steps=None):
  """Mean and variance of the sampler's output: every step is an affine map plus Gaussian noise.

  Starting from x_T ~ N(0, 1), x ← A x + B + σ z gives m ← A m + B, v ← A² v + σ², in float64.
  """
  s = _f64(schedule)
  m, v = 0.0, 1.0
  if sampler == "ddpm":
    for t in range(schedule.num_steps - 1, -1, -1):
      a, b = _posterior_x0(s["alpha_bars"][t])
      c1, c2 = s["posterior_mean_coef1"][t], s["posterior_mean_coef2"][t]
      sigma2 = 0.0 if t == 0 else s["betas" if variance == "beta" else "posterior_variance"][t]
      m, v = c1 * (a * m + b) + c2 * m, (c1 * a + c2) ** 2 * v + sigma2
    return m, v
  steps = ddpm.ddim_timesteps(schedule.num_steps, num_steps)
  for i, t in enumerate(steps):
    ab = s["alpha_bars"][t]
    ab_next = s["alpha_bars"][steps[i + 1]] if i + 1 < len(steps) else 1.0
    a, b = _posterior_x0(ab)
    # x_next = √ᾱ_next x̂_0 + √(1 − ᾱ_next) ε̂ with ε̂ = (x − √ᾱ x̂_0) / √(1 − ᾱ).
    ea, eb = (1 - np.sqrt(ab) * a) / np.sqrt(1 - ab), -np.sqrt(ab) * b / np.sqrt(1 - ab)
    A = np.sqrt(ab_next) * a + np.sqrt(1 - ab_next) * ea
    B = np.sqrt(ab_next) * b + np.sqrt(1 - ab_next) * eb
    m, v = A * m + B, A * A * v
  return m, v


@pytest.mark.parametrize(
  "schedule_name, sampler, variance",
  [("linear", "ddpm", "beta"), ("linear", "ddpm", "beta_tilde"), ("cosine", "ddim", None)],
)
def test_samplers_recover_gaussian_data(schedule_name, sampler, variance):
  schedule = ddpm.make_schedule(schedule_name, 200)
  shape = (10_000, 2, 2, 1)  # 40 000 i.i.d. scalars
  denoise_fn = functools.partial(_gaussian_denoise, schedule)
  key = jax.random.key(11)
  # No clipping: the affine analysis below needs it, and N(0.3, 0.2²) puts 2e-4 of its mass
  # beyond 1.
  if sampler == "ddpm":
    x = ddpm.sample_ddpm(denoise_fn, schedule, key, shape, variance=variance, clip=False)
  else:
    x = ddpm.sample_ddim(denoise_fn, schedule, key, shape, num_steps=100, clip=False)
  mean, var = _exact_sampler_moments(schedule, sampler, variance, num_steps=100)
  # 1. The implementation: sample moments match the sampler's exact output law.
  _assert_moments(x, mean, var)
  # 2. The method: that law is close to the data. Its bias is discretisation error at T = 200,
  # from the analysis above: |mean − μ| < 4e-4 and std/s − 1 = +2.4% (β), −7.3% (β̃),
  # −3.2% (DDIM, 100 steps); so allow 1e-3 and 10% on top of the 5-SE sampling error.
  n = x.size
  assert abs(np.mean(x) - MU) < 1e-3 + N_SE * S / np.sqrt(n)
  assert abs(np.std(x) / S - 1) < 0.1 + N_SE / np.sqrt(2 * n)


# ----------------------------------------------------------------------------- bound


def _paper_decoder_nll(x, mean, log_scale):
  """Ho et al.'s discretized_gaussian_log_likelihood in float64 (scipy), negated."""
  inv_std = np.exp(-log_scale)
  cdf_plus = norm.cdf(inv_std * (x - mean + 1 / 255))
  cdf_min = norm.cdf(inv_std * (x - mean - 1 / 255))
  if x < -0.999:
    return -np.log(cdf_plus)
  if x > 0.999:
    return -np.log(1 - cdf_min)
  return -np.log(cdf_plus - cdf_min)


def test_discretized_gaussian_log_likelihood_by_hand():
  # Both edge bins, interior bins, and last a pixel 50σ into the tail, where the paper's 1e-12
  # clamp would give 27.6 nats and log_ndtr keeps the exact value (about 1234 nats).
  pixels = np.array([0, 1, 100, 128, 254, 255, 127])
  x = pixels / 127.5 - 1
  mean = np.array([-0.98, -0.99, -0.2, 0.01, 0.97, 0.3, x[-1] + 0.5])
  log_scale = np.log(np.array([0.01, 0.05, 0.3, 0.004, 0.02, 0.5, 0.01]))
  nll = jax.jit(lambda *args: -ddpm.discretized_gaussian_log_likelihood(*args))
  got = nll(ddpm.to_unit_range(jnp.asarray(pixels, jnp.uint8)), mean, log_scale)
  want = [_paper_decoder_nll(*args) for args in zip(x[:-1], mean[:-1], log_scale[:-1])]
  upper, lower = (-0.5 + 1 / 255) / 0.01, (-0.5 - 1 / 255) / 0.01
  want.append(-(norm.logcdf(upper) + np.log1p(-np.exp(norm.logcdf(lower) - norm.logcdf(upper)))))
  np.testing.assert_allclose(got, want, rtol=1e-4)


def _perfect_denoise(schedule, x0, x, t):
  """The true noise: it knows x_0, so p_θ's mean is the posterior mean."""
  ab = schedule.alpha_bars[t].reshape(-1, 1, 1, 1)
  return (x - jnp.sqrt(ab) * x0) / jnp.sqrt(1 - ab)


# One compile per call: the bound's ops outside its scan are many and small.
_bits_per_dim = jax.jit(
  ddpm.bits_per_dim,
  static_argnums=0,
  static_argnames=("num_timesteps_sampled", "variance", "timesteps_per_call"),
)


def test_bits_per_dim_of_a_perfect_model():
  schedule = ddpm.linear_schedule()  # T = 1000, ᾱ_{T−1} = 4.0e-5
  pixels = np.array([0, 255, 17, 128, 200, 63, 255, 0], np.uint8).reshape(2, 2, 2, 1)
  x0 = ddpm.to_unit_range(jnp.asarray(pixels))
  denoise_fn = functools.partial(_perfect_denoise, schedule, x0)
  s = _f64(schedule)
  dims_ln2 = 4 * np.log(2.0)
  # Decoder: mean x_0 exactly, σ² = β̃_1, so each pixel is the hand formula at x = mean.
  log_scale = 0.5 * np.log(s["posterior_variance"][1])
  x = pixels.reshape(2, 4) / 127.5 - 1
  want_decoder = np.array([[_paper_decoder_nll(v, v, log_scale) for v in row] for row in x])
  want_decoder = want_decoder.sum(1) / dims_ln2
  # Prior: KL(N(√ᾱ x_0, 1 − ᾱ) || N(0, 1)) = ½(ᾱ x_0² − ᾱ − log(1 − ᾱ)) per dimension.
  ab = s["alpha_bars"][-1]
  want_prior = (0.5 * (ab * x**2 - ab - np.log1p(-ab))).sum(1) / dims_ln2
  # KL terms: zero with β̃; with β the variance mismatch leaves ½(r − 1 − log r), r = β̃_t / β_t.
  r = s["posterior_variance"][1:] / s["betas"][1:]
  want_kl = {"beta_tilde": 0.0, "beta": np.sum(0.5 * (r - 1 - np.log(r))) / np.log(2.0)}
  for variance, kl in want_kl.items():
    bpd = _bits_per_dim(denoise_fn, schedule, x0, jax.random.key(12), variance=variance)
    assert all(value.shape == (2,) for value in bpd.values())
    np.testing.assert_allclose(bpd["decoder"], want_decoder, rtol=1e-4)
    np.testing.assert_allclose(bpd["prior"], want_prior, rtol=1e-3)
    assert np.all(np.asarray(bpd["prior"]) < 1e-4)
    # β̃: the means differ only by float32 rounding of x̂_0 (≲1e-6), weighted by coef1² / β̃_t.
    np.testing.assert_allclose(bpd["kl_sum"], kl, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
      bpd["total"], bpd["prior"] + bpd["decoder"] + bpd["kl_sum"], rtol=1e-6
    )


def test_subsampled_bound_is_the_exact_sum_at_k_equal_t_minus_1():
  schedule = ddpm.make_schedule("cosine", 20)
  x0 = ddpm.to_unit_range(jax.random.randint(jax.random.key(13), (3, 2, 2, 1), 0, 256))
  denoise_fn = functools.partial(_toy_denoise, 0.9)
  key = jax.random.key(14)
  exact = _bits_per_dim(denoise_fn, schedule, x0, key)
  # K = T − 1, all 19 timesteps in one vmapped call: the same terms (the noise depends on image
  # and t only) summed in another order.
  full = _bits_per_dim(
    denoise_fn, schedule, x0, key, num_timesteps_sampled=19, timesteps_per_call=0
  )
  for name in exact:
    np.testing.assert_allclose(full[name], exact[name], rtol=1e-5, err_msg=name)
  few = _bits_per_dim(denoise_fn, schedule, x0, key, num_timesteps_sampled=5)
  np.testing.assert_allclose(few["decoder"], exact["decoder"], rtol=1e-6)
  assert np.all(np.isfinite(few["kl_sum"])) and not np.allclose(few["kl_sum"], exact["kl_sum"])
  with pytest.raises(ValueError, match="num_timesteps_sampled"):
    ddpm.bits_per_dim(denoise_fn, schedule, x0, key, num_timesteps_sampled=20)


# ----------------------------------------------------------------------------- engine task


class _TinyEps(nn.Module):
  @nn.compact
  def __call__(self, x, t, deterministic=True):
    del deterministic  # no dropout
    return nn.Dense(x.shape[-1])(x) + nn.Embed(8, x.shape[-1])(t)[:, None, None, :]


@pytest.mark.parametrize("prediction, weighting", [("eps", "uniform"), ("v", "min_snr")])
def test_ddpm_task_loss_is_the_diffusion_loss_on_scaled_images(prediction, weighting):
  # The engine run itself is left to the end-to-end tests, which compile a Trainer.
  schedule = ddpm.make_schedule("linear", 8)
  task = ddpm.ddpm_task(_TinyEps(), schedule, (4, 4, 1), prediction, weighting, 2.0)
  images = np.random.default_rng(0).integers(0, 256, (4, 4, 4, 1)).astype(np.uint8)
  params = task.init(jax.random.key(15))
  batch, key = {"image": jnp.asarray(images)}, jax.random.key(16)
  (loss, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(params, batch, key)
  want = ddpm.diffusion_loss(
    lambda x, t: _TinyEps().apply({"params": params}, x, t),
    schedule,
    jnp.asarray(images, jnp.float32) / 127.5 - 1,
    key,
    prediction,
    weighting,
    2.0,
  )
  np.testing.assert_allclose(loss, want, rtol=1e-6)
  assert metrics == {}
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def _perturbed(params, key):
  """Every leaf plus N(0, 0.1²) noise: a fresh U-Net's zero output layer predicts zero."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(
    treedef, [leaf + 0.1 * jax.random.normal(k, leaf.shape) for leaf, k in zip(leaves, keys)]
  )


def test_ddpm_task_trains_with_dropout_and_leaves_a_dropout_free_loss_as_it_was():
  schedule = ddpm.make_schedule("linear", 8)
  models = {rate: make_unet("tiny", dropout=rate) for rate in (0.0, 0.5)}
  tasks = {rate: ddpm.ddpm_task(model, schedule, (8, 8, 1)) for rate, model in models.items()}
  params = _perturbed(jax.jit(tasks[0.0].init)(jax.random.key(20)), jax.random.key(21))
  images = np.random.default_rng(2).integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)
  batch, key = {"image": jnp.asarray(images)}, jax.random.key(22)

  @jax.jit
  def deterministic_loss(params, batch, key):  # as sampling applies either model: no dropout
    model_fn = functools.partial(models[0.0].apply, {"params": params})
    return ddpm.diffusion_loss(model_fn, schedule, ddpm.to_unit_range(batch["image"]), key)

  want = deterministic_loss(params, batch, key)
  loss = {rate: jax.jit(task.loss)(params, batch, key)[0] for rate, task in tasks.items()}
  # Without dropout the task's loss is the deterministic one, from the same draws of t and
  # noise; separately compiled float32 programs may round a few ulps apart (rtol 1e-6).
  np.testing.assert_allclose(loss[0.0], want, rtol=1e-6)
  # With dropout at rate 0.5 half the activations of every residual block are dropped: the
  # training loss moves by far more than rounding (before the fix it did not: dropout never
  # acted).
  assert np.isfinite(loss[0.5]) and abs(loss[0.5] - want) > 1e-3 * abs(want)


def test_bfloat16_compute_keeps_float32_parameters_gradients_and_loss():
  from jaxdiff.experiments.ddpm_mnist.config import DDPMConfig  # pylint: disable=g-import-not-at-top

  schedule = ddpm.make_schedule("linear", 8)
  models = {
    dtype: DDPMConfig(model_size="tiny", compute_dtype=dtype).make_model()
    for dtype in ("float32", "bfloat16")
  }
  tasks = {dtype: ddpm.ddpm_task(model, schedule, (8, 8, 1)) for dtype, model in models.items()}
  params = _perturbed(jax.jit(tasks["float32"].init)(jax.random.key(17)), jax.random.key(19))
  images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 1)).astype(np.uint8)
  batch, key = {"image": jnp.asarray(images)}, jax.random.key(18)
  loss = {}
  for dtype, task in tasks.items():
    (loss[dtype], _), grads = jax.jit(jax.value_and_grad(task.loss, has_aux=True))(
      params, batch, key
    )
    assert loss[dtype].dtype == jnp.float32
    assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}
  # bfloat16 keeps 8 significant bits (relative rounding 2^-9 per operation): the losses differ,
  # by far less than the 5% allowed here.
  assert loss["bfloat16"] != loss["float32"]
  np.testing.assert_allclose(loss["bfloat16"], loss["float32"], rtol=0.05)
  with pytest.raises(ValueError, match="float16"):
    DDPMConfig(compute_dtype="float16")


def test_pixel_range_round_trip():
  pixels = jnp.arange(256, dtype=jnp.uint8)
  x = ddpm.to_unit_range(pixels)
  assert x.dtype == jnp.float32 and x[0] == -1 and x[-1] == 1
  np.testing.assert_array_equal(ddpm.to_uint8(x), pixels)
  np.testing.assert_array_equal(ddpm.to_uint8(jnp.array([-1.5, 1.5])), [0, 255])  # clipped


# ----------------------------------------------------------------------------- package API

# jaxdiff.ddpm.__all__ as it was when ddpm was one module: all of it stays importable (less the
# optax EMA transformation and the old name of ddpm_task, dropped before any release).
OLD_ALL = (
  "SCHEDULES",
  "VARIANCES",
  "NoiseSchedule",
  "bits_per_dim",
  "cosine_schedule",
  "ddim_timesteps",
  "discretized_gaussian_log_likelihood",
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
)


def test_old_public_names_stay_importable():
  missing = [name for name in OLD_ALL + ("DenoiseFn",) if not hasattr(ddpm, name)]
  assert not missing, missing
  added = {"ddpm_task", "langevin_corrector_step", "sample_pc", "LOSS_WEIGHTINGS", "PREDICTIONS",
           "PREDICTORS", "SOLVER_ORDERS", "sample_dpm_solver", "guided_denoiser",
           "denoiser", "diffusion_loss", "eps_from_prediction", "loss_weight",
           "prediction_target", "signal_to_noise"}  # fmt: skip
  assert set(OLD_ALL) | added == set(ddpm.__all__)


def test_ddpm_package_does_not_import_the_training_engine():
  code = "import jaxdiff.ddpm, sys; assert not {'jaxdiff.engine', 'jaxdiff.train'} & {*sys.modules}"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
