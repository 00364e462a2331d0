"""Stochastic gradient Langevin dynamics (SGLD) as optax transformations.

SGLD is the Euler–Maruyama discretisation of the Langevin SDE
``dθ = −∇L(θ) dt + √(2D) dW``:

.. math::

  θ_{t+1} = θ_t − η_t ∇L(θ_t) + ξ_t, \\qquad ξ_t \\sim N(0, 2 D_t η_t I).

The noise is a plain :class:`optax.GradientTransformation`,
:func:`add_langevin_noise`, placed *after* any optimizer in an
:func:`optax.chain`; :func:`langevin_sgd`, :func:`langevin_adam` and
:func:`psgld` are ready-made chains, and :func:`sghmc` is the momentum sampler.
Cyclical SG-MCMC is :func:`langevin_sgd` or :func:`sghmc` given
:func:`cyclical_learning_rate` and :func:`cyclical_diffusion` (:func:`cyclical` wraps a
sampler's factory so). Every sampler takes ``noise="rademacher"``, ``ξ_t`` of ``±√(2 D_t η_t)``
per element instead of a normal: the simplified weak Euler scheme (see
:func:`add_langevin_noise`).

Temperature: for small steps the chain samples ``p(θ) ∝ exp(−L(θ) / D)``.
With a loss that is a *mean* over ``N`` training examples,
``L = (1/N) Σ_i ℓ_i``, that is ``exp(−Σ_i ℓ_i / (N·D))``, the posterior at
temperature ``T = N·D``; so ``D = T / N``, and ``D = 1/N`` samples the Bayesian
posterior (``T = 1``; :func:`diffusion_for_temperature`). For example
``D = 0.01`` on CIFAR-10 (``N = 50 000``) is ``T = 500``, a very hot posterior.

References:
  Welling & Teh, `Bayesian Learning via Stochastic Gradient Langevin Dynamics
  <https://www.stats.ox.ac.uk/~teh/research/compstats/WelTeh2011a.pdf>`_,
  ICML 2011.

  Li et al., `Preconditioned Stochastic Gradient Langevin Dynamics for Deep
  Neural Networks <https://arxiv.org/abs/1512.07666>`_, AAAI 2016.

  Chen, Fox & Guestrin, `Stochastic Gradient Hamiltonian Monte Carlo
  <https://arxiv.org/abs/1402.4102>`_, ICML 2014.

  Kloeden & Platen, *Numerical Solution of Stochastic Differential Equations*,
  Springer 1992 (§14.1, the simplified weak Euler scheme).

  Zhang et al., `Cyclical Stochastic Gradient MCMC for Bayesian Deep Learning
  <https://arxiv.org/abs/1902.03932>`_, ICLR 2020.
"""

import functools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

__all__ = [
  "LangevinNoiseState",
  "Noise",
  "PSGLDState",
  "add_langevin_noise",
  "cyclical",
  "cyclical_diffusion",
  "cyclical_learning_rate",
  "diffusion_for_temperature",
  "langevin_adam",
  "langevin_sgd",
  "psgld",
  "sghmc",
]


class LangevinNoiseState(NamedTuple):
  """State of :func:`add_langevin_noise`.

  Attributes:
    count: number of updates applied so far; step ``t`` of ``η_t``, ``D_t``
      and of the noise, counted from 0 as optax schedules count.
    key: the chain's PRNG key, exactly as given. It is never advanced: the
      noise of step ``t`` is drawn from ``fold_in(key, t)``.
  """

  count: chex.Array
  key: chex.PRNGKey


class PSGLDState(NamedTuple):
  """State of :func:`psgld`.

  Attributes:
    count: number of updates applied so far (step ``t``, from 0).
    key: the chain's PRNG key, exactly as given (see
      :class:`LangevinNoiseState`).
    second_moment: ``V_t``, the exponential moving average of squared
      gradients, with the structure and dtypes of the parameters.
  """

  count: chex.Array
  key: chex.PRNGKey
  second_moment: optax.Updates


def _describe(value: Any) -> str:
  dtype = getattr(value, "dtype", None)
  if dtype is None:
    return f"{type(value).__name__} {value!r}"
  return f"{type(value).__name__} of dtype {dtype} and shape {value.shape}"


def _check_key(key: Any) -> None:
  """Raises TypeError unless ``key`` is a single PRNG key.

  Only dtype and shape are inspected, so keys that are tracers (under
  ``jit`` or ``vmap``) are accepted.
  """
  dtype = getattr(key, "dtype", None)
  shape = getattr(key, "shape", None)
  if dtype is not None:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
      if shape == ():
        return
    # A legacy key is raw key data whose shape depends on the default PRNG
    # implementation (threefry: (2,), rbg: (4,)), so ask JAX for it.
    elif dtype == np.uint32 and shape == jax.eval_shape(jax.random.PRNGKey, 0).shape:
      return
  raise TypeError(
    "key must be a single JAX PRNG key, such as jax.random.key(seed) (or a "
    f"legacy jax.random.PRNGKey(seed)); got {_describe(key)}. Pass "
    "jax.random.key(seed) rather than a seed, None or a batch of keys."
  )


def _check_hyperparameter(name: str, value: Any) -> None:
  """Raises ValueError if ``value`` is known to be negative or non-finite."""
  # A schedule's values only exist per step, and a tracer (inject_hyperparams
  # under jit or vmap) has no value yet: neither can be checked here.
  if callable(value) or isinstance(value, jax.core.Tracer):
    return
  array = np.asarray(value, dtype=np.float64)
  if not (np.all(np.isfinite(array)) and np.all(array >= 0)):
    raise ValueError(f"{name} must be finite and non-negative, got {value!r}.")


def _is_static_zero(value: Any) -> bool:
  """Whether ``value`` is known before tracing to be exactly zero."""
  return not (callable(value) or isinstance(value, jax.core.Tracer) or np.any(np.asarray(value)))


def _value_at(value_or_schedule: optax.ScalarOrSchedule, count: chex.Array) -> chex.Numeric:
  if callable(value_or_schedule):
    return value_or_schedule(count)
  return value_or_schedule


Noise = Literal["gaussian", "rademacher"]
_NOISES = ("gaussian", "rademacher")


def _check_noise(noise: Any) -> None:
  if not (isinstance(noise, str) and noise in _NOISES):
    raise ValueError(f"noise must be one of {', '.join(map(repr, _NOISES))}, got {noise!r}.")


# Threefry-2x32 with 20 rounds (Salmon et al., 2011), jax.random's default generator.
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = np.uint32(0x1BD11BDA)


def _threefry2x32(
  key_words: tuple[chex.Array, chex.Array], x0: chex.Array, x1: chex.Array
) -> tuple[chex.Array, chex.Array]:
  """The Threefry-2x32 hash of the counters ``(x0, x1)`` under a key's two words.

  jax.random lowers the same hash on CPU as a loop of five iterations, which writes the whole
  state to memory between them; written out as elementwise operations, XLA fuses it with its
  consumers (the normal transform, the addition to the update) into one pass over the leaf.
  """
  keys = (*key_words, key_words[0] ^ key_words[1] ^ _THREEFRY_PARITY)
  x0, x1 = x0 + keys[0], x1 + keys[1]
  for block in range(5):
    for rotation in _THREEFRY_ROTATIONS[block % 2]:
      x0 = x0 + x1
      x1 = x0 ^ ((x1 << np.uint32(rotation)) | (x1 >> np.uint32(32 - rotation)))
    x0 = x0 + keys[(block + 1) % 3]
    x1 = x1 + keys[(block + 2) % 3] + np.uint32(block + 1)
  return x0, x1


def _flat_index(shape: tuple[int, ...], sharding: Any) -> chex.Array:
  """Each element's row-major index as uint32, laid out as ``sharding``."""
  if not shape:
    return jnp.zeros((), jnp.uint32)
  strides = np.cumprod((1, *shape[:0:-1]))[::-1]
  iotas = [lax.broadcasted_iota(jnp.uint32, shape, axis, out_sharding=sharding)
           for axis in range(len(shape))]  # fmt: skip
  return functools.reduce(jnp.add, [iota * np.uint32(s) for iota, s in zip(iotas, strides)])


def _standard_normal(
  key: chex.PRNGKey, shape: tuple[int, ...], dtype: Any, sharding: Any
) -> chex.Array:
  """``jax.random.normal(key, shape, dtype, out_sharding=sharding)``, bit for bit.

  For a threefry key, float32 and fewer than 2³² elements it is computed here, in one fused
  pass, as jax.random computes it (with its default ``jax_threefry_partitionable``): element
  ``i``'s 32 bits are the xor of the two words of Threefry-2x32 of the counter ``(0, i)``,
  turned into a uniform on ``(−1, 1)`` and then into ``√2·erf⁻¹(u)``. Anything else is left to
  jax.random.normal.
  """
  if (
    str(jax.random.key_impl(key)) != "threefry2x32"
    or dtype != jnp.float32
    or (math.prod(shape) >= 2**32)
  ):
    return jax.random.normal(key, shape, dtype, out_sharding=sharding)
  data = jax.random.key_data(key)
  index = _flat_index(shape, sharding)
  first, second = _threefry2x32((data[0], data[1]), jnp.zeros_like(index), index)
  bits = first ^ second
  # jax.random.uniform on [nextafter(−1, 0), 1): 23 random mantissa bits under the exponent of
  # 1 give [1, 2), shifted to [0, 1) and scaled.
  low = np.nextafter(np.float32(-1), np.float32(0))
  mantissa = (bits >> np.uint32(9)) | np.uint32(np.float32(1).view(np.uint32))
  unit = lax.bitcast_convert_type(mantissa, jnp.float32) - np.float32(1)
  uniform = jnp.maximum(low, unit * (np.float32(1) - low) + low)
  return np.float32(np.sqrt(2)) * lax.erf_inv(uniform)


def _rademacher(key: chex.PRNGKey, shape: tuple[int, ...], dtype: Any) -> chex.Array:
  """Independent signs, ±1 with probability ½ each: one random bit per element.

  Element ``(..., j)`` takes bit ``j mod 32`` of word ``j // 32`` of its row's
  ``jax.random.bits`` (each row of the last axis draws ``⌈width / 32⌉`` words).
  """
  rows, width = shape[:-1], (shape[-1] if shape else 1)
  # jax.random.bits, not _threefry2x32: XLA would fuse an elementwise hash into this broadcast
  # and recompute it for each of the 32 elements of its word, where jax.random's hash, a loop
  # on CPU, is computed once per word.
  words = jax.random.bits(key, (*rows, -(-width // 32)), jnp.uint32)
  positions = lax.broadcasted_iota(jnp.uint32, (*words.shape, 32), words.ndim)
  bits = (words[..., None] >> positions) & np.uint32(1)
  bits = bits.reshape(*rows, -1)[..., :width].reshape(shape)
  one = jnp.ones((), dtype)
  return jnp.where(bits == 1, one, -one)


def _add_noise(
  key: chex.PRNGKey,
  count: chex.Array,
  updates: optax.Updates,
  std: optax.Updates,
  noise: Noise,
) -> optax.Updates:
  """Returns ``updates + std * ε``, leaf by leaf, with ``ε`` i.i.d. standard: ``N(0, 1)`` for
  ``noise="gaussian"``, ±1 with probability ½ for ``noise="rademacher"``.

  The noise of step ``count`` comes from ``fold_in(key, count)``, split once per leaf: it is
  independent across elements, leaves and steps, and is a function of ``(key, count)`` alone,
  so data-parallel replicas holding the same state draw the same noise. The Gaussian noise is
  ``jax.random.normal(leaf_key, leaf_shape)`` bit for bit (:func:`_standard_normal`).

  Args:
    key: the chain's PRNG key.
    count: the step index.
    updates: a pytree of real floating-point arrays (``None`` leaves are kept).
    std: a pytree with the structure of ``updates`` whose leaves broadcast
      against the matching update leaf: a scalar, or one value per element.
    noise: the distribution of ``ε``.

  Returns:
    The perturbed updates, each leaf in its own dtype and shape.
  """
  if not jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.wrap_key_data(key)  # a legacy key: raw data of the default generator
  keys = optax.tree.split_key_like(jax.random.fold_in(key, count), updates)

  def perturb(update, leaf_key, leaf_std):
    if jnp.iscomplexobj(update):
      raise ValueError("Langevin noise does not support complex parameters.")
    # Sample and add in at least float32, rounding once to the leaf dtype,
    # so bfloat16/float16 leaves do not get noise quantised before scaling.
    compute_dtype = jnp.promote_types(update.dtype, jnp.float32)
    if noise == "gaussian":
      sharding = jax.typeof(update).sharding
      sample = _standard_normal(leaf_key, update.shape, compute_dtype, sharding)
    else:
      sample = _rademacher(leaf_key, update.shape, compute_dtype)
    leaf_std = jnp.asarray(leaf_std, compute_dtype)
    noisy = (update.astype(compute_dtype) + leaf_std * sample).astype(update.dtype)
    # Return `update` itself where std == 0: `u + 0.0` turns -0.0 into +0.0,
    # and zero diffusion must reproduce the wrapped optimizer bit for bit.
    return jnp.where(leaf_std > 0, noisy, update)

  return jax.tree.map(perturb, updates, keys, std)


def add_langevin_noise(
  key: chex.PRNGKey,
  learning_rate: optax.ScalarOrSchedule,
  diffusion: optax.ScalarOrSchedule = 0.01,
  noise: Noise = "gaussian",
) -> optax.GradientTransformation:
  r"""Adds the Langevin noise ``ξ_t ~ N(0, 2·D_t·η_t·I)`` to the updates.

  Place it *after* an optimizer whose updates are ``−η_t·(direction)``, with
  the same ``learning_rate``; then
  ``optax.chain(optax.sgd(lr), add_langevin_noise(key, lr, D))`` is exactly
  the SGLD step :math:`θ_{t+1} = θ_t − η_t ∇L(θ_t) + ξ_t`, the
  Euler–Maruyama step of :math:`dθ = −∇L\,dt + \sqrt{2D}\,dW`. For small
  ``η`` it samples ``exp(−L/D)``: with a mean-over-data loss on ``N``
  examples, ``D = T/N`` is the posterior at temperature ``T`` (``D = 1/N`` is
  the Bayesian posterior; ``D = 0.01`` on CIFAR-10, ``N = 50 000``, is
  ``T = 500``). After a preconditioned optimizer such as Adam the drift is
  rescaled but the noise is not, so the chain is a noisy optimizer rather
  than a sampler of ``exp(−L/D)``; use :func:`psgld` for that.

  The step index ``t`` is this transformation's own count, starting at 0 and
  advancing in lockstep with the optimizer before it. The noise of step ``t``
  is drawn from ``jax.random.fold_in(state.key, t)``, one split per leaf, in
  float32 (or the leaf's dtype if wider), then added and rounded once to each
  leaf's dtype. It depends only on the state, never on the device, so
  data-parallel replicas stay identical; ``jax.vmap`` of ``init`` over a batch
  of keys gives independent chains. ``update`` reads the key from the state
  only, so one transformation can update states initialised with any keys.

  The noise is ``ξ_t = σ_t·ε`` with ``σ_t = √(2·D_t·η_t)`` and ``ε`` independent per element:

  - ``noise="gaussian"`` (the default): ``ε ~ N(0, 1)``, ``jax.random.normal(leaf_key)`` bit
    for bit; the step is Euler–Maruyama's.
  - ``noise="rademacher"``: ``ε = ±1`` with probability ½ each, so every element moves by
    exactly ``±σ_t``: Kloeden & Platen's simplified weak Euler scheme. Its increments have the
    Gaussian ones' first three moments (mean 0, variance ``σ²``, third moment 0; the fourth is
    ``σ⁴`` instead of ``3σ⁴``), which is all that weak order 1, the order of Euler–Maruyama
    itself, asks: for smooth ``f``, ``E f(θ_t)`` has the same ``O(η)`` error with either
    noise. On a Gaussian target the chain is linear, ``θ' = Mθ + ξ``, and its stationary
    covariance solves ``Σ = MΣMᵀ + Cov(ξ)``: it is exactly the Gaussian chain's. The higher
    moments differ by ``O(η)``; on ``½aθ²``, with ``ρ = 1 − ηa``, the stationary excess
    kurtosis is ``−2(1 − ρ²)/(1 + ρ²) ≈ −2ηa`` where Gaussian noise gives 0.
    Cost/benefit: one random bit per element instead of 32 and no normal transform, for noise
    that is bounded and right in distribution to first order in ``η`` only, as the
    discretisation itself is.

  ``noise`` is a string, so :func:`optax.inject_hyperparams` keeps it static; with jaxdiff's
  ``train.Trainer``, bind it in the factory: ``functools.partial(langevin_sgd,
  noise="rademacher")``.

  With ``diffusion == 0`` the wrapped optimizer's updates are returned
  bitwise unchanged (``-0.0`` included): a zero number skips the noise, and a
  schedule or traced value that is zero at a step selects the noiseless
  updates with ``jnp.where``.

  Works with :func:`optax.inject_hyperparams`, where ``learning_rate``,
  ``diffusion`` and ``key`` become traced hyperparameters; the ``key`` in
  ``state.hyperparams`` is only used by ``init``.

  Args:
    key: a single PRNG key, ``jax.random.key(seed)`` or a legacy
      ``jax.random.PRNGKey(seed)``; it may be traced.
    learning_rate: ``η_t``, the same float or schedule as the optimizer this
      follows. Must be finite and non-negative.
    diffusion: ``D_t``, a float or schedule. Must be finite and non-negative.
    noise: the distribution of the noise, ``"gaussian"`` or ``"rademacher"`` (see above).

  Returns:
    A :class:`optax.GradientTransformation` with state
    :class:`LangevinNoiseState`.

  Raises:
    TypeError: if ``key`` is not a single PRNG key (an int seed, ``None``, a
      float array, a batch of keys).
    ValueError: if a concrete ``learning_rate`` or ``diffusion`` is negative
      or not finite, or ``noise`` is not one of the two names.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> from jaxdiff.langevin import add_langevin_noise
    >>> lr, D = 0.1, 1e-3
    >>> opt = optax.chain(optax.sgd(lr),
    ...                   add_langevin_noise(jax.random.key(0), lr, D))
    >>> params = jnp.ones(3)
    >>> state = opt.init(params)
    >>> grads = jax.grad(lambda p: 0.5 * jnp.sum(p ** 2))(params)
    >>> updates, state = opt.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> int(state[1].count)
    1

  References:
    Welling & Teh, `Bayesian Learning via Stochastic Gradient Langevin
    Dynamics <https://www.stats.ox.ac.uk/~teh/research/compstats/WelTeh2011a.pdf>`_,
    ICML 2011.

    Kloeden & Platen, *Numerical Solution of Stochastic Differential Equations*,
    Springer 1992, §14.1 (the weak Euler scheme, simplified with two-point increments).
  """
  _check_key(key)
  _check_hyperparameter("learning_rate", learning_rate)
  _check_hyperparameter("diffusion", diffusion)
  _check_noise(noise)
  return _noise_stage(
    key,
    _is_static_zero(diffusion),
    lambda count: 2.0 * _value_at(diffusion, count) * _value_at(learning_rate, count),
    noise,
  )


def _noise_stage(
  key: chex.PRNGKey,
  noiseless: bool,
  variance: Callable[[chex.Array], chex.Numeric],
  noise: Noise,
) -> optax.GradientTransformation:
  """Adds noise of variance ``variance(t)`` (distributed as ``noise`` names) to every element
  of the updates of step ``t``.

  The state is a :class:`LangevinNoiseState`; ``noiseless`` (a zero known before tracing)
  returns the updates untouched.
  """

  def init_fn(params):
    del params
    return LangevinNoiseState(count=jnp.zeros([], jnp.int32), key=jnp.asarray(key))

  def update_fn(updates, state, params=None):
    del params
    if not noiseless:
      std = jnp.sqrt(variance(state.count))
      updates = _add_noise(
        state.key, state.count, updates, jax.tree.map(lambda _: std, updates), noise
      )
    return updates, LangevinNoiseState(count=optax.safe_increment(state.count), key=state.key)

  return optax.GradientTransformation(init_fn, update_fn)


def langevin_sgd(
  learning_rate: optax.ScalarOrSchedule,
  diffusion: optax.ScalarOrSchedule,
  key: chex.PRNGKey,
  momentum: float | None = None,
  noise: Noise = "gaussian",
) -> optax.GradientTransformation:
  """SGLD: :func:`optax.sgd` followed by :func:`add_langevin_noise`.

  ``θ_{t+1} = θ_t − η_t g_t + N(0, 2·D_t·η_t·I)``. With ``momentum`` the
  drift is heavy-ball SGD and the noise is still added to the update, not to
  the velocity; the ``exp(−L/D)`` stationary distribution is only claimed
  for ``momentum=None``.

  Args:
    learning_rate: ``η_t``, float or schedule.
    diffusion: ``D_t``, float or schedule; ``D = T/N`` for temperature ``T``
      with a mean loss over ``N`` examples (see :func:`add_langevin_noise`).
    key: a single PRNG key, e.g. ``jax.random.key(seed)``.
    momentum: passed to :func:`optax.sgd`.
    noise: ``"gaussian"`` or ``"rademacher"``, passed to :func:`add_langevin_noise` (where
      the choice is explained).

  Returns:
    ``optax.chain(optax.sgd(learning_rate, momentum),
    add_langevin_noise(key, learning_rate, diffusion, noise))``.

  Example:
    >>> import jax, optax
    >>> from jaxdiff.langevin import langevin_sgd
    >>> make = optax.inject_hyperparams(langevin_sgd)
    >>> opt = make(learning_rate=0.1, diffusion=1e-3, key=jax.random.key(0))
    >>> state = opt.init(jax.numpy.zeros(2))
    >>> sorted(state.hyperparams)
    ['diffusion', 'key', 'learning_rate']

  References:
    Welling & Teh, `Bayesian Learning via Stochastic Gradient Langevin
    Dynamics <https://www.stats.ox.ac.uk/~teh/research/compstats/WelTeh2011a.pdf>`_,
    ICML 2011.
  """
  return optax.chain(
    optax.sgd(learning_rate, momentum),
    add_langevin_noise(key, learning_rate, diffusion, noise),
  )


def langevin_adam(
  learning_rate: optax.ScalarOrSchedule,
  diffusion: optax.ScalarOrSchedule,
  key: chex.PRNGKey,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  noise: Noise = "gaussian",
) -> optax.GradientTransformation:
  """Adam plus Langevin noise: :func:`optax.adam` then :func:`add_langevin_noise`.

  The noise ``N(0, 2·D_t·η_t·I)`` is not preconditioned, so this is a noisy
  optimizer, not a sampler of ``exp(−L/D)``; see :func:`psgld` for a
  preconditioned sampler.

  Args:
    learning_rate: ``η_t``, float or schedule.
    diffusion: ``D_t``, float or schedule.
    key: a single PRNG key, e.g. ``jax.random.key(seed)``.
    b1: passed to :func:`optax.adam`.
    b2: passed to :func:`optax.adam`.
    eps: passed to :func:`optax.adam`.
    noise: ``"gaussian"`` or ``"rademacher"``, passed to :func:`add_langevin_noise`.

  Returns:
    ``optax.chain(optax.adam(learning_rate, b1, b2, eps),
    add_langevin_noise(key, learning_rate, diffusion, noise))``.

  References:
    Welling & Teh, `Bayesian Learning via Stochastic Gradient Langevin
    Dynamics <https://www.stats.ox.ac.uk/~teh/research/compstats/WelTeh2011a.pdf>`_,
    ICML 2011.
  """
  return optax.chain(
    optax.adam(learning_rate, b1=b1, b2=b2, eps=eps),
    add_langevin_noise(key, learning_rate, diffusion, noise),
  )


def psgld(
  learning_rate: optax.ScalarOrSchedule,
  diffusion: optax.ScalarOrSchedule,
  key: chex.PRNGKey,
  decay: float = 0.99,
  eps: float = 1e-8,
  adapt_steps: int | None = 1000,
  noise: Noise = "gaussian",
) -> optax.GradientTransformation:
  r"""Preconditioned SGLD with an RMSprop preconditioner bounded by 1 (after Li et al., 2016).

  Elementwise, with ``g`` the gradient and ``n`` the number of parameters:

  .. code-block:: text

    V_t = decay · V_{t−1} + (1 − decay) · g²,   V_{−1} = 0        (t < adapt_steps)
    V̂_t = V_t / (1 − decay^{t+1})                                 (bias-corrected, as Adam)
    λ_t = √(Σ V̂_t / n) + eps                                      (the gradients' RMS)
    G_t = λ_t / (λ_t + √V̂_t)
    θ_{t+1} = θ_t − η_t · G_t · g + N(0, 2 · D_t · η_t · G_t)

  ``G`` is Li et al.'s ``1 / (λ + √V)`` with the damping ``λ`` set to the root mean square of
  the gradients over all parameters instead of a fixed constant, and scaled by ``λ``: so
  ``0 < G ≤ 1``, a coordinate with typical gradients takes half an SGLD step and one with
  gradients far above the typical ones a proportionally smaller step. Three consequences:
  ``η`` means what it means for SGLD (on a quadratic, ``G ≤ 1`` makes the chain at ``η`` as
  stable as SGLD at ``η``, whatever the gradients); where no gradient has been seen (a start at
  a stationary point, inputs that are always zero) ``G = 1``, SGLD's step, not ``1/eps``; and
  ``G`` is unchanged when the loss is scaled. The cost: coordinates with gradients below the
  typical ones move at SGLD's pace, no faster, where Li et al.'s ``G`` speeds them up.

  The Γ correction term (the derivative of ``G`` with respect to ``θ``) is dropped, as
  SGMCMCJax's ``psgld`` does. While ``V`` adapts, ``G`` follows the chain's recent gradients
  and so its position, and the chain samples too hot. So by default ``V`` adapts for the first
  ``adapt_steps`` steps only (the burn-in) and is then frozen: with a constant ``G`` the Γ term
  is exactly zero and the chain samples ``exp(−L/D)`` up to the discretisation, as SGLD does.
  ``adapt_steps=None`` keeps adapting, as Li et al. do: a noisy optimizer more than a sampler.
  The measurements behind these choices are in ``benchmarks/RESULTS.md`` (its pSGLD section).

  Noise is drawn exactly as in :func:`add_langevin_noise` (same helper, the same choice of
  ``noise``, with ``σ = √(2·D_t·η_t·G_t)`` per element), so the same guarantees hold:
  independent across elements, leaves and steps, identical on data-parallel replicas, bitwise
  noiseless drift for ``diffusion == 0``.

  Args:
    learning_rate: ``η_t``, float or schedule.
    diffusion: ``D_t``, float or schedule; ``D = T/N`` for temperature ``T``
      with a mean loss over ``N`` examples.
    key: a single PRNG key, e.g. ``jax.random.key(seed)``.
    decay: the second-moment decay rate, in ``[0, 1)``.
    eps: added to ``λ``, so that ``G`` is 1 rather than undefined while every gradient seen is
      zero.
    adapt_steps: steps over which ``V`` adapts before it is frozen (the samples before then
      are burn-in); None never freezes it.
    noise: ``"gaussian"`` or ``"rademacher"``, as for :func:`add_langevin_noise`.

  Returns:
    A :class:`optax.GradientTransformation` with state :class:`PSGLDState`,
    whose updates are the full step (drift and noise).

  Raises:
    TypeError: if ``key`` is not a single PRNG key.
    ValueError: if a concrete ``learning_rate``, ``diffusion`` or ``eps`` is negative or not
      finite, ``decay`` is outside ``[0, 1)``, ``adapt_steps`` is below 1, or ``noise`` is not
      one of the two names.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> opt = psgld(0.01, diffusion_for_temperature(1.0, 60_000), jax.random.key(0))
    >>> params = jnp.zeros(3)
    >>> updates, state = opt.update(jnp.zeros(3), opt.init(params))  # no gradient yet: G = 1
    >>> int(state.count)
    1

  References:
    Li et al., `Preconditioned Stochastic Gradient Langevin Dynamics for Deep
    Neural Networks <https://arxiv.org/abs/1512.07666>`_, AAAI 2016.
  """
  _check_key(key)
  for name, value in [("learning_rate", learning_rate), ("diffusion", diffusion), ("eps", eps)]:
    _check_hyperparameter(name, value)
  # Under inject_hyperparams (as jaxdiff's Trainer wraps it) decay and adapt_steps may be tracers.
  if not (isinstance(decay, jax.core.Tracer) or 0.0 <= float(decay) < 1.0):
    raise ValueError(f"decay must lie in [0, 1) (1 would never forget, nor bias-correct), got "
                     f"{decay!r}")  # fmt: skip
  if not (adapt_steps is None or isinstance(adapt_steps, jax.core.Tracer) or adapt_steps >= 1):
    raise ValueError(f"adapt_steps must be positive or None, got {adapt_steps!r}")
  _check_noise(noise)
  noiseless = _is_static_zero(diffusion)

  def init_fn(params):
    return PSGLDState(
      count=jnp.zeros([], jnp.int32),
      key=jnp.asarray(key),
      second_moment=optax.tree.zeros_like(params),
    )

  def update_fn(updates, state, params=None):
    del params
    second_moment = optax.tree.update_moment_per_elem_norm(updates, state.second_moment, decay, 2)
    if adapt_steps is not None:
      adapting = state.count < adapt_steps
      second_moment = jax.tree.map(
        lambda new, old: jnp.where(adapting, new, old), second_moment, state.second_moment
      )
    lr = _value_at(learning_rate, state.count)
    # Bias-corrected as Adam's: V starts at 0, and V_0 = (1 − decay)·g² alone would understate
    # the gradients' second moment by that factor.
    times_updated = optax.safe_increment(state.count)
    if adapt_steps is not None:
      times_updated = jnp.minimum(times_updated, adapt_steps)
    corrected = optax.tree.bias_correction(second_moment, decay, times_updated)
    preconditioner = _bounded_preconditioner(corrected, eps)
    new_updates = jax.tree.map(lambda g, p: (-lr * p * g).astype(g.dtype), updates, preconditioner)
    if not noiseless:
      scale = 2.0 * _value_at(diffusion, state.count) * lr
      std = jax.tree.map(lambda p: jnp.sqrt(scale * p), preconditioner)
      new_updates = _add_noise(state.key, state.count, new_updates, std, noise)
    return new_updates, PSGLDState(
      count=optax.safe_increment(state.count),
      key=state.key,
      second_moment=second_moment,
    )

  return optax.GradientTransformation(init_fn, update_fn)


def _bounded_preconditioner(second_moment: optax.Updates, eps: chex.Numeric) -> optax.Updates:
  """:func:`psgld`'s ``G = λ / (λ + √V)``, with ``λ`` the RMS of ``√V`` over every element plus
  ``eps``; computed in at least float32."""
  leaves = jax.tree.leaves(second_moment)
  count = sum(leaf.size for leaf in leaves)
  total = sum(jnp.sum(leaf, dtype=jnp.promote_types(leaf.dtype, jnp.float32)) for leaf in leaves)
  damping = jnp.sqrt(total / count) + eps
  return jax.tree.map(lambda v: damping / (damping + jnp.sqrt(v)), second_moment)


def diffusion_for_temperature(temperature: float, num_examples: int) -> float:
  """The ``D`` that samples the posterior at ``temperature`` with a mean loss over the data.

  With ``L = (1/N) Σ_i ℓ_i`` the chains sample ``exp(−L/D) = exp(−Σ_i ℓ_i / (N·D))``, the
  posterior at ``T = N·D``: so ``D = T/N``, and ``T = 1`` is the Bayesian posterior.

  Args:
    temperature: ``T > 0``; below 1 a cold posterior.
    num_examples: ``N``, the training examples the mean loss averages over.

  Returns:
    ``temperature / num_examples``.

  Example:
    >>> diffusion_for_temperature(1.0, 50_000)
    2e-05
  """
  if not (math.isfinite(temperature) and temperature >= 0):
    raise ValueError(f"temperature must be finite and non-negative, got {temperature!r}")
  if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples <= 0:
    raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
  return temperature / num_examples


def _momentum_noise(
  key: chex.PRNGKey,
  learning_rate: optax.ScalarOrSchedule,
  diffusion: optax.ScalarOrSchedule,
  momentum: float,
  noise: Noise,
) -> optax.GradientTransformation:
  """Adds noise of variance ``2·(1 − β)·D_t / η_t`` to the gradients, before the momentum
  trace."""

  def variance(count):
    lr = _value_at(learning_rate, count)
    # No step, no noise: the trace is scaled by η = 0 anyway, and 1/0 is not a variance.
    safe_lr = jnp.where(lr > 0, lr, 1.0)
    return jnp.where(lr > 0, 2.0 * (1.0 - momentum) * _value_at(diffusion, count) / safe_lr, 0.0)

  return _noise_stage(key, _is_static_zero(diffusion), variance, noise)


def sghmc(
  learning_rate: optax.ScalarOrSchedule,
  diffusion: optax.ScalarOrSchedule,
  key: chex.PRNGKey,
  momentum: float = 0.9,
  noise: Noise = "gaussian",
) -> optax.GradientTransformation:
  """Stochastic gradient Hamiltonian Monte Carlo in its SGD-with-momentum form.

  Chen et al.'s SGHMC with friction ``1 − β`` and no gradient-noise estimate, written as
  heavy-ball SGD whose velocity receives the noise:

  .. code-block:: text

    v_{t+1} = β · v_t − η · g_t + N(0, 2 · (1 − β) · η · D)
    θ_{t+1} = θ_t + v_{t+1}

  For small ``η`` it samples ``exp(−L/D)`` (``D = T/N`` as for :func:`add_langevin_noise`).
  It is computed as :func:`optax.sgd` with ``momentum=β`` is, the trace of gradients scaled by
  ``−η``, with the noise ``N(0, 2·(1 − β)·D/η)`` added to the gradient before the trace; so
  ``diffusion == 0`` gives ``optax.sgd(learning_rate, momentum)``'s updates bit for bit, and
  with a schedule ``η_t`` the velocity is ``−η_t`` times the trace, as in optax. The noise is
  drawn as in :func:`add_langevin_noise`: from ``fold_in(key, t)``, identical on data-parallel
  replicas, independent across chains of a ``vmap`` over keys, Gaussian or, with
  ``noise="rademacher"``, ``±`` its standard deviation (the simplified weak Euler scheme; on a
  Gaussian target the stationary covariance is again the Gaussian chain's exactly).

  Args:
    learning_rate: ``η_t``, float or schedule.
    diffusion: ``D_t``, float or schedule; ``D = T/N`` for temperature ``T`` with a mean loss
      over ``N`` examples (:func:`diffusion_for_temperature`).
    key: a single PRNG key, e.g. ``jax.random.key(seed)``.
    momentum: ``β`` in ``[0, 1)``; the friction is ``1 − β``.
    noise: ``"gaussian"`` or ``"rademacher"``, as for :func:`add_langevin_noise`.

  Returns:
    A :class:`optax.GradientTransformation`: the noise stage (state
    :class:`LangevinNoiseState`), ``optax.trace(momentum)`` and
    ``optax.scale_by_learning_rate(learning_rate)``, chained.

  Raises:
    TypeError: if ``key`` is not a single PRNG key.
    ValueError: if a concrete ``learning_rate`` or ``diffusion`` is negative or not finite,
      ``momentum`` is outside ``[0, 1)``, or ``noise`` is not one of the two names.

  Example:
    >>> import jax, jax.numpy as jnp, optax
    >>> opt = sghmc(0.01, diffusion_for_temperature(1.0, 60_000), jax.random.key(0))
    >>> state = opt.init(jnp.zeros(3))
    >>> updates, state = opt.update(jnp.ones(3), state)

  References:
    Chen, Fox & Guestrin, `Stochastic Gradient Hamiltonian Monte Carlo
    <https://arxiv.org/abs/1402.4102>`_, ICML 2014.
  """
  _check_key(key)
  _check_hyperparameter("learning_rate", learning_rate)
  _check_hyperparameter("diffusion", diffusion)
  if not isinstance(momentum, jax.core.Tracer) and not 0.0 <= float(momentum) < 1.0:
    raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
  _check_noise(noise)
  return optax.chain(
    _momentum_noise(key, learning_rate, diffusion, momentum, noise),
    optax.trace(decay=momentum),
    optax.scale_by_learning_rate(learning_rate),
  )


def _cycle_position(count: chex.Array, total_steps: int, num_cycles: int) -> chex.Array:
  """Where step ``count`` (from 0) lies in its cycle, in ``[0, 1)``."""
  cycle_length = math.ceil(total_steps / num_cycles)
  return jnp.mod(count, cycle_length) / cycle_length


def _check_cycles(total_steps: int, num_cycles: int) -> None:
  if not 1 <= num_cycles <= total_steps:
    raise ValueError(
      f"need 1 <= num_cycles <= total_steps, got {num_cycles} cycles of {total_steps} steps"
    )


def cyclical_learning_rate(
  init_value: chex.Numeric, total_steps: int, num_cycles: int
) -> optax.Schedule:
  """Zhang et al.'s cyclical cosine step size: large steps explore, small steps sample.

  ``η_t = η_0 / 2 · (cos(π · r_t) + 1)``, with ``r_t = (t mod ⌈K/M⌉) / ⌈K/M⌉`` the position of
  step ``t`` (from 0) in its cycle, ``K`` steps in all and ``M`` cycles: ``η_0`` at each
  cycle's start, falling to near 0 at its end.

  Args:
    init_value: ``η_0``; it may be traced (``optax.inject_hyperparams``).
    total_steps: ``K``.
    num_cycles: ``M``.

  Returns:
    An optax schedule ``count -> η``.

  Example:
    >>> schedule = cyclical_learning_rate(0.1, total_steps=100, num_cycles=4)
    >>> [round(float(schedule(t)), 4) for t in (0, 12, 24, 25)]  # cycles of 25 steps
    [0.1, 0.0531, 0.0004, 0.1]

  References:
    Zhang et al., `Cyclical Stochastic Gradient MCMC for Bayesian Deep Learning
    <https://arxiv.org/abs/1902.03932>`_, ICLR 2020.
  """
  _check_cycles(total_steps, num_cycles)

  def schedule(count):
    position = _cycle_position(count, total_steps, num_cycles)
    return init_value / 2 * (jnp.cos(jnp.pi * position) + 1)

  return schedule


def cyclical_diffusion(
  diffusion: chex.Numeric, total_steps: int, num_cycles: int, exploration: float = 0.8
) -> optax.Schedule:
  """The diffusion of cyclical SG-MCMC: none while a cycle explores, ``D`` while it samples.

  With :func:`cyclical_learning_rate`'s cycles, step ``t`` adds no noise while its position in
  the cycle ``r_t < exploration`` (the optimisation phase, exactly the noiseless optimizer) and
  ``D`` after it (the sampling phase, where the snapshots are taken).

  Args:
    diffusion: ``D`` of the sampling phase; it may be traced.
    total_steps: ``K``, as for the learning rate.
    num_cycles: ``M``, as for the learning rate.
    exploration: the fraction of each cycle without noise, in ``[0, 1)``.

  Returns:
    An optax schedule ``count -> D_t``.

  Example:
    >>> schedule = cyclical_diffusion(1e-4, total_steps=100, num_cycles=4, exploration=0.8)
    >>> [float(schedule(t)) > 0 for t in (19, 20, 24, 25)]  # cycles of 25 steps
    [False, True, True, False]
  """
  _check_cycles(total_steps, num_cycles)
  if not 0.0 <= exploration < 1.0:
    raise ValueError(f"exploration must lie in [0, 1), got {exploration!r}")

  def schedule(count):
    position = _cycle_position(count, total_steps, num_cycles)
    return jnp.where(position < exploration, jnp.zeros_like(diffusion), diffusion)

  return schedule


def cyclical(
  sampler: Callable[..., optax.GradientTransformation],
  total_steps: int,
  num_cycles: int,
  exploration: float = 0.8,
) -> Callable[..., optax.GradientTransformation]:
  """Zhang et al.'s cyclical SG-MCMC from a sampler's factory.

  Returns ``factory(learning_rate, diffusion, key)`` that builds ``sampler`` with
  :func:`cyclical_learning_rate` of ``learning_rate`` and :func:`cyclical_diffusion` of
  ``diffusion``: the same cycles, noiseless for the first ``exploration`` of each. The returned
  factory takes numbers (traced or not), as ``optax.inject_hyperparams`` and
  :class:`jaxdiff.engine.Trainer` give them.

  Args:
    sampler: ``sampler(learning_rate, diffusion, key)``, e.g. :func:`langevin_sgd` (cSGLD) or
      :func:`sghmc` (cSGHMC); bind other arguments first (``functools.partial``).
    total_steps: ``K``, the run's steps.
    num_cycles: ``M``.
    exploration: the noiseless fraction of each cycle, in ``[0, 1)``.

  Returns:
    The cyclical sampler's factory.

  Example:
    >>> csgld = cyclical(langevin_sgd, total_steps=10_000, num_cycles=5)
    >>> optimizer = csgld(0.1, diffusion_for_temperature(1.0, 50_000), jax.random.key(0))

  References:
    Zhang et al., `Cyclical Stochastic Gradient MCMC for Bayesian Deep Learning
    <https://arxiv.org/abs/1902.03932>`_, ICLR 2020.
  """
  _check_cycles(total_steps, num_cycles)
  if not 0.0 <= exploration < 1.0:
    raise ValueError(f"exploration must lie in [0, 1), got {exploration!r}")

  def factory(learning_rate, diffusion, key):
    return sampler(
      cyclical_learning_rate(learning_rate, total_steps, num_cycles),
      cyclical_diffusion(diffusion, total_steps, num_cycles, exploration),
      key,
    )

  return factory
