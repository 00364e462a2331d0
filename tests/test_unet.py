"""The DDPM U-Net: shapes, preset sizes, time conditioning, bfloat16 compute."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxdiff.models.unet import UNET_SIZES, AttentionBlock, make_unet

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
  [("tiny", 10_000, 100_000), ("small", 1_000_000, 2_000_000), ("base", 4_000_000, 8_000_000)],
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


def _plain_attention_block(params, x, num_heads, num_groups):
  """AttentionBlock written with the textbook softmax, as the reference for the late-normalised one."""
  batch, height, width, channels = x.shape
  h = nn.GroupNorm(num_groups).apply({"params": params["GroupNorm_0"]}, x)
  qkv = nn.Dense(3 * channels).apply({"params": params["qkv"]}, h.reshape(batch, -1, channels))
  q, k, v = jnp.split(qkv.reshape(batch, height * width, 3 * num_heads, -1), 3, axis=2)
  h = jax.nn.dot_product_attention(q, k, v).reshape(batch, height * width, channels)
  h = nn.Dense(channels).apply({"params": params["out"]}, h)
  return x + h.reshape(x.shape)


def test_attention_block_equals_the_plain_softmax_attention():
  num_heads, num_groups = 2, 4
  block = AttentionBlock(num_heads=num_heads, num_groups=num_groups, dtype=jnp.float32)
  # Inputs at several scales, so that the logits span a wide range and the max shift matters.
  x = (
    jax.random.normal(jax.random.key(0), (2, 5, 5, 8)) * jnp.array([1.0, 30.0])[:, None, None, None]
  )
  params = block.init(jax.random.key(1), x)["params"]
  cotangent = jax.random.normal(jax.random.key(2), x.shape)

  def value_and_grads(apply):
    out, vjp = jax.vjp(apply, params, x)
    return out, vjp(cotangent)

  fast = value_and_grads(lambda p, x: block.apply({"params": p}, x))
  plain = value_and_grads(lambda p, x: _plain_attention_block(p, x, num_heads, num_groups))
  # Both are float32 sums of 25 products reordered: agreement to a few float32 ulps of the scale.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), fast, plain)
