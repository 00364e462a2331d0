"""Samplers: ancestral DDPM sampling, predictor–corrector sampling, and DDIM.

Each runs its loop as one ``lax.scan`` and draws the noise of step ``t`` from
``fold_in(step_key, t)``, so a sample depends only on the key (or the given ``x_T``). The
predictor–corrector sampler's corrector is the Langevin step of :mod:`jaxdiff.langevin`, the
same kernel the optimizers add to a gradient step, applied to minus the score.

References:
  Song et al., `Score-Based Generative Modeling through Stochastic Differential Equations
  <https://arxiv.org/abs/2011.13456>`_, ICLR 2021 (the predictor–corrector samplers).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.ddpm.losses import DenoiseFn, _check_variance, p_mean_variance, predict_x0_from_eps
from jaxdiff.ddpm.schedules import NoiseSchedule
from jaxdiff.langevin import LangevinNoiseState, add_langevin_noise

#: The predictor–corrector sampler's predictors, the ancestral step or the DDIM step.
PREDICTORS = ("ddpm", "ddim")


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

  Each step draws ``x_{t−1} = mean + σ_t z`` (:func:`~jaxdiff.ddpm.losses.p_mean_variance`),
  except the last (``t = 0``), which returns the mean. The loop is one ``lax.scan``. Under
  ``jax.jit`` mark ``shape``, ``variance``, ``clip`` and ``return_trajectory_at`` static.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see :mod:`jaxdiff.ddpm`).
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
    >>> from jaxdiff.ddpm import make_schedule, to_uint8
    >>> from jaxdiff.models import make_unet
    >>> model = make_unet("tiny", channel_multipliers=(1,))  # "tiny" at one resolution
    >>> schedule = make_schedule("linear", 10)
    >>> x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32)
    >>> params = model.init(jax.random.key(0), x, t)["params"]
    >>> sample = jax.jit(
    ...   lambda params, key: sample_ddpm(
    ...     lambda x, t: model.apply({"params": params}, x, t), schedule, key, (4, 8, 8, 1)
    ...   )
    ... )
    >>> images = to_uint8(sample(params, jax.random.key(1)))
    >>> images.shape, images.dtype
    ((4, 8, 8, 1), dtype('uint8'))
  """
  return _ancestral(denoise_fn, schedule, key, shape, variance, clip, return_trajectory_at,
                    initial_noise, corrector_steps=0, snr=0.0)  # fmt: skip


def langevin_corrector_step(
  denoise_fn: DenoiseFn,
  schedule: NoiseSchedule,
  x: jax.Array,
  t: jax.Array,
  key: jax.Array,
  count: jax.Array,
  snr: float,
) -> jax.Array:
  """One Langevin corrector step at noise level ``t``: ``x + ε·s + √(2ε)·z``.

  The score of ``q(x_t)`` is ``s = −ε_θ(x_t, t) / √(1 − ᾱ_t)``, and the step size follows Song
  et al.'s signal-to-noise rule ``ε = 2·α_t·(snr·‖z‖ / ‖s‖)²``, both norms the mean over the
  batch of per-example norms (global over the devices the batch is sharded on), with
  ``‖z‖ = √d``, the norm a standard normal draw in ``d`` dimensions concentrates at. The step
  is SGLD on ``−log q(x_t)`` at ``D = 1`` computed by :func:`jaxdiff.langevin.add_langevin_noise`:
  the drift ``−ε·(−s)`` plus its noise ``N(0, 2ε)``, drawn from ``fold_in(key, count)``.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see :mod:`jaxdiff.ddpm`).
    schedule: the noise schedule.
    x: the samples at level ``t``, ``(batch, ...)``.
    t: the timestep, an int32 scalar.
    key: the corrector's PRNG key.
    count: the corrector step's index: step ``count`` draws from ``fold_in(key, count)``.
    snr: the target signal-to-noise ratio (0.16 in Song et al.'s VP experiments).

  Returns:
    The corrected samples, the shape of ``x``.
  """
  t_batch = jnp.full((x.shape[0],), t, jnp.int32)
  score = -denoise_fn(x, t_batch) / schedule.sqrt_one_minus_alpha_bars[t]
  score_norm = jnp.mean(jnp.linalg.norm(score.reshape(x.shape[0], -1), axis=-1))
  noise_norm = np.sqrt(np.prod(x.shape[1:]))
  step_size = 2.0 * schedule.alphas[t] * (snr * noise_norm / score_norm) ** 2
  langevin = add_langevin_noise(key, step_size, 1.0)
  drift = step_size * score  # what optax.sgd(ε) makes of the gradient −s
  updates, _ = langevin.update(drift, LangevinNoiseState(count=count, key=key))
  return x + updates


def sample_pc(
  denoise_fn: DenoiseFn,
  schedule: NoiseSchedule,
  key: jax.Array,
  shape: tuple[int, ...],
  corrector_steps: int = 1,
  snr: float = 0.16,
  variance: str = "beta",
  clip: bool = True,
  return_trajectory_at: tuple[int, ...] = (),
  initial_noise: jax.Array | None = None,
  predictor: str = "ddpm",
  num_steps: int = 100,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Predictor–corrector sampling: at each level, Langevin corrector steps, then a predictor.

  At every timestep ``t`` of the predictor, from ``T − 1`` down to 0, ``corrector_steps`` steps
  of :func:`langevin_corrector_step` move the samples towards ``q(x_t)``, then the predictor
  takes them to the next level: the ancestral step of :func:`sample_ddpm` (``"ddpm"``, every
  one of the ``T`` timesteps) or the deterministic step of :func:`sample_ddim` (``"ddim"``, the
  ``num_steps`` of :func:`ddim_timesteps`). With ``corrector_steps=0`` this is
  :func:`sample_ddpm` or :func:`sample_ddim` with ``eta=0``, bit for bit. Under ``jax.jit``
  mark ``shape``, ``corrector_steps``, ``predictor``, ``num_steps``, ``variance``, ``clip``
  and ``return_trajectory_at`` static.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see :mod:`jaxdiff.ddpm`).
    schedule: the noise schedule.
    key: split as :func:`sample_ddpm`'s; the corrector draws from ``fold_in(step_key, T)``,
      a stream the predictor's ``fold_in(step_key, t)``, ``t < T``, never uses.
    shape: the batch shape.
    corrector_steps: Langevin steps per noise level, ``M ≥ 0``.
    snr: the corrector's target signal-to-noise ratio.
    variance: the ancestral predictor's ``σ_t²``, as for :func:`sample_ddpm`.
    clip: clip each predicted ``x_0`` to ``[-1, 1]``.
    return_trajectory_at: as for :func:`sample_ddpm` (the sample entering each level); the
      ancestral predictor only.
    initial_noise: ``x_T`` to start from instead of a draw.
    predictor: one of :data:`PREDICTORS`, ``"ddpm"`` or ``"ddim"``.
    num_steps: the DDIM predictor's steps, in ``[1, T]`` (unused by ``"ddpm"``).

  Returns:
    As :func:`sample_ddpm`.

  References:
    Song et al., `Score-Based Generative Modeling through Stochastic Differential Equations
    <https://arxiv.org/abs/2011.13456>`_, ICLR 2021, Algorithm 3 (VP) and their code's
    ``LangevinCorrector``.
  """
  if corrector_steps < 0:
    raise ValueError(f"corrector_steps must be >= 0, got {corrector_steps}")
  if not snr > 0:
    raise ValueError(f"snr must be positive, got {snr}")
  if predictor not in PREDICTORS:
    raise ValueError(f"unknown predictor {predictor!r}; choose one of {PREDICTORS}")
  if predictor == "ddim":
    if return_trajectory_at:
      raise ValueError("return_trajectory_at needs the ancestral predictor (predictor='ddpm')")
    return _ddim(denoise_fn, schedule, key, shape, num_steps, 0.0, clip, initial_noise,
                 corrector_steps, snr)  # fmt: skip
  return _ancestral(denoise_fn, schedule, key, shape, variance, clip, return_trajectory_at,
                    initial_noise, corrector_steps, snr)  # fmt: skip


def _correct(denoise_fn, schedule, x, t, level, corrector_key, corrector_steps, snr):
  """The corrector steps at timestep ``t``, the ``level``-th of the predictor's levels."""
  for m in range(corrector_steps):
    count = level * corrector_steps + m
    x = langevin_corrector_step(denoise_fn, schedule, x, t, corrector_key, count, snr)
  return x


def _ancestral(denoise_fn, schedule, key, shape, variance, clip, return_trajectory_at,
               initial_noise, corrector_steps, snr):  # fmt: skip
  _check_variance(variance)
  num_steps = schedule.num_steps
  record = tuple(int(t) for t in return_trajectory_at)
  if any(not 0 <= t < num_steps for t in record):
    raise ValueError(f"return_trajectory_at must lie in [0, {num_steps}), got {record}")
  init_key, step_key = jax.random.split(key)
  corrector_key = jax.random.fold_in(step_key, num_steps)
  x = _initial_noise(init_key, shape, initial_noise)
  record_at = jnp.asarray(record, jnp.int32).reshape((-1,) + (1,) * len(shape))
  trajectory = jnp.zeros((len(record),) + tuple(shape), x.dtype)

  def step(carry, t):
    x, trajectory = carry
    if record:
      trajectory = jnp.where(record_at == t, x[None], trajectory)
    x = _correct(denoise_fn, schedule, x, t, t, corrector_key, corrector_steps, snr)
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
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see :mod:`jaxdiff.ddpm`).
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
    >>> from jaxdiff.ddpm import make_schedule
    >>> schedule = make_schedule("linear", 10)
    >>> denoise_fn = lambda x, t: 0.5 * x  # a toy network's ε̂(x_t, t)
    >>> x_T = jax.random.normal(jax.random.key(0), (4, 2))
    >>> a, b = [sample_ddim(denoise_fn, schedule, jax.random.key(seed), (4, 2), num_steps=5,
    ...                     initial_noise=x_T) for seed in (1, 2)]
    >>> bool(jnp.array_equal(a, b))  # η = 0: deterministic given x_T
    True
  """
  return _ddim(denoise_fn, schedule, key, shape, num_steps, eta, clip, initial_noise,
               corrector_steps=0, snr=0.0)  # fmt: skip


def _ddim(denoise_fn, schedule, key, shape, num_steps, eta, clip, initial_noise,
          corrector_steps, snr):  # fmt: skip
  timesteps = ddim_timesteps(schedule.num_steps, num_steps)
  init_key, step_key = jax.random.split(key)
  corrector_key = jax.random.fold_in(step_key, schedule.num_steps)
  x = _initial_noise(init_key, shape, initial_noise)
  alpha_bars_next = jnp.append(schedule.alpha_bars[timesteps[1:]], 1.0)

  def step(x, inputs):
    level, t, alpha_bar_next = inputs
    x = _correct(denoise_fn, schedule, x, t, level, corrector_key, corrector_steps, snr)
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

  levels = jnp.arange(len(timesteps), dtype=jnp.int32)
  x, _ = jax.lax.scan(step, x, (levels, jnp.asarray(timesteps), alpha_bars_next))
  return x


#: Orders of :func:`sample_dpm_solver`: 1 is DDIM's step, 2 is DPM-Solver++(2M).
SOLVER_ORDERS = (1, 2)


def sample_dpm_solver(
  denoise_fn: DenoiseFn,
  schedule: NoiseSchedule,
  key: jax.Array,
  shape: tuple[int, ...],
  num_steps: int = 20,
  order: int = 2,
  clip: bool = True,
  initial_noise: jax.Array | None = None,
) -> jax.Array:
  """DPM-Solver++(2M) (Lu et al. 2022): the probability-flow ODE in ``num_steps`` evaluations.

  With ``α_t = √ᾱ_t``, ``σ_t = √(1 − ᾱ_t)``, ``λ_t = log(α_t / σ_t)`` and the data prediction
  ``x̂_0(x, t) = (x − σ_t ε_θ(x, t)) / α_t`` (clipped to ``[-1, 1]`` with ``clip``), the solver
  visits the timesteps ``t_0 > … > t_{K−1} = 0`` of :func:`ddim_timesteps` and from ``t_{i−1}``
  to ``t_i``, with ``h_i = λ_{t_i} − λ_{t_{i−1}}``, takes

  .. code-block:: text

    x_{t_i} = (σ_{t_i} / σ_{t_{i−1}}) x_{t_{i−1}} + α_{t_i} (1 − e^{−h_i}) D_i
    D_i = (1 + 1/(2 r_i)) x̂_0(t_{i−1}) − 1/(2 r_i) x̂_0(t_{i−2}),   r_i = h_{i−1} / h_i

  the second-order multistep update on the ODE's exact exponential-integrator form; the first
  step, and every step with ``order=1``, uses ``D_i = x̂_0(t_{i−1})``, which is DDIM's step
  (η = 0). The last evaluation's ``x̂_0`` at ``t = 0`` is the sample (the step to ``σ = 0``,
  where ``h`` is infinite, is first order). ``K`` evaluations of ``denoise_fn`` in all, one
  ``lax.scan``; under ``jax.jit`` mark ``shape``, ``num_steps``, ``order`` and ``clip``
  static. The error of the sampled distribution falls as ``K^{−order}``.

  Args:
    denoise_fn: ``denoise_fn(x_t, t) -> eps`` (see :mod:`jaxdiff.ddpm`); a network that
      predicts ``v`` or ``x_0`` enters through :func:`~jaxdiff.ddpm.losses.denoiser`.
    schedule: the noise schedule the model was trained with; its values must be known when the
      sampler is traced (close over it rather than passing it as a ``jax.jit`` argument), as
      the timesteps depend on them.
    key: split as :func:`sample_ddim`'s, so that the same key starts both from the same
      ``x_T = normal(init_key, shape)``; the solver draws no other noise.
    shape: the batch shape.
    num_steps: ``K``, model evaluations, in ``[1, T]``.
    order: one of :data:`SOLVER_ORDERS`.
    clip: clip each ``x̂_0`` to ``[-1, 1]``.
    initial_noise: ``x_T`` to start from instead of a draw from ``init_key``.

  Returns:
    The samples ``x_0``, float32 of ``shape``.

  Example:
    >>> from jaxdiff.ddpm import make_schedule
    >>> schedule = make_schedule("linear", 10)
    >>> denoise_fn = lambda x, t: 0.5 * x  # a toy network's ε̂(x_t, t)
    >>> sample_dpm_solver(denoise_fn, schedule, jax.random.key(0), (4, 2), num_steps=5).shape
    (4, 2)
    >>> first = sample_dpm_solver(denoise_fn, schedule, jax.random.key(0), (4, 2), num_steps=10,
    ...                           order=1)
    >>> ddim = sample_ddim(denoise_fn, schedule, jax.random.key(0), (4, 2), num_steps=10)
    >>> bool(jnp.allclose(first, ddim, atol=1e-6))  # first order on every timestep: DDIM
    True

  References:
    Lu et al., `DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
    Models <https://arxiv.org/abs/2211.01095>`_, 2022, Algorithm 2.
  """
  if order not in SOLVER_ORDERS:
    raise ValueError(f"order must be one of {SOLVER_ORDERS}, got {order!r}")
  timesteps = solver_timesteps(schedule, num_steps)
  init_key, _ = jax.random.split(key)
  x = _initial_noise(init_key, shape, initial_noise)
  alphas = schedule.sqrt_alpha_bars[timesteps]
  sigmas = schedule.sqrt_one_minus_alpha_bars[timesteps]
  log_snrs = jnp.log(alphas) - jnp.log(sigmas)
  steps = jnp.diff(log_snrs)  # h_i, i = 1 … K − 1

  def data_prediction(x, t):
    t_batch = jnp.full((shape[0],), t, jnp.int32)
    x0 = predict_x0_from_eps(schedule, x, t_batch, denoise_fn(x, t_batch))
    return jnp.clip(x0, -1.0, 1.0) if clip else x0

  def step(carry, inputs):
    x, previous_x0, previous_h = carry
    i, t, h = inputs
    x0 = data_prediction(x, t)
    if order == 2:
      # 1/(2r) = h / (2 h_prev); the first step has no previous x̂_0 and is first order.
      half_inverse_ratio = jnp.where(i > 0, h / (2.0 * previous_h), 0.0)
      direction = (1.0 + half_inverse_ratio) * x0 - half_inverse_ratio * previous_x0
    else:
      direction = x0
    x = sigmas[i + 1] / sigmas[i] * x - alphas[i + 1] * jnp.expm1(-h) * direction
    return (x, x0, h), None

  indices = jnp.arange(len(timesteps) - 1, dtype=jnp.int32)
  carry = (x, jnp.zeros_like(x), jnp.ones((), jnp.float32))
  (x, _, _), _ = jax.lax.scan(step, carry, (indices, jnp.asarray(timesteps[:-1]), steps))
  return data_prediction(x, int(timesteps[-1]))


def solver_timesteps(schedule: NoiseSchedule, num_steps: int) -> np.ndarray:
  """:func:`sample_dpm_solver`'s ``num_steps`` timesteps: evenly spaced in ``λ_t = log(α_t/σ_t)``.

  From ``T − 1`` down to 0, each the timestep whose ``λ`` is nearest to its even share of
  ``[λ_{T−1}, λ_0]``, then made distinct from the last upwards (``λ`` changes fastest near
  ``t = 0``, where several shares can fall on one timestep).

  Args:
    schedule: a noise schedule with concrete values (not traced).
    num_steps: how many steps, in ``[1, T]``.

  Returns:
    A descending int32 numpy array of ``num_steps`` distinct timesteps; it starts at ``T − 1``
    and, for two steps or more, ends at 0.

  Raises:
    ValueError: ``num_steps`` outside ``[1, T]``, or a traced schedule.
  """
  total = schedule.num_steps
  if not 1 <= num_steps <= total:
    raise ValueError(f"num_steps must lie in [1, {total}], got {num_steps}")
  if isinstance(schedule.alpha_bars, jax.core.Tracer):
    raise ValueError(
      "the DPM-Solver's timesteps depend on the schedule's values: close over the schedule "
      "instead of passing it to jax.jit as an argument"
    )
  alpha_bars = np.asarray(schedule.alpha_bars, np.float64)
  log_snrs = 0.5 * (np.log(alpha_bars) - np.log1p(-alpha_bars))
  if num_steps == 1:
    return np.array([total - 1], np.int32)
  shares = np.linspace(log_snrs[-1], log_snrs[0], num_steps)
  steps = np.abs(log_snrs[None, :] - shares[:, None]).argmin(axis=1)
  # Room for the steps on either side (step i lies in [K − 1 − i, T − 1 − i]), then distinct:
  # each at least one above the next, which keeps it within its room.
  position = np.arange(num_steps)
  steps = np.clip(steps, num_steps - 1 - position, total - 1 - position)
  for i in range(num_steps - 2, -1, -1):
    steps[i] = max(steps[i], steps[i + 1] + 1)
  return steps.astype(np.int32)
