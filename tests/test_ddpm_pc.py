"""Predictor–corrector sampling: the corrector is the library's Langevin step.

With Gaussian data x₀ ~ N(μ, s²I) the optimal noise prediction at every t is known in closed
form, ε*(x, t) = √(1 − ᾱ)·(x − √ᾱ μ) / (ᾱ s² + 1 − ᾱ), so a sampler given it should return the
data distribution up to its own discretisation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from jaxdiff import ddpm, parallel
from jaxdiff.langevin import LangevinNoiseState, add_langevin_noise

MEAN, STD = 0.3, 0.2
SCHEDULE = ddpm.make_schedule("linear", 200)


def exact_denoise(x, t):
  alpha_bar = SCHEDULE.alpha_bars[t].reshape((-1,) + (1,) * (x.ndim - 1))
  marginal_variance = alpha_bar * STD**2 + 1 - alpha_bar
  return jnp.sqrt(1 - alpha_bar) * (x - jnp.sqrt(alpha_bar) * MEAN) / marginal_variance


def test_zero_corrector_steps_are_the_ddpm_sampler_bit_for_bit():
  key, shape = jax.random.key(0), (8, 3)
  pc = jax.jit(lambda k: ddpm.sample_pc(exact_denoise, SCHEDULE, k, shape, corrector_steps=0,
                                        return_trajectory_at=(199, 50)))(key)  # fmt: skip
  ancestral = jax.jit(lambda k: ddpm.sample_ddpm(exact_denoise, SCHEDULE, k, shape,
                                                 return_trajectory_at=(199, 50)))(key)  # fmt: skip
  for got, want in zip(pc, ancestral):
    np.testing.assert_array_equal(got, want)


def test_zero_corrector_steps_with_the_ddim_predictor_are_ddim_bit_for_bit():
  key, shape = jax.random.key(0), (8, 3)
  pc = jax.jit(lambda k: ddpm.sample_pc(exact_denoise, SCHEDULE, k, shape, corrector_steps=0,
                                        predictor="ddim", num_steps=20))(key)  # fmt: skip
  ddim = jax.jit(lambda k: ddpm.sample_ddim(exact_denoise, SCHEDULE, k, shape, num_steps=20))(key)
  np.testing.assert_array_equal(pc, ddim)


def test_the_corrector_noise_is_the_langevin_transformations():
  x = jax.random.normal(jax.random.key(1), (4, 5))
  key, t, count, snr = jax.random.key(2), jnp.int32(30), jnp.int32(7), 0.2
  corrected = ddpm.langevin_corrector_step(exact_denoise, SCHEDULE, x, t, key, count, snr)
  score = -exact_denoise(x, jnp.full((4,), t)) / SCHEDULE.sqrt_one_minus_alpha_bars[t]
  norm = jnp.mean(jnp.linalg.norm(score, axis=-1))
  step = 2 * SCHEDULE.alphas[t] * (snr * np.sqrt(5) / norm) ** 2
  noise, _ = add_langevin_noise(key, step, 1.0).update(
    jnp.zeros_like(x), LangevinNoiseState(count=count, key=key)
  )
  # Same key and count, same draws: what the corrector added beyond its drift is that noise.
  np.testing.assert_allclose(corrected - (x + step * score), noise, rtol=1e-5, atol=1e-6)
  assert float(jnp.std(noise)) == pytest.approx(float(jnp.sqrt(2 * step)), rel=0.5)


@pytest.mark.parametrize(
  "predictor, corrector_steps", [("ddpm", 0), ("ddpm", 1), ("ddpm", 2), ("ddim", 1)]
)
def test_with_the_exact_score_the_samples_have_the_datas_moments(predictor, corrector_steps):
  count, dims = 4000, 2
  # The DDIM predictor takes every one of the 200 steps: at fewer its own discretisation
  # shrinks the spread (3 % at 100 steps), which is the predictor's error, not the corrector's.
  sample = jax.jit(lambda k: ddpm.sample_pc(exact_denoise, SCHEDULE, k, (count, dims),
                                            corrector_steps=corrector_steps, snr=0.16,
                                            clip=False, predictor=predictor,
                                            num_steps=200))  # fmt: skip
  samples = np.asarray(sample(jax.random.key(3)), np.float64).ravel()
  n = samples.size
  # 8000 draws: the sample mean's SE is s/√n = 0.0022 and the variance's s²·√(2/n) = 0.0006.
  # The 200-step reverse process itself is within that (its variance 0.0012 high without a
  # corrector); a corrector at snr 1 instead of 0.16 is 0.03 off and fails.
  assert abs(samples.mean() - MEAN) < 5 * STD / np.sqrt(n)
  assert abs(samples.var() - STD**2) < 5 * STD**2 * np.sqrt(2 / n)


@pytest.mark.parametrize("predictor", ["ddpm", "ddim"])
def test_a_batch_sharded_on_four_devices_gives_the_same_samples(predictor):
  mesh = parallel.make_mesh()
  assert mesh.size == 4
  noise = jax.random.normal(jax.random.key(4), (16, 3))

  def sample(x_T):
    return ddpm.sample_pc(exact_denoise, SCHEDULE, jax.random.key(5), (16, 3),
                          corrector_steps=1, initial_noise=x_T, predictor=predictor,
                          num_steps=50)  # fmt: skip

  single = jax.jit(sample)(noise)
  sharded_noise = jax.device_put(noise, NamedSharding(mesh, PartitionSpec(parallel.DATA_AXIS)))
  sharded = jax.jit(sample)(sharded_noise)
  assert len(sharded.addressable_shards) == 4
  # The snr rule's norm is a mean over the whole batch, so the step sizes agree; only the
  # order of that mean's additions may differ.
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)


def test_bad_corrector_arguments():
  with pytest.raises(ValueError, match="unknown predictor 'euler'"):
    ddpm.sample_pc(exact_denoise, SCHEDULE, jax.random.key(0), (2, 2), predictor="euler")
  with pytest.raises(ValueError, match="return_trajectory_at needs the ancestral predictor"):
    ddpm.sample_pc(exact_denoise, SCHEDULE, jax.random.key(0), (2, 2), predictor="ddim",
                   return_trajectory_at=(5,))  # fmt: skip
  with pytest.raises(ValueError, match="corrector_steps"):
    ddpm.sample_pc(exact_denoise, SCHEDULE, jax.random.key(0), (2, 2), corrector_steps=-1)
  with pytest.raises(ValueError, match="snr"):
    ddpm.sample_pc(exact_denoise, SCHEDULE, jax.random.key(0), (2, 2), snr=0.0)
