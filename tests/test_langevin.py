"""Tests for jaxdiff.langevin (SGLD as optax transformations).

Statistical tests use fixed keys and n i.i.d. draws of N(0, σ²) (or of ±σ,
the Rademacher noise). Their tolerances are 5 standard errors, SE(mean) = σ/√n
and SE(var) = σ²·√(2/n) (for ±σ the sample variance is σ² − mean², closer
still), so a correct implementation fails with probability < 1e-6 per check
(and the fixed keys make each run deterministic anyway).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from jaxdiff.langevin import (
  LangevinNoiseState,
  PSGLDState,
  add_langevin_noise,
  langevin_adam,
  langevin_sgd,
  psgld,
  sghmc,
)

N_SE = 5  # standard errors allowed in every statistical check
N_STAT = 200_000  # elements per statistical sample


def _assert_normal_moments(sample, variance):
  """Mean 0 and the given variance, within N_SE standard errors."""
  x = np.asarray(sample, np.float64).ravel()
  n = x.size
  assert abs(x.mean()) < N_SE * np.sqrt(variance / n), (x.mean(), variance, n)
  assert abs(x.var() - variance) < N_SE * variance * np.sqrt(2.0 / n), (x.var(), variance, n)


def _assert_uncorrelated(a, b):
  """|corr| < N_SE/√n: the standard error of the correlation of independent samples is 1/√n."""
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  assert abs(np.corrcoef(a, b)[0, 1]) < N_SE / np.sqrt(a.size)


def _bits(x):
  x = np.asarray(x)
  return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _assert_bitwise_equal(tree_a, tree_b):
  chex.assert_trees_all_equal_structs(tree_a, tree_b)
  chex.assert_trees_all_equal_dtypes(tree_a, tree_b)
  for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
    np.testing.assert_array_equal(_bits(a), _bits(b))


def _zeros_stat():
  return jnp.zeros(N_STAT, jnp.float32)


# --------------------------------------------------------------------------- moments


def test_noise_moments_and_independence_constant_hyperparameters():
  """Noise is N(0, 2·D·η) per element, independent across elements, leaves, steps."""
  lr, diffusion = 0.1, 0.01
  opt = add_langevin_noise(jax.random.key(0), lr, diffusion)
  updates = {"a": _zeros_stat(), "b": _zeros_stat()}
  update = jax.jit(opt.update)
  state = opt.init(updates)
  noise0, state = update(updates, state)
  noise1, state = update(updates, state)
  chex.assert_trees_all_equal(state.count, jnp.asarray(2, jnp.int32))

  for leaf in ("a", "b"):
    _assert_normal_moments(noise0[leaf], 2 * diffusion * lr)
    _assert_normal_moments(noise1[leaf], 2 * diffusion * lr)
  _assert_uncorrelated(noise0["a"], noise0["b"])  # across leaves
  _assert_uncorrelated(noise0["a"], noise1["a"])  # across steps
  _assert_uncorrelated(noise0["a"][:-1], noise0["a"][1:])  # across neighbouring elements


def test_noise_moments_follow_schedules_from_count_zero():
  """With schedules the step-t noise has variance 2·D(t)·η(t), t counted from 0."""
  lr = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
  diffusion = lambda count: 0.01 * (1.0 + count)  # noqa: E731
  opt = add_langevin_noise(jax.random.key(1), lr, diffusion)
  updates = _zeros_stat()
  update = jax.jit(opt.update)
  state = opt.init(updates)
  for count in range(6):
    noise, state = update(updates, state)
    if count in (0, 1, 5):
      _assert_normal_moments(noise, 2 * diffusion(count) * float(lr(count)))


def _documented_gaussian_noise(key, count, tree):
  """The default's standard normals as documented: ``jax.random.normal`` of ``fold_in(key,
  count)`` split once per leaf, drawn in float32 and rounded to the leaf's dtype."""
  keys = optax.tree.split_key_like(jax.random.fold_in(key, count), tree)

  def draw(leaf, key):
    return jax.random.normal(key, leaf.shape, jnp.float32).astype(leaf.dtype)

  return jax.tree.map(draw, tree, keys)


@pytest.mark.parametrize(
  "key",
  [jax.random.key(11), jax.random.PRNGKey(11), jax.random.key(11, impl="rbg")],
  ids=["threefry", "legacy", "rbg"],
)
def test_gaussian_noise_is_jax_random_normal_bit_for_bit(key):
  # The default's draws are jax.random.normal's for every leaf shape, the key's implementation
  # and a vmapped batch of chains (jaxdiff computes threefry's itself, fused with the addition).
  # With zero updates and 2·D·η = 1 the update is the draw itself, free of the rounding of
  # u + σ·ε, which XLA may contract into one multiply-add in one program and not in another.
  lr, diffusion = 1.0, 0.5
  zeros = {
    "matrix": jnp.zeros((37, 64)),
    "odd": jnp.zeros(101),
    "scalar": jnp.float32(0.0),
    "half": jnp.zeros((2, 3, 5), jnp.bfloat16),
  }
  opt = add_langevin_noise(key, lr, diffusion)
  update = jax.jit(opt.update)
  state = opt.init(zeros)
  reference = jax.jit(_documented_gaussian_noise)
  for count in range(3):
    noise, state = update(zeros, state)
    _assert_bitwise_equal(noise, reference(key, count, zeros))

  keys = jax.random.split(key, 3)
  states = jax.vmap(lambda k: add_langevin_noise(k, lr, diffusion).init(zeros))(keys)
  noise, _ = jax.jit(jax.vmap(opt.update, in_axes=(None, 0)))(zeros, states)
  expected = jax.jit(jax.vmap(reference, in_axes=(0, None, None)))(keys, 0, zeros)
  _assert_bitwise_equal(noise, expected)


def test_rademacher_noise_is_plus_or_minus_sigma_balanced_and_independent():
  lr, diffusion = 0.1, 0.01
  sigma = np.float32(jnp.sqrt(2.0 * diffusion * lr))
  # Every leaf has N_STAT elements: one long row (many 32-bit words per row), rows of 10 (one
  # word, 22 of its bits unused), rows of 100 (four words, the last one partly used) and a twin
  # of the rows of 10, which the same words would give the same signs.
  narrow = jnp.zeros((N_STAT // 10, 10))
  updates = {"long": _zeros_stat(), "narrow": narrow, "ragged": jnp.zeros((N_STAT // 100, 100)),
             "twin": narrow}  # fmt: skip
  opt = add_langevin_noise(jax.random.key(12), lr, diffusion, "rademacher")
  update = jax.jit(opt.update)
  state = opt.init(updates)
  noise0, state = update(updates, state)
  noise1, state = update(updates, state)

  for leaf in updates:
    x = np.asarray(noise0[leaf])
    np.testing.assert_array_equal(np.abs(x), sigma)  # exactly ±σ
    _assert_normal_moments(x, float(sigma) ** 2)
    _assert_uncorrelated(x, noise1[leaf])  # across steps
    # Each bit of a word is balanced: the columns (positions along the last axis, 32 of the
    # long row's) each have mean 0 within N_SE·σ/√(column length).
    columns = x.reshape(-1, 32 if leaf == "long" else x.shape[-1])
    assert np.all(np.abs(columns.mean(0)) < N_SE * sigma / np.sqrt(len(columns)))
    # Every pair of bits of a word and of neighbouring words (lags 1 to 64); and across rows.
    row = x.ravel()
    for lag in range(1, 65):
      _assert_uncorrelated(row[:-lag], row[lag:])
    if x.ndim == 2:
      _assert_uncorrelated(x[:-1], x[1:])
  _assert_uncorrelated(noise0["narrow"], noise0["twin"])  # across leaves
  _assert_uncorrelated(noise0["long"], noise0["narrow"])


# --------------------------------------------------------------------------- physics


def test_sgld_stationary_variance_on_quadratic_matches_discrete_theory():
  """On L = ½‖θ‖² SGLD is the AR(1) chain θ' = (1−η)θ + ξ with stationary
  variance 2Dη / (1 − (1−η)²) = D / (1 − η/2), not the continuous-time D."""
  lr, diffusion = 0.2, 0.01
  n_chains, burn_in, n_samples = 20_000, 100, 200
  expected = diffusion / (1 - lr / 2)
  opt = langevin_sgd(lr, diffusion, jax.random.key(2))

  @jax.jit
  def run(params):
    state = opt.init(params)

    def step(carry, _):
      params, state = carry
      updates, state = opt.update(params, state, params)  # grad of ½‖θ‖² is θ
      params = optax.apply_updates(params, updates)
      return (params, state), jnp.mean(params**2)

    carry, _ = jax.lax.scan(step, (params, state), length=burn_in)
    _, second_moments = jax.lax.scan(step, carry, length=n_samples)
    return jnp.mean(second_moments)

  # Burn-in leaves a bias of order ρ^(2·burn_in) = 0.8^200 ≈ 1e-19, negligible.
  # θ² of an AR(1) chain with ρ = 1−η has variance 2v² and autocorrelation
  # ρ^(2k), so averaging n_samples steps of n_chains chains has relative
  # standard error √(2(1+ρ²) / ((1−ρ²)·n_samples·n_chains)) ≈ 0.15%; 5 SE is
  # 0.75%, well inside the 11% gap to the continuous-time answer D.
  rho2 = (1 - lr) ** 2
  rel_se = np.sqrt(2 * (1 + rho2) / ((1 - rho2) * n_samples * n_chains))
  measured = float(run(jnp.zeros(n_chains, jnp.float32)))
  assert abs(measured / expected - 1) < N_SE * rel_se, (measured, expected)
  assert abs(measured / diffusion - 1) > 0.05  # the discrete correction is resolved


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_sgld_stationary_law_on_quadratic_is_what_the_weak_euler_argument_predicts(noise):
  """On L = ½θ², θ_∞ = Σ_k ρ^k ξ_k with ρ = 1 − η: the variance D / (1 − η/2) for either
  noise; the excess kurtosis κ₄(ξ)/σ⁴ · (1 − ρ²)²/(1 − ρ⁴), 0 for Gaussian noise and
  −2(1 − ρ²)/(1 + ρ²) for ±σ (κ₄ = −2σ⁴), an O(η) departure from the Gaussian target."""
  lr, diffusion, burn_in = 0.2, 0.01, 100
  rho2 = (1 - lr) ** 2
  opt = langevin_sgd(lr, diffusion, jax.random.key(13), noise=noise)

  @jax.jit
  def run(params):
    def step(carry, _):
      params, state = carry
      updates, state = opt.update(params, state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), length=burn_in)
    return params

  # N_STAT independent chains (the elements), each after a burn-in whose bias ρ^(2·burn_in) =
  # 0.8^200 is negligible: one draw each from the stationary law.
  x = np.asarray(run(_zeros_stat()), np.float64)
  variance = diffusion / (1 - lr / 2)
  _assert_normal_moments(x, variance)
  excess_kurtosis = np.mean(x**4) / np.mean(x**2) ** 2 - 3
  expected = 0.0 if noise == "gaussian" else -2 * (1 - rho2) / (1 + rho2)  # −0.44
  # The sample excess kurtosis has standard error √(24/n) for a Gaussian (0.011 here), less
  # for lighter tails; 5 of them (0.055) separate −0.44 from 0 by far.
  assert abs(excess_kurtosis - expected) < N_SE * np.sqrt(24 / x.size), excess_kurtosis


# --------------------------------------------------------------------------- D = 0, keys


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
@pytest.mark.parametrize(
  "plain, langevin",
  [(optax.sgd, langevin_sgd), (optax.adam, langevin_adam)],
  ids=["sgd", "adam"],
)
def test_zero_diffusion_is_bitwise_the_plain_optimizer(plain, langevin, noise):
  def noisy(lr, d, key):
    return langevin(lr, d, key, noise=noise)

  lr = 0.1
  params = {"w": jnp.array([1.0, -2.0, 0.5, 0.0]), "b": (jnp.array(3.0),)}
  # +0.0 and -0.0 gradients produce signed-zero updates, which u + 0.0 would flip.
  grads = {"w": jnp.array([0.0, -0.0, 0.25, -1.5]), "b": (jnp.array(-0.0),)}
  key = jax.random.key(0)

  def run(opt):
    state = opt.init(params)
    trajectory = []
    for _ in range(3):
      updates, state = opt.update(grads, state, params)
      trajectory.append(updates)
    return trajectory

  expected = run(plain(lr))
  assert any(np.any((np.asarray(x) == 0) & np.signbit(x)) for x in jax.tree.leaves(expected))
  # A literal 0 skips the noise statically; a schedule that is 0 goes through
  # the traced jnp.where path.
  _assert_bitwise_equal(run(noisy(lr, 0, key)), expected)
  _assert_bitwise_equal(run(noisy(lr, lambda count: 0.0, key)), expected)


def _sgld_trajectory_fn():
  """A jitted 5-step SGLD run on ½‖θ‖² whose only non-static input is the key."""

  @jax.jit
  def run(key):
    opt = langevin_sgd(0.1, 0.01, key)
    params = jnp.ones(8)

    def step(carry, _):
      params, state = carry
      updates, state = opt.update(params, state, params)
      params = optax.apply_updates(params, updates)
      return (params, state), params

    _, trajectory = jax.lax.scan(step, (params, opt.init(params)), length=5)
    return trajectory

  return run


def test_same_key_same_trajectory_different_keys_differ():
  run = _sgld_trajectory_fn()
  a = run(jax.random.key(0))
  _assert_bitwise_equal(a, run(jax.random.key(0)))
  assert np.all(np.asarray(a) != np.asarray(run(jax.random.key(1))))
  # A legacy uint32 key with the same data gives the same chain.
  _assert_bitwise_equal(a, run(jax.random.PRNGKey(0)))


# --------------------------------------------------------------------------- data parallel


def _data_parallel_grads(loss, params, x, y, check_vma):
  """The gradient of the global-batch mean loss, inside shard_map."""
  if check_vma:
    # With varying-manual-axes checking, the gradient with respect to
    # replicated params is already psum'd over 'data' by autodiff, and a
    # pmean of that (now invariant) gradient is a no-op: it would be 4x
    # too large. Averaging the loss instead gives the global-batch gradient.
    return jax.grad(lambda w: jax.lax.pmean(loss(w, x, y), "data"))(params)
  return jax.lax.pmean(jax.grad(loss)(params, x, y), "data")


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
@pytest.mark.parametrize("check_vma", [True, False], ids=["check_vma", "no_check_vma"])
def test_data_parallel_replicas_stay_bitwise_identical(check_vma, noise):
  mesh = jax.make_mesh((4,), ("data",))
  opt = langevin_sgd(0.05, 1e-2, jax.random.key(3), noise=noise)
  x = jax.random.normal(jax.random.key(4), (8, 3))
  y = x @ jnp.array([1.0, -2.0, 0.5])
  params = jnp.zeros(3)

  def loss(w, x, y):
    return jnp.mean((x @ w - y) ** 2)

  def make_train(grad_fn):
    def train(params, opt_state, x, y):
      def step(carry, _):
        params, opt_state = carry
        updates, opt_state = opt.update(grad_fn(params, x, y), opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), None

      (params, _), _ = jax.lax.scan(step, (params, opt_state), length=3)
      return params[None]  # new leading axis: one row per replica

    return train

  sharded = jax.jit(
    jax.shard_map(
      make_train(lambda w, x, y: _data_parallel_grads(loss, w, x, y, check_vma)),
      mesh=mesh,
      in_specs=(P(), P(), P("data"), P("data")),
      out_specs=P("data"),
      check_vma=check_vma,
    )
  )
  # The mesh's axes are Explicit (make_mesh's default), so inputs must
  # already carry the shardings that in_specs name.
  replicated = jax.sharding.NamedSharding(mesh, P())
  batch = jax.sharding.NamedSharding(mesh, P("data"))
  per_replica = np.asarray(
    sharded(
      jax.device_put(params, replicated),
      jax.device_put(opt.init(params), replicated),
      jax.device_put(x, batch),
      jax.device_put(y, batch),
    )
  )
  assert per_replica.shape == (4, 3)
  for row in per_replica[1:]:
    np.testing.assert_array_equal(_bits(row), _bits(per_replica[0]))

  # The same chain, noise included, as one device on the whole batch, up to
  # reduction order (the noise std √(2·D·η) ≈ 0.03 is far above rtol).
  single = jax.jit(make_train(jax.grad(loss)))(params, opt.init(params), x, y)
  np.testing.assert_allclose(per_replica[0], np.asarray(single)[0], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- trees, dtypes


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_dtypes_shapes_and_nested_pytrees_are_preserved(noise):
  params = {
    "dense": ({"w": jnp.ones((3, 2), jnp.float32), "b": jnp.ones(2, jnp.bfloat16)},),
    "extra": [jnp.ones((), jnp.float32), None],
    "empty": {},
  }
  grads = jax.tree.map(jnp.zeros_like, params)
  key = jax.random.key(5)
  for opt in (add_langevin_noise(key, 0.1, 0.5, noise), langevin_sgd(0.1, 0.5, key, noise=noise)):
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    chex.assert_trees_all_equal_structs(updates, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    assert all(np.all(np.asarray(u, np.float32) != 0) for u in jax.tree.leaves(updates))
    chex.assert_tree_all_finite(updates)

  opt = add_langevin_noise(key, 0.1, 0.5)
  for empty in ({}, None):
    updates, state = opt.update(empty, opt.init(empty))
    assert updates == empty
    assert isinstance(state, LangevinNoiseState)


_BAD_KEYS = {
  "int seed": 0,
  "None": None,
  "float array": jnp.zeros(2, jnp.float32),
  "batch of keys": jax.random.split(jax.random.key(0), 3),
  "wrong legacy shape": jnp.zeros(3, jnp.uint32),
}


@pytest.mark.parametrize("key", list(_BAD_KEYS.values()), ids=list(_BAD_KEYS))
@pytest.mark.parametrize("factory", [add_langevin_noise, psgld], ids=["add_noise", "psgld"])
def test_bad_key_raises_type_error(factory, key):
  kwargs = dict(key=key, learning_rate=0.1, diffusion=0.01)
  with pytest.raises(TypeError, match=r"jax\.random\.key\(seed\)"):
    factory(**kwargs)


@pytest.mark.parametrize("name", ["learning_rate", "diffusion"])
@pytest.mark.parametrize(
  "value",
  [-0.1, float("nan"), float("inf"), jnp.array(-1.0)],
  ids=["neg", "nan", "inf", "neg-array"],
)
@pytest.mark.parametrize("factory", [add_langevin_noise, psgld], ids=["add_noise", "psgld"])
def test_bad_hyperparameters_raise_value_error(factory, name, value):
  kwargs = dict(key=jax.random.key(0), learning_rate=0.1, diffusion=0.01)
  kwargs[name] = value
  with pytest.raises(ValueError, match=name):
    factory(**kwargs)


@pytest.mark.parametrize("factory", [add_langevin_noise, langevin_sgd, langevin_adam, psgld, sghmc])
def test_unknown_noise_raises_value_error(factory):
  with pytest.raises(ValueError, match="noise must be one of 'gaussian', 'rademacher'"):
    factory(learning_rate=0.1, diffusion=0.01, key=jax.random.key(0), noise="uniform")


def test_complex_parameters_are_rejected():
  opt = add_langevin_noise(jax.random.key(0), 0.1, 0.01)
  updates = jnp.zeros(2, jnp.complex64)
  with pytest.raises(ValueError, match="complex"):
    opt.update(updates, opt.init(updates))


# --------------------------------------------------------------------------- vmap, jit


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_vmap_over_keys_gives_independent_chains_and_jit_matches_eager(kind):
  lr, diffusion, n_chains = 0.1, 0.01, 4
  keys = jax.random.split(jax.random.key(6), n_chains)
  updates = jnp.zeros(50_000)
  # update reads the key from the state only
  opt = add_langevin_noise(keys[0], lr, diffusion, kind)

  states = jax.vmap(lambda k: add_langevin_noise(k, lr, diffusion, kind).init(updates))(keys)
  noise, states = jax.jit(jax.vmap(opt.update, in_axes=(None, 0)))(updates, states)
  chex.assert_shape(noise, (n_chains, updates.size))
  chex.assert_trees_all_equal(states.count, jnp.ones(n_chains, jnp.int32))
  for i in range(n_chains):
    for j in range(i):
      _assert_uncorrelated(noise[i], noise[j])

  # Chain i of the batch is the chain started alone from keys[i].
  single = add_langevin_noise(keys[2], lr, diffusion, kind)
  eager, _ = single.update(updates, single.init(updates))
  np.testing.assert_allclose(noise[2], eager, rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- inject_hyperparams


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
@pytest.mark.parametrize("key", [jax.random.key(7), jax.random.PRNGKey(7)], ids=["typed", "legacy"])
def test_inject_hyperparams_changes_diffusion_without_retracing(key, kind):
  lr = 0.1
  opt = optax.inject_hyperparams(langevin_sgd)(learning_rate=lr, diffusion=1e-3, key=key,
                                               noise=kind)  # fmt: skip
  params = jnp.zeros(20_000)
  grads = jnp.zeros_like(params)  # the update is then the noise alone
  state = opt.init(params)
  # The string is a static argument, not a traced hyperparameter.
  assert set(state.hyperparams) == {"learning_rate", "diffusion", "key"}

  traces = []

  @jax.jit
  def update(state):
    traces.append(None)
    return opt.update(grads, state, params)

  noise, state = update(state)
  _assert_normal_moments(noise, 2 * 1e-3 * lr)
  if kind == "rademacher":
    # One magnitude, σ as float32 hyperparameters give it.
    np.testing.assert_array_equal(np.abs(noise), np.abs(noise[0]))
    np.testing.assert_allclose(np.abs(noise[0]), np.sqrt(2 * 1e-3 * lr), rtol=1e-6)

  state.hyperparams["diffusion"] = jnp.asarray(4e-3, jnp.float32)
  noise, state = update(state)
  _assert_normal_moments(noise, 2 * 4e-3 * lr)

  # A traced zero diffusion gives plain SGD bit for bit, -0.0 included.
  state.hyperparams["diffusion"] = jnp.asarray(0.0, jnp.float32)
  noise, state = update(state)
  _assert_bitwise_equal(noise, -lr * grads)
  assert np.all(np.signbit(noise))
  assert len(traces) == 1


def test_inject_hyperparams_vmap_init_over_learning_rates_and_diffusions():
  factory = optax.inject_hyperparams(langevin_sgd)
  key = jax.random.key(8)
  lrs = jnp.array([0.1, 0.2, 0.05])
  diffusions = jnp.array([1e-3, 2e-3, 4e-3])
  params = jnp.zeros(20_000)
  grads = jnp.zeros_like(params)

  states = jax.vmap(lambda lr, d: factory(learning_rate=lr, diffusion=d, key=key).init(params))(
    lrs, diffusions
  )
  opt = factory(
    learning_rate=0.0, diffusion=0.0, key=key
  )  # update reads hyperparams from the state
  noise, _ = jax.jit(jax.vmap(opt.update, in_axes=(None, 0, None)))(grads, states, params)
  for row, lr, d in zip(noise, lrs, diffusions):
    _assert_normal_moments(row, 2 * float(d) * float(lr))


def test_psgld_under_inject_hyperparams_inits_and_updates_under_jit():
  # The engine's wrapping: every numeric argument, adapt_steps among them, becomes a traced
  # hyperparameter inside the jitted, vmapped init.
  factory = optax.inject_hyperparams(psgld)
  params = jnp.zeros(8)
  states = jax.jit(jax.vmap(lambda lr: factory(learning_rate=lr, diffusion=1e-3,
                                               key=jax.random.key(0)).init(params)))(
    jnp.array([0.1, 0.01])
  )  # fmt: skip
  assert states.hyperparams["adapt_steps"].tolist() == [1000, 1000]
  opt = factory(learning_rate=0.0, diffusion=0.0, key=jax.random.key(0))
  updates, _ = jax.jit(jax.vmap(opt.update, in_axes=(None, 0, None)))(jnp.ones(8), states, params)
  assert updates.shape == (2, 8) and bool(jnp.all(jnp.isfinite(updates)))
  with pytest.raises(ValueError, match="adapt_steps"):
    psgld(0.1, 1e-3, jax.random.key(0), adapt_steps=0)


# --------------------------------------------------------------------------- adam, psgld


def test_langevin_adam_descends_a_quadratic():
  opt = langevin_adam(0.05, 1e-5, jax.random.key(9))

  @jax.jit
  def run(params):
    def step(carry, _):
      params, state = carry
      updates, state = opt.update(params, state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (params, opt.init(params)), length=100)
    return params, state

  params, state = run(jnp.ones(16))
  chex.assert_tree_all_finite(params)
  assert float(jnp.mean(params**2)) < 0.05
  assert int(state[1].count) == 100


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_psgld_noise_variance_is_preconditioned_elementwise(noise):
  lr, diffusion, decay, eps = 0.01, 0.02, 0.99, 1e-8
  # Four gradient scales, each on a block of N_STAT/4 elements: the
  # preconditioner G differs per block, and each block is its own sample.
  scales = np.array([0.01, 0.1, 1.0, 10.0], np.float32)
  block = N_STAT // len(scales)
  grads = jnp.asarray(np.repeat(scales, block))

  # Hand computation of the first step from V_{-1} = 0; the preconditioner divides V by the
  # bias correction 1 − decay, as Adam does, and is damped by the gradients' RMS.
  second_moment = (1 - decay) * np.repeat(scales, block).astype(np.float64) ** 2
  corrected = second_moment / (1 - decay)
  damping = np.sqrt(corrected.mean()) + eps
  precond = damping / (damping + np.sqrt(corrected))
  drift = -lr * precond * np.repeat(scales, block)

  def first_step(d):
    opt = psgld(lr, d, jax.random.key(10), decay=decay, eps=eps, noise=noise)
    state = opt.init(grads)
    assert isinstance(state, PSGLDState)
    updates, state = opt.update(grads, state)
    np.testing.assert_allclose(state.second_moment, second_moment, rtol=1e-6)
    return np.asarray(updates, np.float64)

  noiseless = first_step(0.0)
  np.testing.assert_allclose(noiseless, drift, rtol=1e-5)
  sample = first_step(diffusion) - noiseless
  for b in range(len(scales)):
    part = slice(b * block, (b + 1) * block)
    _assert_normal_moments(sample[part], 2 * diffusion * lr * precond[part][0])
  if noise == "rademacher":
    # Exactly ±√(2·D·η·G) per element, up to the one float32 rounding of the sum.
    np.testing.assert_allclose(np.abs(sample), np.sqrt(2 * diffusion * lr * precond), rtol=1e-5)


def test_psgld_preconditioner_is_bounded_by_one_and_blind_to_the_loss_scale():
  params = {"w": jnp.zeros((3, 4)), "b": jnp.zeros(4)}
  grads = {"w": jnp.linspace(-2.0, 3.0, 12).reshape(3, 4), "b": jnp.array([0.0, 1e-6, 5.0, 1.0])}
  opt = psgld(0.1, 0.0, jax.random.key(0))

  def drift(scale):
    updates, _ = opt.update(jax.tree.map(lambda g: scale * g, grads), opt.init(params))
    return updates

  # D = 0: the update is −η·G·g, so G = −update / (η·g); at g = 0, G = 1 by the limit.
  for leaf, grad in zip(jax.tree.leaves(drift(1.0)), jax.tree.leaves(grads)):
    grad = np.asarray(grad)
    preconditioner = -np.asarray(leaf)[grad != 0] / (0.1 * grad[grad != 0])
    assert np.all((preconditioner > 0) & (preconditioner <= 1.0))
  # G depends on the gradients' ratios only: scaling the loss scales the drift, nothing else.
  chex.assert_trees_all_close(drift(1e3), jax.tree.map(lambda u: 1e3 * u, drift(1.0)), rtol=1e-5)
  # No gradient seen yet (a start at a stationary point): G = 1, SGLD's step, not 1/eps.
  noisy = psgld(0.1, 0.5, jax.random.key(1))
  zeros = jnp.zeros(N_STAT)
  updates, _ = noisy.update(zeros, noisy.init(zeros))
  _assert_normal_moments(np.asarray(updates, np.float64), 2 * 0.5 * 0.1)


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1])
def test_psgld_refuses_a_decay_outside_zero_one(decay):
  with pytest.raises(ValueError, match="decay"):
    psgld(0.1, 1e-3, jax.random.key(0), decay=decay)
