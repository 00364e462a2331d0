"""The DDPM U-Net: shapes, preset sizes, time conditioning, bfloat16 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxdiff.models.unet import UNET_SIZES, GroupNorm, dot_product_attention, make_unet

MNIST_SHAPE = (2, 28, 28, 1)
TIMESTEPS = jnp.array([3, 700], jnp.int32)


def _abstract_init(model, shape):
  return jax.eval_shape(
    model.init, jax.random.key(0), jnp.zeros(shape), jnp.zeros(shape[:1], jnp.int32)
  )["params"]


def _count(params):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


@pytest.fixture(scope="module")
def fresh_params():
  # An rbg key: the tiny U-Net's init compiled in 15 s with threefry keys and
  # 5 s with rbg ones on this CPU.
  key = jax.random.key(0, impl="rbg")
  return jax.jit(make_unet("tiny").init)(key, jnp.zeros(MNIST_SHAPE), TIMESTEPS)["params"]


@pytest.fixture(scope="module")
def perturbed_params(fresh_params):
  """The output conv is zero-initialised; perturb it so the rest of the network shows through."""
  kernel = fresh_params["conv_out"]["kernel"]
  noise = np.random.default_rng(0).normal(0.0, 0.1, kernel.shape).astype(np.float32)
  return {**fresh_params, "conv_out": {**fresh_params["conv_out"], "kernel": kernel + noise}}


@pytest.fixture(scope="module")
def images():
  image = np.random.default_rng(1).normal(size=MNIST_SHAPE[1:]).astype(np.float32)
  return jnp.stack([image, image])  # the same image at two timesteps


@pytest.mark.parametrize("shape", [MNIST_SHAPE, (2, 32, 32, 3)])
def test_output_shape_equals_input_shape(shape):
  model = make_unet("tiny")
  params = _abstract_init(model, shape)
  out = jax.eval_shape(model.apply, {"params": params}, jnp.zeros(shape), TIMESTEPS)
  assert out.shape == shape and out.dtype == jnp.float32


def test_fresh_model_predicts_zero_noise(fresh_params, images):
  out = jax.jit(make_unet("tiny").apply)({"params": fresh_params}, images, TIMESTEPS)
  np.testing.assert_array_equal(out, np.zeros(MNIST_SHAPE))


@pytest.mark.parametrize(
  "size, low, high",
  [
    ("tiny", 10_000, 100_000),
    ("narrow", 200_000, 400_000),
    ("small", 1_000_000, 2_000_000),
    ("base", 4_000_000, 8_000_000),
  ],
)
def test_preset_parameter_counts(size, low, high):
  assert low <= _count(_abstract_init(make_unet(size), (1, 28, 28, 1))) <= high


def test_time_conditioning_changes_the_output(perturbed_params, images):
  out = jax.jit(make_unet("tiny").apply)({"params": perturbed_params}, images, TIMESTEPS)
  assert np.all(np.isfinite(out))
  assert float(jnp.abs(out[0] - out[1]).max()) > 1e-2 * float(jnp.abs(out).max())


def test_bfloat16_compute_keeps_float32_params_and_tracks_float32(perturbed_params, images):
  model = make_unet("tiny", dtype=jnp.bfloat16)
  abstract = _abstract_init(model, MNIST_SHAPE)
  assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  out = jax.jit(model.apply)({"params": perturbed_params}, images, TIMESTEPS)
  reference = jax.jit(make_unet("tiny").apply)({"params": perturbed_params}, images, TIMESTEPS)
  assert out.dtype == jnp.float32 and np.all(np.isfinite(out))
  # bfloat16 keeps 8 significant bits; ~20 layers of rounding stay within a few percent.
  error = float(jnp.linalg.norm(out - reference) / jnp.linalg.norm(reference))
  assert error < 0.05


def test_dropout_acts_only_when_not_deterministic(perturbed_params, images):
  # Dropout adds no parameters, so the dropout-free model's parameters serve both.
  model = make_unet("tiny", dropout=0.5)
  apply = jax.jit(model.apply, static_argnames="deterministic")
  without = jax.jit(make_unet("tiny").apply)({"params": perturbed_params}, images, TIMESTEPS)
  # Deterministic by default (sampling and evaluation), with no dropout rng needed.
  np.testing.assert_array_equal(apply({"params": perturbed_params}, images, TIMESTEPS), without)
  dropped = [
    apply({"params": perturbed_params}, images, TIMESTEPS, deterministic=False,
          rngs={"dropout": jax.random.key(seed)})
    for seed in (1, 2)
  ]  # fmt: skip
  assert not np.allclose(dropped[0], without) and not np.allclose(dropped[0], dropped[1])


def test_attention_defaults_to_the_lowest_resolution():
  names = set(_abstract_init(make_unet("small"), (1, 28, 28, 1)))  # resolutions 28, 14, 7
  assert {"down2_attn0", "down2_attn1", "mid_attn", "up2_attn2"} <= names
  assert not any(
    "attn" in name for name in names if name.startswith(("down0", "down1", "up0", "up1"))
  )
  names = set(_abstract_init(make_unet("tiny", attention_resolutions=(28,)), (1, 28, 28, 1)))
  assert {"down0_attn0", "up0_attn1", "mid_attn"} <= names and "down1_attn0" not in names


def test_odd_resolution_is_not_downsampled():
  with pytest.raises(ValueError, match="halved 3 times"):
    _abstract_init(make_unet("small", channel_multipliers=(1, 2, 2, 2)), (1, 28, 28, 1))


def test_unknown_size_names_the_valid_ones():
  with pytest.raises(ValueError, match=", ".join(UNET_SIZES)):
    make_unet("huge")


def _value_and_grads(fn, cotangent, *args):
  """``fn(*args)`` and the gradients of all its arguments, pulled back from ``cotangent``."""
  out, vjp = jax.vjp(fn, *args)
  return out, vjp(cotangent.astype(out.dtype))


def test_attention_equals_jax_dot_product_attention():
  # Two heads, and a batch element at 4x the scale, whose logits reach 80 (exp overflows float32
  # at 89), so that the softmax is peaked and its gradient cancels digits.
  scales = jnp.array([1.0, 4.0])[:, None, None, None]
  query, key, value = jax.random.normal(jax.random.key(0), (3, 2, 25, 2, 4)) * scales
  cotangent = jax.random.normal(jax.random.key(1), value.shape)

  ours = _value_and_grads(dot_product_attention, cotangent, query, key, value)
  plain = _value_and_grads(jax.nn.dot_product_attention, cotangent, query, key, value)
  # Both are float32 sums over 25 tokens in another order: agreement to 1e-5 of each array's
  # scale, about a hundred float32 ulps, room for the cancellation in the peaked softmax.
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_attention_subtracts_the_maximum_logit():
  # Logits near 1000, where exp alone overflows: a one-hot softmax picks one value row.
  query, key, value = jax.random.normal(jax.random.key(0), (3, 1, 25, 1, 4)) * 30
  out = dot_product_attention(query, key, value)
  np.testing.assert_allclose(out, jax.nn.dot_product_attention(query, key, value), rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_group_norm_equals_flax_group_norm(dtype):
  ours, theirs = GroupNorm(4, dtype=dtype), nn.GroupNorm(4, dtype=dtype)
  # A per-channel offset larger than the spread, so that E[x²] - E[x]² cancels digits as it will
  # after a residual add.
  x = jax.random.normal(jax.random.key(0), (2, 3, 5, 8)) + jnp.arange(8.0)
  params = theirs.init(jax.random.key(1), x)["params"]
  params = jax.tree.map(lambda p: p + jax.random.normal(jax.random.key(2), p.shape), params)
  assert jax.tree.structure(params) == jax.tree.structure(ours.init(jax.random.key(1), x)["params"])
  cotangent = jax.random.normal(jax.random.key(3), x.shape)

  variables = {"params": params}
  ours_out, theirs_out = (
    _value_and_grads(module.apply, cotangent, variables, x.astype(dtype))
    for module in (ours, theirs)
  )
  assert ours_out[0].dtype == theirs_out[0].dtype == dtype
  # Same float32 statistics summed in another order: float32 rounding, or where the results are
  # rounded to bfloat16, one bfloat16 ulp (2^-7 relative) when the two round differently.
  tolerance = 1e-5 if dtype == jnp.float32 else 2**-7
  for a, b in zip(jax.tree.leaves(ours_out), jax.tree.leaves(theirs_out)):
    np.testing.assert_allclose(
      np.asarray(a, np.float32), np.asarray(b, np.float32), rtol=tolerance, atol=tolerance
    )


def test_group_norm_refuses_channels_that_do_not_split():
  with pytest.raises(ValueError, match="6 channels do not split into 4 groups"):
    GroupNorm(4, dtype=jnp.float32).init(jax.random.key(0), jnp.zeros((1, 2, 2, 6)))
