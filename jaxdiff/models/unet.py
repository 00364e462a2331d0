"""The DDPM noise-prediction U-Net (Ho, Jain and Abbeel 2020), in Flax Linen.

The layout follows the paper's reference implementation: a sinusoidal
embedding of the timestep fed through a two-layer MLP; at each resolution
``num_res_blocks`` residual blocks (each adding a projection of the time
embedding), self-attention where ``attention_resolutions`` says, then a
stride-2 convolution; a middle of residual block, attention, residual block;
an upsampling path with one more residual block per level, each taking a skip
connection from the downsampling path; and GroupNorm, SiLU and a zero-initialised
convolution to the output, so a fresh model predicts zero noise. With ``num_classes`` the model
is class-conditional, as for classifier-free guidance (Ho & Salimans 2022): a learned embedding
of the label, one more entry standing for "no label", is added to the time embedding.

Example:
  >>> model = make_unet("tiny", channel_multipliers=(1,))  # "tiny" at one resolution
  >>> x, t = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,), jnp.int32)  # shapes to initialise with
  >>> params = model.init(jax.random.key(0), x, t)["params"]
  >>> noisy_images, timesteps = jnp.ones((4, 8, 8, 1)), jnp.array([0, 3, 6, 9])
  >>> noise = model.apply({"params": params}, noisy_images, timesteps)
  >>> noise.shape, float(jnp.abs(noise).max())  # a fresh model predicts zero noise
  ((4, 8, 8, 1), 0.0)
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any

UNET_SIZES: dict[str, dict[str, Any]] = {
  # Their parameter counts are in benchmarks/RESULTS.md, "CPU: the DDPM U-Net".
  "tiny": {"base_channels": 8, "channel_multipliers": (1, 2), "num_res_blocks": 1, "num_groups": 4},
  # small's levels at half its width and one residual block each: several times its training
  # steps per CPU second, which on MNIST buy more than small's capacity (RESULTS.md, "DDPM recipe").
  "narrow": {"base_channels": 16, "channel_multipliers": (1, 2, 2), "num_res_blocks": 1},
  "small": {"base_channels": 32, "channel_multipliers": (1, 2, 2), "num_res_blocks": 2},
  "base": {"base_channels": 64, "channel_multipliers": (1, 2, 2), "num_res_blocks": 2},
}
"""The U-Net's preset sizes, for :func:`make_unet`."""


def make_unet(size: str, **overrides: Any) -> UNet:
  """A :class:`UNet` of a preset size from :data:`UNET_SIZES`, with any field overridden.

  Raises:
    ValueError: ``size`` is not a preset name.
  """
  if size not in UNET_SIZES:
    raise ValueError(f"unknown U-Net size {size!r}; choose one of {', '.join(UNET_SIZES)}")
  return UNet(**{**UNET_SIZES[size], **overrides})


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """Sinusoidal embedding of integer timesteps, ``(B,) -> (B, dim)`` float32, as in DDPM."""
  half = dim // 2
  frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - 1))
  angles = t.astype(jnp.float32)[:, None] * frequencies[None, :]
  embedding = jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)
  return jnp.pad(embedding, ((0, 0), (0, dim % 2)))


class GroupNorm(nn.Module):
  """``flax.linen.GroupNorm`` over NHWC, the same parameters and function, from per-channel sums.

  Flax reduces a (batch, height, width, groups, channels per group) view over three axes, the
  last a few elements long, which XLA:CPU runs far below memory speed (``benchmarks/RESULTS.md``,
  "GroupNorm and attention").
  Averaging over the pixels first keeps the channels as the vectorised axis, and the groups then
  average a small (batch, channels) array. As in Flax, the statistics are float32 and the
  variance is ``E[x²] - E[x]²``.

  Attributes:
    num_groups: groups the channels split into; must divide them.
    dtype: the output's dtype.
    epsilon: added to the variance; Flax's default.
  """

  num_groups: int
  dtype: Dtype
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(f"{channels} channels do not split into {self.num_groups} groups")
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    x = x.astype(jnp.float32)

    def group_mean(values):  # (batch, height, width, channels) -> (batch, 1, 1, channels)
      channel_means = values.mean(axis=(1, 2))
      group_means = channel_means.reshape(len(x), self.num_groups, -1).mean(axis=-1)
      return jnp.repeat(group_means, channels // self.num_groups, axis=1)[:, None, None, :]

    mean = group_mean(x)
    variance = jnp.maximum(group_mean(x * x) - mean * mean, 0.0)
    multiplier = lax.rsqrt(variance + self.epsilon) * scale
    return (x * multiplier + (bias - mean * multiplier)).astype(self.dtype)


class ResBlock(nn.Module):
  """GroupNorm, SiLU, conv; add the time embedding; GroupNorm, SiLU, dropout, conv; residual."""

  features: int
  num_groups: int
  dropout: float
  dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array, time: jax.Array, deterministic: bool) -> jax.Array:
    h = nn.silu(GroupNorm(self.num_groups, dtype=self.dtype)(x))
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(h)
    h = h + nn.Dense(self.features, dtype=self.dtype)(nn.silu(time))[:, None, None, :]
    h = nn.silu(GroupNorm(self.num_groups, dtype=self.dtype)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = nn.Conv(self.features, (3, 3), dtype=self.dtype)(h)
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), dtype=self.dtype, name="skip")(x)
    return x + h


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array) -> jax.Array:
  """``jax.nn.dot_product_attention`` without mask or bias, the softmax normalised last.

  The softmax is computed in float32 (bfloat16's 8-bit mantissa loses the small weights) and
  divided by its sum after the product with the values, where the division touches
  (tokens, head_dim) outputs instead of (tokens, tokens) weights: on XLA:CPU that division, its
  gradient and their copies took far longer than the attention's matmuls (the profile is in
  ``benchmarks/RESULTS.md``, "GroupNorm and attention"). The subtracted maximum cancels out of
  the result, so it takes no gradient.

  Args:
    query, key, value: ``(batch, tokens, heads, head_dim)``.

  Returns:
    ``(batch, tokens, heads, head_dim)`` in ``value``'s dtype.
  """
  scaled = query / math.sqrt(query.shape[-1])
  logits = jnp.einsum("bqhd,bkhd->bhqk", scaled, key).astype(jnp.float32)
  weights = jnp.exp(logits - lax.stop_gradient(logits.max(axis=-1, keepdims=True)))
  normaliser = jnp.swapaxes(weights.sum(axis=-1), 1, 2)[..., None]  # (batch, tokens, heads, 1)
  attended = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(value.dtype), value) / normaliser
  return attended.astype(value.dtype)


class AttentionBlock(nn.Module):
  """GroupNorm, multi-head dot-product self-attention over the pixels, residual."""

  num_heads: int
  num_groups: int
  dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, height, width, channels = x.shape
    if channels % self.num_heads:
      raise ValueError(f"{channels} channels do not split into {self.num_heads} heads")
    h = GroupNorm(self.num_groups, dtype=self.dtype)(x).reshape(batch, height * width, channels)
    qkv = nn.Dense(3 * channels, dtype=self.dtype, name="qkv")(h)
    q, k, v = jnp.split(qkv.reshape(batch, height * width, 3 * self.num_heads, -1), 3, axis=2)
    h = dot_product_attention(q, k, v)
    h = nn.Dense(channels, dtype=self.dtype, name="out")(h.reshape(batch, height * width, channels))
    return x + h.reshape(batch, height, width, channels)


class UNet(nn.Module):
  """DDPM noise-prediction U-Net: ``(noisy images, timesteps) -> predicted noise``.

  Attributes:
    base_channels: channels at the first resolution; a multiple of ``num_groups``.
    channel_multipliers: one per resolution, multiplying ``base_channels``;
      ``len(channel_multipliers) - 1`` stride-2 downsamplings, each needing an
      even size (28x28 takes two: 28, 14, 7).
    num_res_blocks: residual blocks per resolution on the way down (one more
      on the way up).
    attention_resolutions: spatial sizes (the height) at which the residual
      blocks are followed by self-attention; ``None`` means the lowest
      resolution only. The middle block always has attention.
    num_heads: attention heads.
    num_groups: GroupNorm groups.
    dropout: dropout rate in the residual blocks; active only with
      ``deterministic=False`` and a ``"dropout"`` rng.
    out_channels: output channels; ``None`` means the input's.
    dtype: computation dtype (e.g. ``jnp.bfloat16``); parameters stay float32
      and the output is float32.
    num_classes: with a number ``K``, the model takes labels in ``[0, K]``, ``K`` meaning no
      label (:attr:`null_label`); ``None``, the default, is an unconditional model with no
      label parameters.
  """

  base_channels: int
  channel_multipliers: tuple[int, ...]
  num_res_blocks: int
  attention_resolutions: tuple[int, ...] | None = None
  num_heads: int = 1
  num_groups: int = 8
  dropout: float = 0.0
  out_channels: int | None = None
  dtype: Dtype = jnp.float32
  num_classes: int | None = None

  @property
  def null_label(self) -> int:
    """The label that stands for "no label" in a class-conditional model, ``num_classes``."""
    if self.num_classes is None:
      raise ValueError("an unconditional UNet has no labels: give it num_classes")
    return self.num_classes

  @nn.compact
  def __call__(
    self,
    x: jax.Array,
    t: jax.Array,
    labels: jax.Array | None = None,
    *,
    deterministic: bool = True,
  ) -> jax.Array:
    """Predicts the noise in ``x``.

    Args:
      x: noisy images, float ``(B, H, W, C)``.
      t: timesteps, int ``(B,)``.
      labels: a class-conditional model's labels, int ``(B,)`` in ``[0, num_classes]``; None
        (or :attr:`null_label`) is unconditional.
      deterministic: disables dropout.

    Returns:
      The predicted noise, float32 ``(B, H, W, out_channels or C)``.

    Raises:
      ValueError: a resolution to be downsampled is odd; labels for an unconditional model.
    """
    levels = len(self.channel_multipliers)
    # Nearest upsampling doubles sizes, so every downsampled size must be even
    # for the skip connections to line up (28 -> 14 -> 7, but not 7 -> 4).
    if x.shape[1] % 2 ** (levels - 1) or x.shape[2] % 2 ** (levels - 1):
      raise ValueError(
        f"a {x.shape[1]}x{x.shape[2]} input cannot be halved {levels - 1} times evenly; "
        f"use fewer than {levels} channel_multipliers"
      )
    lowest = x.shape[1] // 2 ** (levels - 1)
    attention_at = (lowest,) if self.attention_resolutions is None else self.attention_resolutions

    def res_block(features: int, name: str) -> ResBlock:
      return ResBlock(features, self.num_groups, self.dropout, self.dtype, name=name)

    def attention(name: str) -> AttentionBlock:
      return AttentionBlock(self.num_heads, self.num_groups, self.dtype, name=name)

    time = timestep_embedding(t, self.base_channels)
    time = nn.Dense(4 * self.base_channels, dtype=self.dtype, name="time_in")(time)
    time = nn.Dense(4 * self.base_channels, dtype=self.dtype, name="time_out")(nn.silu(time))
    if self.num_classes is not None:
      if labels is None:
        labels = jnp.full(t.shape, self.null_label, jnp.int32)
      embed = nn.Embed(self.num_classes + 1, 4 * self.base_channels, name="label_embedding")
      time = time + embed(labels).astype(time.dtype)
    elif labels is not None:
      raise ValueError("labels given to an unconditional UNet: build it with num_classes")

    h = nn.Conv(self.base_channels, (3, 3), dtype=self.dtype, name="conv_in")(x.astype(self.dtype))
    skips = [h]
    for level, multiplier in enumerate(self.channel_multipliers):
      for block in range(self.num_res_blocks):
        h = res_block(self.base_channels * multiplier, f"down{level}_res{block}")(
          h, time, deterministic
        )
        if h.shape[1] in attention_at:
          h = attention(f"down{level}_attn{block}")(h)
        skips.append(h)
      if level < levels - 1:
        h = nn.Conv(
          h.shape[-1], (3, 3), strides=(2, 2), dtype=self.dtype, name=f"down{level}_downsample"
        )(h)
        skips.append(h)

    h = res_block(h.shape[-1], "mid_res0")(h, time, deterministic)
    h = attention("mid_attn")(h)
    h = res_block(h.shape[-1], "mid_res1")(h, time, deterministic)

    for level, multiplier in reversed(list(enumerate(self.channel_multipliers))):
      for block in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = res_block(self.base_channels * multiplier, f"up{level}_res{block}")(
          h, time, deterministic
        )
        if h.shape[1] in attention_at:
          h = attention(f"up{level}_attn{block}")(h)
      if level > 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
        h = nn.Conv(h.shape[-1], (3, 3), dtype=self.dtype, name=f"up{level}_upsample")(h)

    h = nn.silu(GroupNorm(self.num_groups, dtype=self.dtype, name="norm_out")(h))
    h = nn.Conv(
      self.out_channels or x.shape[-1],
      (3, 3),
      dtype=self.dtype,
      kernel_init=nn.initializers.zeros,
      name="conv_out",
    )(h)
    return h.astype(jnp.float32)
